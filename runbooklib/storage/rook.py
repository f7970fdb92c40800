"""Block storage with Rook/Ceph: what the cluster should hold, the prerequisites on the storage nodes,
the plan and apply (Helm charts, or Rook's plain manifests on an air-gapped site), and verification.

- :func:`render_objects`: the CephCluster (storage nodes and raw devices from the parameters), the
  CephBlockPool (``replicated.size``, the failure domain) and its StorageClass (Ceph CSI's RBD
  provisioner), as Rook's manifests method applies them; :func:`chart_values` the same for the
  ``rook-ceph`` and ``rook-ceph-cluster`` charts.
- :func:`prerequisite_rows`: over SSH on each storage node (its devices raw: no partition, no
  filesystem, not mounted; the ``rbd`` kernel module), and from the parameters and the API (three failure
  domains or more; Rook's release against the cluster's Kubernetes).
- :func:`plan`: one step per part still different from what is running (``kubectl diff --server-side``
  per manifest; a Helm release's chart and values), applied in order by :func:`apply` on this machine with
  the cluster's kubeconfig.
- :func:`verify`: the objects the API holds, their wiring (StorageClass -> pool -> cluster), and where
  Ceph's daemons run, the cluster's health and a volume smoke test (a claim bound, written and read
  back by a pod). Where they cannot run (``storage.ceph.daemons_run: false``), it says so and checks
  no further.
"""

from __future__ import annotations

import difflib
import json
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from ..errors import RunbookError
from ..kubernetes.manifests import CLUSTER, ApplyStep, Tools, apply, content_sha256, to_yaml  # noqa: F401  (rook.apply, rook.Tools: the notebook's names)
from ..kubernetes.manifests import apply_step as _apply_step
from ..phase.steps import Step
from .ceph_settings import ROOK_KUBERNETES, failure_domains

CRDS = ("cephclusters.ceph.rook.io", "cephblockpools.ceph.rook.io")
MANIFESTS = ("crds.yaml", "common.yaml", "operator.yaml")  # Rook's deploy/examples, in this order
OPERATOR = "rook-ceph-operator"


class RookError(RunbookError):
    pass


# -- what the cluster should hold ------------------------------------------------------------------

def settings(p):
    """``storage.ceph``, or a clear error naming the section when the parameter file has none."""
    ceph = p.storage.ceph if p.storage else None
    if ceph is None:
        raise RookError(f"{p.source}: storage.ceph is not set; name Rook's release, how to install it and the storage nodes "
                        "(see params/example-production.yaml, storage.ceph) to build block storage")
    return ceph


def provisioner(ns: str) -> str:
    return f"{ns}.rbd.csi.ceph.com"


def cluster_spec(p) -> dict:
    c = p.storage.ceph
    mons = 3 if len(c.nodes) >= 3 else 1
    return {
        "cephVersion": {"image": c.ceph_image, "allowUnsupported": False},
        "dataDirHostPath": "/var/lib/rook",
        "mon": {"count": mons, "allowMultiplePerNode": False},
        "mgr": {"count": 2 if len(c.nodes) >= 2 else 1, "modules": [{"name": "rook", "enabled": True}]},
        "dashboard": {"enabled": True, "ssl": True},
        "storage": {"useAllNodes": False, "useAllDevices": False,
                    "nodes": [{"name": n.host, "devices": [{"name": d} for d in n.devices]} for n in c.nodes]},
    }


def pool_spec(p) -> dict:
    c = p.storage.ceph
    return {"failureDomain": c.failure_domain,
            "replicated": {"size": c.pool_size, "requireSafeReplicaSize": c.pool_size > 1}}


def storage_class_parameters(p) -> dict:
    c, ns = p.storage.ceph, p.storage.ceph.namespace
    return {"clusterID": ns, "pool": c.pool, "imageFormat": "2", "imageFeatures": "layering",
            "csi.storage.k8s.io/provisioner-secret-name": "rook-csi-rbd-provisioner",
            "csi.storage.k8s.io/provisioner-secret-namespace": ns,
            "csi.storage.k8s.io/controller-expand-secret-name": "rook-csi-rbd-provisioner",
            "csi.storage.k8s.io/controller-expand-secret-namespace": ns,
            "csi.storage.k8s.io/node-stage-secret-name": "rook-csi-rbd-node",
            "csi.storage.k8s.io/node-stage-secret-namespace": ns,
            "csi.storage.k8s.io/fstype": "ext4"}


def render_objects(p) -> dict[str, dict]:
    """The CephCluster, CephBlockPool and StorageClass, by the step that applies each."""
    c, ns = p.storage.ceph, p.storage.ceph.namespace
    sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
          "metadata": {"name": c.storage_class},
          "provisioner": provisioner(ns), "parameters": storage_class_parameters(p),
          "reclaimPolicy": "Delete", "allowVolumeExpansion": True}
    if c.default_storage_class:
        sc["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
    return {
        "ceph cluster": {"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster", "metadata": {"name": ns, "namespace": ns},
                         "spec": cluster_spec(p)},
        "block pool": {"apiVersion": "ceph.rook.io/v1", "kind": "CephBlockPool", "metadata": {"name": c.pool, "namespace": ns},
                       "spec": pool_spec(p)},
        "storage class": sc,
    }


def operator_settings(p) -> dict | None:
    """The operator's ConfigMap with the parameters' settings (server-side applied: only these keys are ours)."""
    c = p.storage.ceph
    if not c.operator_env:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rook-ceph-operator-config", "namespace": c.namespace},
            "data": dict(c.operator_env)}


def chart_values(p) -> dict[str, dict]:
    """Values for Rook's two charts: ``rook-ceph`` (the operator) and ``rook-ceph-cluster``."""
    c = p.storage.ceph
    operator = {"image": {"tag": c.rook_version}, "enableDiscoveryDaemon": False}
    if c.operator_env:
        operator["config"] = dict(c.operator_env)  # written to rook-ceph-operator-config by the chart
    cluster = {
        "operatorNamespace": c.namespace,
        "clusterName": c.namespace,
        "toolbox": {"enabled": True},
        "cephClusterSpec": cluster_spec(p),
        "cephBlockPools": [{"name": c.pool, "spec": pool_spec(p),
                            "storageClass": {"enabled": True, "name": c.storage_class, "isDefault": c.default_storage_class,
                                             "reclaimPolicy": "Delete", "allowVolumeExpansion": True,
                                             "parameters": storage_class_parameters(p)}}],
        "cephFileSystems": [],
        "cephObjectStores": [],
    }
    return {"rook-ceph": operator, "rook-ceph-cluster": cluster}


def operator_image(path: Path) -> str | None:
    """The Rook image Rook's operator.yaml at ``path`` runs."""
    try:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == OPERATOR:
                return doc["spec"]["template"]["spec"]["containers"][0]["image"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
    return None


def plan(p, tools: Tools | None = None, blockers: Sequence[str] = ()) -> list[Step]:
    """Every step still needed, in order: Rook itself (CRDs, common, operator; or the operator chart), the
    operator's settings, then the cluster, the pool and the StorageClass (or the cluster chart).

    One blocked step instead when there is no cluster to talk to yet, or prerequisites block (``blockers``,
    from :func:`blocking`): nothing is diffed against a cluster that cannot take it."""
    c = settings(p)
    tools = tools or Tools.from_params(p)
    if not tools.kubeconfig.exists():
        return [Step(CLUSTER, "rook", "install Rook", None,
                     blocked=f"no kubeconfig at {tools.kubeconfig}: run 03-kubernetes-cluster first")]
    if blockers:
        return [Step(CLUSTER, "prerequisites", "install Rook", None, blocked="; ".join(blockers))]
    if c.install is None:
        return []
    where = p.path(c.install.location)
    if c.install.method == "manifests":
        return _plan_manifests(p, tools, where)
    return _plan_helm(p, tools, where)


def _plan_manifests(p, tools: Tools, where: Path) -> list[Step]:
    c = p.storage.ceph
    missing = [f for f in MANIFESTS if not (where / f).is_file()]
    if missing:
        return [Step(CLUSTER, "rook", f"Rook {c.rook_version} from {where}", None,
                     blocked=f"{where} lacks {', '.join(missing)}: copy Rook {c.rook_version}'s deploy/examples there "
                             "(storage.ceph.install.location)")]
    image = operator_image(where / "operator.yaml") or "?"
    if not image.endswith(":" + c.rook_version):
        return [Step(CLUSTER, "rook", f"Rook {c.rook_version} from {where}", None,
                     blocked=f"{where}/operator.yaml runs {image}, the parameters say Rook {c.rook_version}: copy that "
                             "release's deploy/examples, or change storage.ceph.rook_version")]
    steps = []
    for name, what in zip(MANIFESTS, ("Rook's CRDs", "Rook's namespace, accounts and roles", f"the Rook operator ({image})")):
        s = _apply_step(tools, f"rook {name.removesuffix('.yaml')}", f"{what}: {name}", None, where / name,
                        f"kubectl delete -f {where / name} (after the CephCluster is gone)")
        if s:
            steps.append(s)
    settings = operator_settings(p)
    if settings:
        s = _apply_step(tools, "operator settings", f"rook-ceph-operator-config: {', '.join(settings['data'])}", to_yaml(settings),
                        None, "remove the keys from the ConfigMap (kubectl edit)")
        if s:
            steps.append(s)
    undo = {"ceph cluster": f"kubectl -n {c.namespace} delete cephcluster {c.namespace} (DESTROYS the cluster's data; "
                            "Rook asks for a cleanupPolicy first)",
            "block pool": f"kubectl -n {c.namespace} delete cephblockpool {c.pool} (deletes every volume in it)",
            "storage class": f"kubectl delete storageclass {c.storage_class}"}
    change = {"ceph cluster": f"CephCluster {c.namespace}: {len(c.nodes)} storage node(s), "
                              f"{sum(len(n.devices) for n in c.nodes)} device(s)",
              "block pool": f"CephBlockPool {c.pool}: {c.pool_size} copies across {c.failure_domain}s",
              "storage class": f"StorageClass {c.storage_class} -> pool {c.pool} ({provisioner(c.namespace)})"}
    for op, obj in render_objects(p).items():
        s = _apply_step(tools, op, change[op], to_yaml(obj), None, undo[op])
        if s:
            steps.append(s)
    return steps


def _plan_helm(p, tools: Tools, where: Path) -> list[Step]:
    c = p.storage.ceph
    steps = []
    for chart, values in chart_values(p).items():
        folder = where / chart
        if not (folder / "Chart.yaml").is_file():
            steps.append(Step(CLUSTER, f"chart {chart}", f"Helm release {chart}", None,
                              blocked=f"{folder} is not a chart: copy Rook {c.rook_version}'s deploy/charts/{chart} there"))
            continue
        got = tools.run(tools.helm_cmd("get", "values", chart, "-n", c.namespace, "-o", "json"))
        current = json.loads(got.stdout or "null") if got.returncode == 0 else None
        if current == values:
            continue
        text = to_yaml(values)
        argv = tuple(tools.helm_cmd("upgrade", "--install", chart, str(folder), "-n", c.namespace, "--create-namespace",
                                    "--wait", "--timeout", "10m", "-f", "-"))
        diff = text if current is None else "".join(difflib.unified_diff(
            to_yaml(current).splitlines(keepends=True), text.splitlines(keepends=True), "deployed values", "new values"))
        steps.append(ApplyStep(CLUSTER, f"chart {chart}", f"Helm release {chart} ({'install' if current is None else 'upgrade'})",
                               " ".join(shlex.quote(a) for a in argv) + f" (the values below on stdin)  # chart sha256 "
                               f"{content_sha256(folder)}", None,
                               f"helm rollback {chart} -n {c.namespace} (or helm uninstall)", diff=diff, argv=argv, stdin=text))
    return steps


def verdict(steps: Sequence[Step], outcome_status: str, error: str, checks: Sequence[dict]) -> tuple[str, list[str]]:
    """07's verdict (:func:`runbooklib.kubernetes.manifests.verdict`), judged by the verification's failing checks."""
    from ..kubernetes.manifests import verdict as manifests_verdict

    return manifests_verdict(steps, outcome_status, error, [f"{r['check']} {r['target']}: {r['detail']}" for r in checks
                                                            if r["status"] == "fail"])


# -- prerequisites -----------------------------------------------------------------------------------

RBD_CHECK = ("if grep -qw '^rbd' /proc/modules 2>/dev/null; then echo loaded; elif [ -d /sys/module/rbd ]; then echo built-in; "
             "elif modprobe -n rbd >/dev/null 2>&1; then echo available; else echo absent; fi")


def prerequisite_command(devices: Sequence[str]) -> str:
    parts = [f"echo '== {d}'; lsblk -J -b -o NAME,TYPE,FSTYPE,SIZE,MOUNTPOINTS /dev/{shlex.quote(d)} 2>&1 || true" for d in devices]
    return "; ".join(parts + ["echo '== rbd'", RBD_CHECK])


def parse_prerequisites(output: str) -> dict:
    """``{"devices": {name: lsblk JSON or the error text}, "rbd": state}`` from :func:`prerequisite_command`'s output."""
    out: dict = {"devices": {}, "rbd": "unknown"}
    for block in output.split("== ")[1:]:
        name, _, body = block.partition("\n")
        if name.strip() == "rbd":
            out["rbd"] = body.strip() or "unknown"
            continue
        try:
            out["devices"][name.strip()] = json.loads(body)
        except ValueError:
            out["devices"][name.strip()] = body.strip()
    return out


def device_row(node: str, device: str, seen) -> dict:
    """Whether a device is raw as Rook needs it: a disk or partition, no filesystem, no partitions, not mounted."""
    target = f"{node}:/dev/{device}"
    if not isinstance(seen, dict):
        return _row("raw device", target, False, f"not a block device here ({str(seen)[:160] or 'lsblk said nothing'})",
                    "name a device the node has (lsblk), or attach the disk")
    dev = (seen.get("blockdevices") or [{}])[0]
    problems = []
    if dev.get("type") not in ("disk", "part", "mpath"):
        problems.append(f"type {dev.get('type')}")
    if dev.get("fstype"):
        problems.append(f"holds a {dev['fstype']} filesystem")
    if dev.get("children"):
        problems.append(f"has {len(dev['children'])} partition(s)")
    if [m for m in dev.get("mountpoints") or [] if m]:
        problems.append("is mounted")
    size = int(dev.get("size") or 0)
    return _row("raw device", target, not problems, "; ".join(problems) or f"raw {dev.get('type')}, {size / 2**30:.0f} GiB",
                "wipe it (wipefs -a; sgdisk --zap-all) only if its data is not needed" if problems else "")


def _row(check: str, target: str, ok: bool, detail: str, fix: str = "") -> dict:
    return {"check": check, "target": target, "status": "ok" if ok else "fail", "detail": detail, "fix": fix}


def prerequisite_rows(p, fleet, kubernetes_version: str | None) -> list[dict]:
    """Every prerequisite, as rows: on each storage node over SSH, then from the parameters and the API."""
    c = p.storage.ceph
    rows = []
    hosts = [p.host(n.host) for n in c.nodes]
    devices = {n.host: n.devices for n in c.nodes}
    results = fleet.run(lambda h: prerequisite_command(devices[h.name]), hosts=hosts) if hosts else {}
    for n in c.nodes:
        r = results.get(n.host)
        if r is None or r.exit_code is None:
            rows.append(_row("reachable", n.host, False, f"unreachable: {r.error if r else 'not asked'}"))
            continue
        seen = parse_prerequisites(r.stdout)
        rows += [device_row(n.host, d, seen["devices"].get(d, "no answer")) for d in n.devices]
        rbd = seen["rbd"]
        rows.append(_row("rbd kernel module", n.host, rbd in ("loaded", "built-in", "available"), rbd,
                         "" if rbd != "absent" else "the kernel has no rbd module (modprobe rbd fails): use a kernel that has it"))
    domains = failure_domains(p)
    distinct = {d for d in domains.values() if d}
    unlabelled = sorted(h for h, d in domains.items() if not d)
    need = max(3, c.pool_size)
    rows.append(_row("failure domains", f"{c.failure_domain}s", len(distinct) >= need and not unlabelled,
                     f"{len(distinct)} distinct ({', '.join(sorted(distinct)) or 'none'})"
                     + (f"; no {c.failure_domain} label on {', '.join(unlabelled)}" if unlabelled else ""),
                     f"at least {need} storage nodes in different {c.failure_domain}s, so each copy has a domain of its own"))
    lo, hi = ROOK_KUBERNETES.get(c.release_line, ("?", "?"))
    if kubernetes_version:
        minor = tuple(int(x) for x in kubernetes_version.lstrip("v").split(".")[:2])
        fits = tuple(int(x) for x in lo[1:].split(".")) <= minor <= tuple(int(x) for x in hi[1:].split("."))
        rows.append(_row("Rook and Kubernetes", f"Rook {c.rook_version}", fits, f"Kubernetes {kubernetes_version}; Rook "
                         f"{c.release_line} supports {lo} to {hi}", "" if fits else "choose the Rook release for this Kubernetes"))
    else:
        rows.append(_row("Rook and Kubernetes", f"Rook {c.rook_version}", False, "the API did not answer: cannot compare",
                         "bring the cluster up first (03-kubernetes-cluster)"))
    return rows


def blocking(p, rows: Sequence[dict]) -> list[str]:
    """The failing prerequisites that block the apply. With ``prerequisites: report`` a failing prerequisite is only
    shown, but a storage node that did not answer still blocks: it was not judged at all, and a run that could not
    see a node must not end as if all were well."""
    failing = [r for r in rows if r["status"] == "fail"]
    if p.storage.ceph.prerequisites == "report":
        failing = [r for r in failing if r["check"] == "reachable"]
    return [f"{r['check']} {r['target']}: {r['detail']}" for r in failing]


# -- verification ------------------------------------------------------------------------------------

def verify(p, api_client, tools: Tools | None = None, on_line: Callable[[str], None] = print) -> list[dict]:
    """What the API holds and how it is wired; the cluster's health and a volume smoke test where Ceph runs."""
    from kubernetes import client

    c, ns = p.storage.ceph, p.storage.ceph.namespace
    rows = []
    ext = client.ApiextensionsV1Api(api_client)
    crds = {x.metadata.name: x for x in ext.list_custom_resource_definition().items}
    for name in CRDS:
        crd = crds.get(name)
        established = crd is not None and any(cond.type == "Established" and cond.status == "True" for cond in crd.status.conditions or [])
        rows.append(_row("CRD established", name, established, "" if established else "absent: Rook's CRDs are not applied"))
    apps = client.AppsV1Api(api_client)
    try:
        d = apps.read_namespaced_deployment(OPERATOR, ns)
        image = d.spec.template.spec.containers[0].image
        rows.append(_row("operator deployment", f"{ns}/{OPERATOR}", image.endswith(":" + c.rook_version),
                         f"{image}; {d.status.available_replicas or 0}/{d.spec.replicas} available (as the API reports)"))
    except client.ApiException as e:
        rows.append(_row("operator deployment", f"{ns}/{OPERATOR}", False, f"not found ({e.status})"))
    custom = client.CustomObjectsApi(api_client)

    def read(plural: str, name: str) -> dict | None:
        try:
            return custom.get_namespaced_custom_object("ceph.rook.io", "v1", ns, plural, name)
        except client.ApiException:
            return None
    cluster = read("cephclusters", ns)
    if cluster is None:
        rows.append(_row("CephCluster", f"{ns}/{ns}", False, "absent"))
    else:
        nodes = {n["name"]: sorted(d["name"] for d in n.get("devices", [])) for n in cluster["spec"].get("storage", {}).get("nodes", [])}
        wanted = {n.host: sorted(n.devices) for n in c.nodes}
        rows.append(_row("CephCluster storage", f"{ns}/{ns}", nodes == wanted,
                         ", ".join(f"{h}: {', '.join(d)}" for h, d in nodes.items()) + ("" if nodes == wanted else f"; expected {wanted}")))
    pool = read("cephblockpools", c.pool)
    if pool is None:
        rows.append(_row("CephBlockPool", f"{ns}/{c.pool}", False, "absent"))
    else:
        spec = pool.get("spec", {})
        size = spec.get("replicated", {}).get("size")
        rows.append(_row("CephBlockPool replication", f"{ns}/{c.pool}", size == c.pool_size and spec.get("failureDomain") == c.failure_domain,
                         f"{size} copies across {spec.get('failureDomain')}s; expected {c.pool_size} across {c.failure_domain}s"))
    try:
        sc = client.StorageV1Api(api_client).read_storage_class(c.storage_class)
        params = sc.parameters or {}
        wired = sc.provisioner == provisioner(ns) and params.get("pool") == c.pool and params.get("clusterID") == ns
        rows.append(_row("StorageClass wiring", c.storage_class, wired,
                         f"{sc.provisioner}, pool {params.get('pool')}, cluster {params.get('clusterID')}"))
    except client.ApiException as e:
        rows.append(_row("StorageClass wiring", c.storage_class, False, f"not found ({e.status})"))
    if not c.daemons_run:
        rows.append({"check": "Ceph daemons", "target": ns, "status": "skip", "fix": "",
                     "detail": "not checked: no Ceph daemon runs on this site (storage.ceph.daemons_run: false); the cluster's "
                               "health and the volume smoke test need them"})
        return rows
    status = (cluster or {}).get("status", {})
    health = status.get("ceph", {}).get("health")
    rows.append(_row("Ceph health", f"{ns}/{ns}", status.get("phase") == "Ready" and health in ("HEALTH_OK", "HEALTH_WARN"),
                     f"phase {status.get('phase') or 'none'}, health {health or 'none'}"
                     + (f": {status.get('ceph', {}).get('details')}" if health and health != "HEALTH_OK" else "")))
    rows += smoke_test(p, tools or Tools.from_params(p), on_line)
    return rows


def smoke_manifests(p, token: str) -> str:
    """A namespace, a claim on the StorageClass, and a pod that writes ``token`` to it and reads it back."""
    c = p.storage.ceph
    ns = "runbooklib-volume-smoke"
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "smoke", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": c.storage_class, "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "smoke", "namespace": ns},
         "spec": {"restartPolicy": "Never",
                  "containers": [{"name": "smoke", "image": c.smoke_image,
                                  "command": ["sh", "-c", f"echo {token} > /data/token && sync && cat /data/token"],
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "smoke"}}]}},
    ]
    return "".join("---\n" + to_yaml(d) for d in docs)


def smoke_test(p, tools: Tools, on_line: Callable[[str], None] = print) -> list[dict]:
    """A claim bound, written and read back by a pod, then removed; each stage a row."""
    c = p.storage.ceph
    ns = "runbooklib-volume-smoke"
    token = "smoke-" + secrets.token_hex(6)
    made = tools.run(tools.kubectl_cmd("apply", "-f", "-"), stdin=smoke_manifests(p, token))
    if made.returncode != 0:
        return [_row("volume smoke test", c.storage_class, False, f"could not create it: {made.stderr.strip()[-300:]}")]
    try:
        deadline = time.monotonic() + c.smoke_timeout_seconds
        phase = pvc = ""
        while time.monotonic() < deadline:
            pvc = tools.run(tools.kubectl_cmd("-n", ns, "get", "pvc", "smoke", "-o", "jsonpath={.status.phase}")).stdout
            phase = tools.run(tools.kubectl_cmd("-n", ns, "get", "pod", "smoke", "-o", "jsonpath={.status.phase}")).stdout
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(3)
        logs = tools.run(tools.kubectl_cmd("-n", ns, "logs", "smoke")).stdout.strip() if phase else ""
        return [_row("volume claim bound", f"{ns}/smoke", pvc == "Bound", f"claim {pvc or 'absent'}"),
                _row("volume written and read", f"{ns}/smoke", phase == "Succeeded" and logs == token,
                     f"pod {phase or 'not started'}" + (f", read back {'the token' if logs == token else repr(logs[:60])}" if phase else "")
                     + ("" if phase in ("Succeeded", "Failed") else f" within {c.smoke_timeout_seconds} s"))]
    finally:
        tools.run(tools.kubectl_cmd("delete", "namespace", ns, "--wait=false"))
        on_line(f"volume smoke test: namespace {ns} deleted")
