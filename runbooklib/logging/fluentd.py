"""Fluentd in the cluster: the objects ``12-logging`` applies, the drop-in that parses and types the
applications' JSON, and the lint that catches a drop-in reading the wrong field.

The DaemonSet runs the ``fluent/fluentd-kubernetes-daemonset`` image of the engine in use. Its
``fluent.conf`` includes ``conf.d/*.conf``: our drop-in is a ConfigMap mounted as that whole folder (not a
``subPath`` over ``kubernetes.conf``, which never receives an update). The engine's password is a key
of a Secret the runbook creates from the parameters' reference, read by the container from its
environment: it is in no ConfigMap, manifest shown or record.

Which field holds the container's log line depends on the runtime: Docker's json-file driver gives
``log``; containerd (RKE2, and RKE1 on containerd) is read with the ``cri`` parser and the text is in
``message``. A parser filter on the wrong key parses nothing, silently (Fluentd keeps the record and
reports "log does not exist" on its error label).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

from ..kubernetes.verify import ApiUnanswered
from ..phase.steps import Part
from .settings import CASTS, endpoint_parts

NAME = "fluentd"
DROPIN = "runbooklib-json.conf"  # the file in conf.d/
SECRET = "fluentd-engine-credentials"
KEY_BY_RUNTIME = {"docker": "log", "containerd": "message"}
PARSER_BY_RUNTIME = {"docker": "json", "containerd": "cri"}
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "runbooklib"}


class RuntimeUnknown(ValueError):
    pass


# -- which runtime, so which field --------------------------------------------------------------

def runtime_of(version: str) -> str | None:
    """``docker`` or ``containerd`` from a node's ``status.nodeInfo.containerRuntimeVersion`` (``docker://20.10.24``,
    ``containerd://1.7.13-k3s1``), None for any other (cri-o, a simulation)."""
    scheme = version.split("://", 1)[0].lower() if "://" in version else ""
    return scheme if scheme in KEY_BY_RUNTIME else None


def decide_runtime(declared: str | None, node_runtimes: dict[str, str]) -> tuple[str, str]:
    """(runtime, how it was decided) from the nodes' runtimes and ``logging.container_runtime``.

    The nodes decide when they all report one known runtime; a declared runtime that contradicts them, or
    nodes that disagree, is an error (one DaemonSet reads one field). Nodes whose runtime is not one
    Fluentd's image knows leave the decision to the parameters, and say so."""
    known = {n: runtime_of(v) for n, v in node_runtimes.items()}
    seen = sorted({r for r in known.values() if r})
    unknown = sorted(n for n, r in known.items() if r is None)
    if len(seen) > 1:
        by = {r: sorted(n for n, k in known.items() if k == r) for r in seen}
        raise RuntimeUnknown("the nodes run different container runtimes (" + "; ".join(f"{r}: {', '.join(ns)}" for r, ns in by.items())
                             + "): one Fluentd DaemonSet reads one field; split it with a nodeSelector per runtime")
    if seen and declared and declared != seen[0]:
        raise RuntimeUnknown(f"logging.container_runtime is {declared}, but the nodes run {seen[0]} "
                             f"({node_runtimes[next(n for n, r in known.items() if r)]}): fix the parameter")
    if seen and not unknown:
        return seen[0], f"every node reports {seen[0]}"
    if declared:
        why = f"logging.container_runtime ({declared})"
        if unknown:
            why += f"; {len(unknown)} node(s) report a runtime Fluentd's image does not know: " + \
                   ", ".join(f"{n} {node_runtimes[n]}" for n in unknown[:4]) + ("…" if len(unknown) > 4 else "")
        return declared, why
    if seen:
        return seen[0], f"{len(node_runtimes) - len(unknown)} node(s) report {seen[0]}; {', '.join(unknown)} report none Fluentd knows"
    raise RuntimeUnknown("no node reports docker:// or containerd:// (" + ", ".join(f"{n} {v or '?'}" for n, v in
                                                                                  sorted(node_runtimes.items())[:4])
                         + "): set logging.container_runtime")


# -- the drop-in ----------------------------------------------------------------------------------

def types_value(typed_fields: dict[str, str]) -> str:
    return ",".join(f"{k}:{v}" for k, v in typed_fields.items())


def dropin(lg, runtime: str) -> str:
    """The parser filter, reading the field the runtime puts the line in, keeping the record (``reserve_data``),
    its event time (``reserve_time``) and the application's own ``time`` field (``keep_time_key``)."""
    key = KEY_BY_RUNTIME[runtime]
    lines = [
        f"# Written by runbooklib (12-logging): the applications' JSON log lines, parsed and typed. Runtime {runtime}:",
        f"# the container's line is in `{key}`. Edit the parameter file (logging.typed_fields) and re-run 12-logging.",
        "<filter kubernetes.**>",
        "  @type parser",
        f"  key_name {key}",
        "  reserve_data true",
        "  reserve_time true",
        "  emit_invalid_record_to_error false",
        "  <parse>",
        "    @type json",
        "    keep_time_key true",
    ]
    if lg.typed_fields:
        lines.append(f"    types {types_value(lg.typed_fields)}")
    lines += ["  </parse>", "</filter>"]
    return "\n".join(lines) + "\n"


# -- lint ---------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^\s*(<[^>]+>|[@\w]+)\s*(.*?)\s*$")


def parse_filters(conf: str) -> list[dict]:
    """The ``<filter>`` blocks of a Fluentd configuration with their parameters and their ``<parse>``'s (enough
    to lint: nesting, ``key_name``, ``@type``, ``types``; comments and blank lines ignored)."""
    filters: list[dict] = []
    stack: list[dict] = []
    for n, raw in enumerate(conf.splitlines(), 1):
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        head, rest = m.group(1), m.group(2)
        if head.startswith("</"):
            if stack:
                stack.pop()
            continue
        if head.startswith("<"):
            name, _, arg = head[1:-1].partition(" ")
            block = {"section": name, "arg": arg.strip(), "params": {}, "line": n, "children": []}
            if stack:
                stack[-1]["children"].append(block)
            elif name == "filter":
                filters.append(block)
            stack.append(block)
            continue
        if stack:
            stack[-1]["params"][head] = rest
    return filters


def lint(conf: str, runtime: str, typed_fields: dict[str, str] | None = None, source: str = DROPIN) -> list[dict]:
    """Problems in a drop-in for ``runtime``: a parser filter on the other runtime's field, JSON parsing
    without ``reserve_data`` (every other field of the record dropped), an unknown cast, a typed field the
    parameters want but the drop-in does not cast. Rows: {line, problem, fix}."""
    want = KEY_BY_RUNTIME[runtime]
    rows = []
    parsers = [f for f in parse_filters(conf) if f["params"].get("@type") == "parser"]
    if not parsers:
        rows.append({"where": source, "problem": "no parser filter: the JSON log lines stay one string",
                     "fix": "render the drop-in again (12-logging)"})
    for f in parsers:
        where = f"{source}:{f['line']}"
        key = f["params"].get("key_name")
        if key != want:
            rows.append({"where": where, "problem": f"key_name {key or '(none)'}, but with {runtime} the line is in `{want}`: "
                                                    "this filter parses nothing, silently",
                         "fix": f"key_name {want}"})
        if f["params"].get("reserve_data") != "true":
            rows.append({"where": where, "problem": "reserve_data is not true: every field but the parsed ones is dropped "
                                                    "(the Kubernetes metadata with them)", "fix": "reserve_data true"})
        for parse in (c for c in f["children"] if c["section"] == "parse"):
            casts = dict(kv.split(":", 1) for kv in parse["params"].get("types", "").split(",") if ":" in kv)
            for field, cast in casts.items():
                if cast.split(":", 1)[0] not in CASTS:
                    rows.append({"where": f"{source}:{parse['line']}", "problem": f"types {field}:{cast}: Fluentd knows no such cast "
                                                                                 "(it refuses to start)", "fix": f"one of {', '.join(CASTS)}"})
            for field, cast in (typed_fields or {}).items():
                if casts.get(field, "").split(":", 1)[0] != cast:
                    rows.append({"where": f"{source}:{parse['line']}", "problem": f"{field} is not cast to {cast}: it is indexed as "
                                                                                 "it arrives (a string, or the first value's type)",
                                 "fix": f"types …,{field}:{cast}"})
    return rows


# -- the objects ---------------------------------------------------------------------------------------

def render(p, runtime: str) -> dict[str, dict]:
    """The objects, by operation name, in the order they are applied. The Secret's data is the password's
    *placeholder* here: :func:`secret` makes the real one, at apply time."""
    lg = p.logging
    ns = lg.namespace
    scheme, host, port = endpoint_parts(lg.endpoint)
    env_prefix = "FLUENT_OPENSEARCH" if lg.engine == "opensearch" else "FLUENT_ELASTICSEARCH"
    env = [{"name": "K8S_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": f"{env_prefix}_HOST", "value": host},
           {"name": f"{env_prefix}_PORT", "value": str(port)},
           {"name": f"{env_prefix}_SCHEME", "value": scheme},
           {"name": f"{env_prefix}_SSL_VERIFY", "value": "true" if lg.verify_tls else "false"},
           {"name": f"{env_prefix}_LOGSTASH_FORMAT", "value": "true"},
           {"name": f"{env_prefix}_LOGSTASH_PREFIX", "value": lg.index_prefix},
           {"name": "FLUENT_CONTAINER_TAIL_PARSER_TYPE", "value": PARSER_BY_RUNTIME[runtime]}]
    if lg.user:
        env += [{"name": f"{env_prefix}_USER", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "user"}}},
                {"name": f"{env_prefix}_PASSWORD", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}}}]
    meta = lambda name, namespaced=True: {"name": name, **({"namespace": ns} if namespaced else {}), "labels": dict(LABELS)}
    objects = {
        "namespace": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(LABELS)}},
        "service account": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME)},
        "cluster role": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(NAME, False),
                         "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}]},
        "cluster role binding": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(NAME, False),
                                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
                                 "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]},
        "parser drop-in": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{NAME}-conf-d"),
                           "data": {DROPIN: dropin(lg, runtime)}},
    }
    if lg.user:
        objects["credentials"] = secret(p, "<secret:logging.password>")
    pod = {
        "serviceAccountName": NAME,
        # every node, the control plane's too: their pods log as well
        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "NoExecute"}],
        "containers": [{
            "name": NAME, "image": lg.image(), "env": env,
            "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "512Mi"}},
            "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"},
                             {"name": "dockercontainers", "mountPath": "/var/lib/docker/containers", "readOnly": True},
                             {"name": "conf-d", "mountPath": "/fluentd/etc/conf.d", "readOnly": True}],
        }],
        "volumes": [{"name": "varlog", "hostPath": {"path": "/var/log"}},
                    {"name": "dockercontainers", "hostPath": {"path": "/var/lib/docker/containers"}},
                    {"name": "conf-d", "configMap": {"name": f"{NAME}-conf-d"}}],
        "terminationGracePeriodSeconds": 30,
    }
    objects["daemonset"] = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta(NAME),
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                 "template": {"metadata": {"labels": dict(LABELS),
                                           # a new drop-in rolls the pods: Fluentd reads its configuration once
                                           "annotations": {"runbooklib/conf-d-sha256": _sha256(dropin(lg, runtime))}},
                              "spec": pod}},
    }
    return objects


def secret(p, password: str) -> dict:
    lg = p.logging
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": lg.namespace, "labels": dict(LABELS)},
            "stringData": {"user": lg.user or "", "password": password}}


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


OPERATIONS = (
    Part("namespace", "the Namespace `logging.namespace`", "`kubectl delete namespace {ns}` (everything in it)"),
    Part("service account", f"ServiceAccount `{NAME}`", f"`kubectl -n {{ns}} delete serviceaccount {NAME}`"),
    Part("cluster role", f"ClusterRole `{NAME}` (get, list, watch pods and namespaces)", f"`kubectl delete clusterrole {NAME}`"),
    Part("cluster role binding", f"ClusterRoleBinding `{NAME}`", f"`kubectl delete clusterrolebinding {NAME}`"),
    Part("parser drop-in", f"ConfigMap `{NAME}-conf-d` (`{DROPIN}`, mounted as `/fluentd/etc/conf.d`)",
         f"`kubectl -n {{ns}} delete configmap {NAME}-conf-d` (Fluentd then ships the lines unparsed)"),
    Part("credentials", f"Secret `{SECRET}` (user, password from `logging.password`)", f"`kubectl -n {{ns}} delete secret {SECRET}`"),
    Part("daemonset", f"DaemonSet `{NAME}` (a pod on every node, the control plane's too)",
         f"`kubectl -n {{ns}} rollout undo daemonset {NAME}`, or delete it (log shipping stops)"),
)


def undo(op: str, lg) -> str:
    return next(o.undo for o in OPERATIONS if o.name == op).format(ns=lg.namespace).replace("`", "")


# -- verification ------------------------------------------------------------------------------------

def daemonset_rows(nodes: Sequence[dict], pods: Iterable[dict]) -> list[dict]:
    """One row per node: the Fluentd pod scheduled there and its state. ``nodes``: {name, unschedulable};
    ``pods``: {name, node, phase, ready}."""
    by_node: dict[str, list[dict]] = {}
    for pod in pods:
        by_node.setdefault(pod.get("node") or "", []).append(pod)
    rows = []
    for n in nodes:
        here = by_node.get(n["name"], [])
        if not here:
            rows.append({"node": n["name"], "pod": "-", "phase": "-", "status": "fail",
                         "detail": "no Fluentd pod here: this node's logs are not shipped"})
            continue
        pod = here[0]
        ok = pod["phase"] == "Running" and pod["ready"]
        rows.append({"node": n["name"], "pod": pod["name"], "phase": pod["phase"], "status": "ok" if ok else "fail",
                     "detail": "running and ready" if ok else "scheduled, not ready yet" if pod["phase"] in ("Pending", "Running")
                     else f"pod {pod['phase']}"})
    for node, extra in by_node.items():
        if node and node not in {n["name"] for n in nodes}:
            rows.append({"node": node, "pod": extra[0]["name"], "phase": extra[0]["phase"], "status": "fail",
                         "detail": "on a node that is no longer in the cluster"})
    return rows


# -- the cluster: facts, plan, apply, verify -----------------------------------------------------------

def _api_call(api_at: str, call, *args, **kwargs):
    """``call`` through a client of ``verify.api_client`` (which bounds it and raises
    :class:`~runbooklib.kubernetes.verify.ApiUnanswered` when the API does not answer), the failure naming ``api_at``:
    the caller's own words for where the API is (the inventory host and URL, from ``verify.api_host``)."""
    try:
        return call(*args, **kwargs)
    except ApiUnanswered as e:
        raise ApiUnanswered(api_at, e.reason) from None


def nodes(api_client, api_at: str = "the cluster") -> list[dict]:
    """Every Node: name, container runtime (``status.nodeInfo.containerRuntimeVersion``), schedulable, Ready.
    Raises :class:`ApiUnanswered` naming ``api_at`` when the API does not answer."""
    from kubernetes import client

    out = []
    for n in _api_call(api_at, client.CoreV1Api(api_client).list_node).items:
        ready = next((c.status == "True" for c in (n.status.conditions or []) if c.type == "Ready"), False)
        out.append({"name": n.metadata.name, "runtime": (n.status.node_info.container_runtime_version if n.status.node_info else "") or "",
                    "unschedulable": bool(n.spec.unschedulable), "ready": ready})
    return sorted(out, key=lambda r: r["name"])


def plan(p, tools, runtime: str, password: str | None) -> list:
    """One step per object ``kubectl diff`` finds different, in order (namespace first, DaemonSet last).
    ``password``: the resolved ``logging.password`` (None without authentication): only in the Secret's
    manifest on kubectl's stdin; shown as its placeholder."""
    from ..kubernetes.manifests import apply_step, to_yaml

    steps = []
    objects = render(p, runtime)
    for op, obj in objects.items():
        manifest, shown = to_yaml(obj), None
        if op == "credentials":
            shown, manifest = manifest, to_yaml(secret(p, password or ""))
        what = {"namespace": f"Namespace {p.logging.namespace}", "daemonset": f"DaemonSet {NAME}: {p.logging.image()}, on every node",
                "parser drop-in": f"ConfigMap {NAME}-conf-d: {DROPIN} (key_name {KEY_BY_RUNTIME[runtime]}, "
                                  f"types {types_value(p.logging.typed_fields) or 'none'})",
                "credentials": f"Secret {SECRET}: user {p.logging.user}, password from logging.password"}.get(
            op, f"{obj['kind']} {obj['metadata']['name']}")
        s = apply_step(tools, op, what, manifest, None, undo(op, p.logging), shown=shown)
        if s:
            steps.append(s)
    return steps


def pods(api_client, namespace: str, api_at: str = "the cluster") -> list[dict]:
    from kubernetes import client

    got = _api_call(api_at, client.CoreV1Api(api_client).list_namespaced_pod, namespace, label_selector=f"app.kubernetes.io/name={NAME}").items
    return [{"name": x.metadata.name, "node": x.spec.node_name, "phase": x.status.phase or "Pending",
             "ready": any(c.type == "Ready" and c.status == "True" for c in (x.status.conditions or []))} for x in got]


def rollout(api_client, namespace: str, api_at: str = "the cluster") -> dict | None:
    """The DaemonSet's status: desired, scheduled, updated, ready (None when it does not exist)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        ds = _api_call(api_at, client.AppsV1Api(api_client).read_namespaced_daemon_set, NAME, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    st = ds.status
    return {"desired": st.desired_number_scheduled or 0, "scheduled": st.current_number_scheduled or 0,
            "updated": st.updated_number_scheduled or 0, "ready": st.number_ready or 0,
            "generation": ds.metadata.generation, "observed": st.observed_generation}


def verify(api_client, namespace: str, settle: float = 0, on_line=print, clock=time.monotonic, sleep=time.sleep,
           api_at: str = "the cluster") -> tuple[list[dict], dict | None]:
    """A Fluentd pod Running and Ready on every node (rows per node) and the rollout's counts. With ``settle``,
    asks again every 5 s while pods are still being scheduled or started, up to that many seconds. An API that
    does not answer is a failing row naming ``api_at`` (the inventory host and URL), never a crash."""
    deadline = clock() + settle
    while True:
        try:
            status = rollout(api_client, namespace, api_at)
            rows = daemonset_rows(nodes(api_client, api_at), pods(api_client, namespace, api_at)) if status is not None else \
                [{"node": "-", "pod": "-", "phase": "-", "status": "fail", "detail": f"no DaemonSet {NAME} in {namespace}"}]
        except ApiUnanswered as e:
            return [{"node": "-", "pod": "-", "phase": "-", "status": "fail", "detail": str(e)}], None
        bad = [r for r in rows if r["status"] != "ok"]
        if not bad or status is None or clock() >= deadline:
            return rows, status
        on_line(f"waiting for {len(bad)} Fluentd pod(s): {', '.join(r['node'] for r in bad[:5])}{'…' if len(bad) > 5 else ''}")
        sleep(5)
