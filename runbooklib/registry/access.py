"""Registry access on a running cluster: what is there, what to change, the change, and the check.

What is read, never shown: the listed namespaces, the pull Secret in each (its type and the SHA-256
of its ``.dockerconfigjson``, never its content), the ServiceAccounts' ``imagePullSecrets`` (through
the official kubernetes client, with the kubeconfig of the state folder), and on RKE2 each node's
``/etc/rancher/rke2/registries.yaml`` as a checksum, a mode and an owner over SSH (``sha256sum`` and
``stat``: the file, which holds the key, is never read into the run).

The plan, per namespace (``mode`` secret or both):

1. ``namespace``: a listed namespace that does not exist is created. The parameters list it as a
   place whose pods pull from Google's registry; an empty namespace with a Secret in it is harmless
   and the pull secret must be there before the first Deployment arrives. One being deleted blocks.
2. ``pull secret``: created, or updated when the content's SHA-256 differs (the change says
   ``content changes (sha256 a… → b…)``). A Secret of that name but another type is not ours to
   replace: it blocks, naming it.
3. ``service account``: each of ``registry.service_accounts`` in the namespace gets the secret in its
   ``imagePullSecrets``, its other entries kept; a named account that does not exist is created
   (``default`` is made by the controller manager with the namespace, and waited for).

and per node (``mode`` registries-yaml or both, RKE2 only), one node at a time, servers first:

4. ``registries.yaml``: written 0600 over SFTP (the mode set before a byte is written) when its
   checksum differs, or ``chmod 600`` when only the mode is wrong;
5. ``rke2 restart``: ``systemctl restart rke2-server`` (or ``rke2-agent``) after a new file, so that
   containerd loads it, then the node waited for: service active, a kubelet lease renewed after the
   restart, Ready. The roll stops at the first node that does not come back.

A converged cluster plans nothing. The key and every form derived from it (``auth``, the
dockerconfigjson and its base64) are handed to ``on_secret`` (the run's redactor) before anything is
shown.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunbookError
from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, operation
from ..ssh import HostResult
from . import pullsecret

REGISTRIES_YAML = "/etc/rancher/rke2/registries.yaml"
MANAGED_BY = {"app.kubernetes.io/managed-by": "runbooklib"}
NODE_LEASES = "kube-node-lease"


def short(digest: str | None) -> str:
    """A checksum as people compare it: its first 12 hex digits (or ``none``)."""
    return f"{digest[:12]}…" if digest else "none"


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# -- the credentials: made once, registered as secrets, never shown -------------------------------

@dataclass(frozen=True)
class Credentials:
    """What the key becomes: the dockerconfigjson and RKE2's registries.yaml, with their checksums."""

    hosts: tuple[str, ...]
    config_json: str = field(repr=False)
    node_file: str = field(repr=False)

    @property
    def config_sha256(self) -> str:
        return sha256(self.config_json)

    @property
    def node_file_sha256(self) -> str:
        return sha256(self.node_file)

    def __repr__(self) -> str:
        return f"Credentials(hosts={list(self.hosts)}, dockerconfigjson sha256 {short(self.config_sha256)})"


def credentials(params, key, on_secret: Callable[[str, str], None]) -> Credentials:
    """The dockerconfigjson and registries.yaml of ``key`` (a :class:`~runbooklib.secrets.Secret`).

    Every derived secret form is handed to ``on_secret(value, label)`` first: the key, ``auth``
    (base64 of ``_json_key:<key>``), the dockerconfigjson and its base64 (the Secret's data).
    """
    text = key.reveal()
    on_secret(text, "registry.json_key")
    pullsecret.check_key(text)
    hosts = pullsecret.registry_hosts(params.registry.server)
    config = pullsecret.dockerconfigjson(text, hosts)
    on_secret(base64.b64encode(f"{pullsecret.USER}:{text}".encode()).decode(), "registry auth")
    on_secret(config, "dockerconfigjson")
    on_secret(base64.b64encode(config.encode()).decode(), "dockerconfigjson (base64)")
    return Credentials(tuple(hosts), config, pullsecret.registries_yaml(text, hosts))


def try_credentials(params, key, on_secret: Callable[[str, str], None]) -> tuple[Credentials | None, str | None]:
    """:func:`credentials`, or None and why the key cannot be used (a sentence that never shows it)."""
    try:
        return credentials(params, key, on_secret), None
    except RunbookError as e:
        return None, str(e)


# -- what the cluster has -------------------------------------------------------------------------

@dataclass(frozen=True)
class NamespaceState:
    """One listed namespace as the API shows it; ``phase`` is ``""`` when it does not exist."""

    name: str
    phase: str = ""
    secret_type: str | None = None  # None: no Secret of that name
    secret_sha256: str | None = None  # of the decoded .dockerconfigjson
    secret_managed: bool = False
    accounts: dict[str, list[str] | None] = field(default_factory=dict)  # account -> imagePullSecrets (None: missing)


def _missing(e) -> bool:
    return getattr(e, "status", None) == 404


def api_error(e: Exception) -> str:
    """An API failure in one line: status and the server's message (never a request body)."""
    import json

    from ..kubernetes.verify import api_failure

    status = getattr(e, "status", None)
    if status is not None:
        try:
            message = json.loads(getattr(e, "body", "") or "{}").get("message", "")
        except ValueError:
            message = ""
        return f"HTTP {status} {getattr(e, 'reason', '')}".strip() + (f": {message[:300]}" if message else "")
    return api_failure(e)


def read_namespace(v1, params, ns: str) -> NamespaceState:
    """The namespace, its pull Secret (type and checksum only) and the ServiceAccounts the parameters name."""
    from kubernetes.client import ApiException

    r = params.registry
    try:
        phase = v1.read_namespace(ns).status.phase or "Active"
    except ApiException as e:
        if not _missing(e):
            raise
        return NamespaceState(ns)
    secret_type = digest = None
    managed = False
    try:
        s = v1.read_namespaced_secret(r.secret_name, ns)
        secret_type = s.type or "Opaque"
        data = (s.data or {}).get(".dockerconfigjson")
        digest = sha256(base64.b64decode(data)) if data else None
        managed = ((s.metadata.labels or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY["app.kubernetes.io/managed-by"])
        del s, data  # the content goes no further than its checksum
    except ApiException as e:
        if not _missing(e):
            raise
    accounts: dict[str, list[str] | None] = {}
    for name in r.accounts_in(ns):
        try:
            sa = v1.read_namespaced_service_account(name, ns)
            accounts[name] = [ref.name for ref in sa.image_pull_secrets or []]
        except ApiException as e:
            if not _missing(e):
                raise
            accounts[name] = None
    return NamespaceState(ns, phase, secret_type, digest, managed, accounts)


def kubeconfig_of(params) -> Path | None:
    """The state folder's kubeconfig (``runbooklib.kubernetes.state.kubeconfig_path``); None without a kubernetes section."""
    from ..kubernetes import state

    return state.kubeconfig_path(params) if params.kubernetes is not None else None


def read_cluster(params, kubeconfig: Path | None) -> dict[str, NamespaceState]:
    """Every listed namespace's state; a RunbookError naming the kubeconfig when the API does not answer."""
    from ..kubernetes import verify

    if kubeconfig is None:
        raise RunbookError("no kubernetes section in the parameter file: no cluster to read")
    if not kubeconfig.exists():
        raise RunbookError(f"no kubeconfig at {kubeconfig}: the cluster has not been brought up; run 03-kubernetes-cluster first")
    try:
        client, api = verify.api_client(kubeconfig, params)
    except Exception as e:
        raise RunbookError(f"{kubeconfig}: not a usable kubeconfig ({type(e).__name__}); run 03-kubernetes-cluster again") from None
    try:
        v1 = client.CoreV1Api(api)
        return {ns: read_namespace(v1, params, ns) for ns in params.registry.namespaces}
    except Exception as e:  # the API down, a refused certificate, a 403: one sentence, the run goes on to say so
        raise RunbookError(f"the API ({kubeconfig}) did not answer: {api_error(e)}; check that the cluster is up "
                           "(03-kubernetes-cluster verifies it)") from None
    finally:
        api.close()


# -- what each node has (RKE2) --------------------------------------------------------------------

NODE_FACTS = (f"printf 'sha256=%s\\n' \"$(sha256sum {REGISTRIES_YAML} 2>/dev/null | cut -d' ' -f1)\"; "
              f"printf 'mode=%s\\n' \"$(stat -c %a {REGISTRIES_YAML} 2>/dev/null)\"; "
              f"printf 'owner=%s\\n' \"$(stat -c %U {REGISTRIES_YAML} 2>/dev/null)\"; "
              "printf 'server=%s\\n' \"$(systemctl is-active rke2-server 2>/dev/null)\"; "
              "printf 'agent=%s\\n' \"$(systemctl is-active rke2-agent 2>/dev/null)\"")


def cluster_nodes(params) -> list:
    """The cluster's hosts in RKE2's order (the first server, the other servers, the agents): the restart order."""
    from ..kubernetes import rke2
    from ..kubernetes.spec import spec_from_params

    order = [n for group in rke2.install_order(spec_from_params(params)) for n in group]
    return [params.host(n) for n in order]


def service_of(params, host) -> str:
    from ..kubernetes import rke2
    from ..kubernetes.spec import spec_from_params

    return f"rke2-{rke2.node_kind(spec_from_params(params), host.name)}"


def gather_nodes(params, fleet) -> tuple[dict[str, dict], dict[str, str]]:
    """Per cluster node: the file's checksum, mode and owner (never its content) and the rke2 services; the unreachable ones."""
    from ..phase.facts import gather_key_values

    return gather_key_values(fleet, NODE_FACTS, cluster_nodes(params), "registries.yaml facts")


@dataclass
class Survey:
    """What is there before the plan: the listed namespaces through the API, the nodes' registries.yaml over SSH."""

    cluster: dict[str, NamespaceState] | None = None
    cluster_error: str = ""
    nodes: dict[str, dict] = field(default_factory=dict)
    node_errors: dict[str, str] = field(default_factory=dict)

    def namespace_rows(self, params) -> list[dict]:
        r = params.registry
        if self.cluster is None:
            return [{"namespace": "-", "state": f"not read: {self.cluster_error}"}] if self.cluster_error else []
        rows = []
        for ns, st in self.cluster.items():
            secret = "none" if st.secret_type is None else f"{st.secret_type}, sha256 {short(st.secret_sha256)}"
            accounts = "; ".join(f"{sa}: " + ("missing" if have is None else ", ".join(have) or "no imagePullSecrets")
                                 for sa, have in st.accounts.items())
            rows.append({"namespace": ns, "state": st.phase or "missing", f"secret {r.secret_name}": secret,
                         "service accounts (imagePullSecrets)": accounts or "-"})
        return rows

    def node_rows(self, params) -> list[dict]:
        rows = []
        for host in cluster_nodes(params):
            if host.name in self.node_errors:
                rows.append({"node": host.name, "registries.yaml": f"unreachable: {self.node_errors[host.name]}"})
                continue
            f = self.nodes.get(host.name, {})
            service = service_of(params, host)
            rows.append({"node": host.name, "registries.yaml": f"sha256 {short(f.get('sha256'))}, {f.get('owner')} {f.get('mode')}"
                         if f.get("sha256") else "none", "service": f"{service} {f.get(service.removeprefix('rke2-')) or 'not installed'}"})
        return rows


def survey(params, fleet, kubeconfig: Path | None) -> Survey:
    """Read what the mode needs: the cluster (secret, both) and the nodes (registries-yaml, both)."""
    out = Survey()
    r = params.registry
    if r.uses_secret:
        try:
            out.cluster = read_cluster(params, kubeconfig)
        except RunbookError as e:
            out.cluster_error = str(e)
    if r.uses_node_file and params.kubernetes is not None:
        out.nodes, out.node_errors = gather_nodes(params, fleet)
    return out


# -- the operations -------------------------------------------------------------------------------
# Each takes (params, target, facts): a namespace and {"state": NamespaceState, "want": sha256}, or a
# host and {"sha256", "mode", "owner", "server", "agent", "want", "service"}. Nothing when converged.

def ns_target(ns: str) -> str:
    return f"namespace/{ns}"


@operation("namespace", touches="the Namespace object", undo="kubectl delete namespace NS (only while it holds nothing else)")
def namespace_exists(params, ns: str, f: dict) -> list[Step]:
    st: NamespaceState = f["state"]
    if st.phase == "Terminating":
        return [Step(ns_target(ns), "namespace", f"nothing in {ns} while it is being deleted", None,
                     blocked=f"namespace {ns} is being deleted (Terminating); wait until it is gone, then run again")]
    if st.phase:
        return []
    return [Step(ns_target(ns), "namespace", f"create namespace {ns} (registry.namespaces lists it)", f"kubectl create namespace {ns}",
                 undo=f"kubectl delete namespace {ns}", undo_note="deletes everything in the namespace: only while it holds nothing else")]


@operation("pull secret", touches="the Secret registry.secret_name in each namespace",
           undo="kubectl -n NS delete secret NAME (pods then pull without credentials)")
def pull_secret(params, ns: str, f: dict) -> list[Step]:
    st: NamespaceState = f["state"]
    name, want = params.registry.secret_name, f["want"]
    if st.phase == "Terminating":
        return []
    undo = f"kubectl -n {ns} delete secret {name}"
    if st.secret_type is None:
        return [Step(ns_target(ns), "pull secret", f"create Secret {name} ({pullsecret.SECRET_TYPE}, sha256 {short(want)}; the "
                                                   "content is never shown)", f"kubectl -n {ns} create secret docker-registry {name}",
                     undo=undo, undo_note="pods then pull without credentials")]
    if st.secret_type != pullsecret.SECRET_TYPE:
        return [Step(ns_target(ns), "pull secret", f"nothing: Secret {name} exists with another type", None,
                     blocked=f"Secret {ns}/{name} has type {st.secret_type}, not {pullsecret.SECRET_TYPE}, and a Secret's type cannot "
                             f"change; it is not this runbook's to replace: delete it (kubectl -n {ns} delete secret {name}) or set "
                             "registry.secret_name to another name")]
    if st.secret_sha256 == want:
        return []
    whose = "" if st.secret_managed else "; it was not created by this runbook"
    return [Step(ns_target(ns), "pull secret", f"update Secret {name}: content changes (sha256 {short(st.secret_sha256)} → "
                                               f"{short(want)}){whose}", f"kubectl -n {ns} patch secret {name}",
                 undo_note="the old content is not kept (it holds the old key): re-run with the old key to put it back")]


@operation("service account", touches="imagePullSecrets of registry.service_accounts",
           undo="remove the secret from the account's imagePullSecrets (kubectl -n NS edit serviceaccount SA)")
def accounts_have_secret(params, ns: str, f: dict) -> list[Step]:
    st: NamespaceState = f["state"]
    secret = params.registry.secret_name
    if st.phase == "Terminating":
        return []
    out = []
    for sa in params.registry.accounts_in(ns):
        have = st.accounts.get(sa)
        if have is None and sa != "default":
            out.append(Step(ns_target(ns), "service account", f"create ServiceAccount {sa} with imagePullSecrets [{secret}]",
                            f"kubectl -n {ns} create serviceaccount {sa}", undo=f"kubectl -n {ns} delete serviceaccount {sa}"))
        elif have is None or secret not in have:
            kept = f"; keeps {', '.join(have)}" if have else ""
            made = " (made by the controller manager with the namespace)" if have is None else ""
            out.append(Step(ns_target(ns), "service account", f"add {secret} to the imagePullSecrets of ServiceAccount {sa}{made}{kept}",
                            f"kubectl -n {ns} patch serviceaccount {sa}",
                            undo_note=f"remove {secret} from its imagePullSecrets (kubectl -n {ns} edit serviceaccount {sa})"))
    return out


def _node_blocked(host, f: dict) -> str:
    if f.get(f["service"].removeprefix("rke2-")) != "active":
        return (f"{f['service']} is not active on {host.name} ({f.get(f['service'].removeprefix('rke2-')) or 'not installed'}); "
                "containerd loads registries.yaml when RKE2 starts: bring the node up with 03-kubernetes-cluster first")
    return ""


@operation("registries.yaml", touches=REGISTRIES_YAML + " (0600, root) on every node",
           undo=f"rm {REGISTRIES_YAML}, then restart rke2 on the node (no copy of the old file is kept: it holds a key)")
def node_file(params, host, f: dict) -> list[Step]:
    why = _node_blocked(host, f)
    if why:
        return [Step(host.name, "registries.yaml", "nothing on this node until RKE2 runs", None, blocked=why)]
    hosts = len(pullsecret.registry_hosts(params.registry.server))
    if f.get("sha256") != f["want"]:
        verb = "replace" if f.get("sha256") else "write"
        return [Step(host.name, "registries.yaml", f"{verb} {REGISTRIES_YAML} (0600, logins for {hosts} registry hosts): content "
                                                   f"changes (sha256 {short(f.get('sha256'))} → {short(f['want'])})",
                     "registries.yaml", undo=None,
                     undo_note=f"rm {REGISTRIES_YAML} and restart {f['service']}: containerd then pulls without credentials "
                               "(the old file is not kept: it holds a key)")]
    if f.get("mode") != "600" or f.get("owner") != "root":
        return [Step(host.name, "registries.yaml", f"chown root and chmod 600 {REGISTRIES_YAML} (now {f.get('owner')} "
                                                   f"{f.get('mode')}: it holds the key)", f"chown root {REGISTRIES_YAML} && chmod 600 "
                                                   f"{REGISTRIES_YAML}", undo_note="none needed")]
    return []


@operation("rke2 restart", touches="the rke2-server or rke2-agent service, one node at a time",
           undo="none: a restart changes nothing by itself (remove the file and restart again to undo the login)")
def node_restarted(params, host, f: dict) -> list[Step]:
    if _node_blocked(host, f) or f.get("sha256") == f["want"]:
        return []
    return [Step(host.name, "rke2 restart", f"systemctl restart {f['service']} so that containerd loads the new file; then wait for "
                                            "the node (service active, a kubelet lease renewed, Ready)", f"systemctl restart {f['service']}",
                 undo_note="none: a restart changes nothing by itself")]


NAMESPACE_OPERATIONS: tuple[Operation, ...] = (namespace_exists, pull_secret, accounts_have_secret)
NODE_OPERATIONS: tuple[Operation, ...] = (node_file, node_restarted)
OPERATIONS: tuple[Operation, ...] = (*NAMESPACE_OPERATIONS, *NODE_OPERATIONS)  # the runbook's rollback table


def plan(params, creds: Credentials | None, cluster: dict[str, NamespaceState] | None, nodes: dict[str, dict] | None = None,
         node_errors: dict[str, str] | None = None, cluster_error: str = "", blockers: Sequence[str] = ()) -> list[Step]:
    """Every step still needed: namespaces in the listed order, then nodes in restart order.

    ``blockers`` (lint errors; a key that cannot be used leaves ``creds`` None) block everything.
    ``cluster`` is :func:`read_cluster`'s answer (None with ``cluster_error`` when the API did not
    answer: one blocked step); ``nodes`` and ``node_errors`` are :func:`gather_nodes`' (an unreachable
    node gets one blocked step, never a plan made on defaults).
    """
    r = params.registry
    if blockers or creds is None:
        return [Step("registry", "registry access", "nothing until the blockers are fixed", None,
                     blocked="; ".join(blockers) or "the key could not be used")]
    out: list[Step] = []
    if r.uses_secret:
        if cluster is None:
            out.append(Step(f"cluster {params.kubernetes.cluster_name}", "pull secret", "nothing until the API answers", None,
                            blocked=cluster_error or "the cluster's state was not read"))
        else:
            for ns in r.namespaces:
                facts = {"state": cluster.get(ns, NamespaceState(ns)), "want": creds.config_sha256}
                for op in NAMESPACE_OPERATIONS:
                    out.extend(op(params, ns, facts))
    if r.uses_node_file:
        for host in cluster_nodes(params):
            if host.name in (node_errors or {}):
                out.append(Step(host.name, "registries.yaml", "nothing planned: the node did not answer", None,
                                blocked=f"unreachable: {node_errors[host.name]}"))
                continue
            facts = {**(nodes or {}).get(host.name, {}), "want": creds.node_file_sha256, "service": service_of(params, host)}
            for op in NODE_OPERATIONS:
                out.extend(op(params, host, facts))
    return out


# -- applying -------------------------------------------------------------------------------------

@dataclass
class AccessApply:
    """What an apply did: a line per step carried out, and what stopped (one sentence per namespace or node)."""

    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str:
        return "; ".join(self.errors)


def apply(params, fleet, steps: Sequence[Step], creds: Credentials, kubeconfig: Path,
          on_change: Callable[[Step], object] | None = None, wait: float = 180.0) -> AccessApply:
    """Carry out a plan of :func:`plan`: the namespaces' steps in order (a failure stops that namespace only),
    then the nodes one at a time (a node that fails stops the roll: the others keep running as they were)."""
    out = AccessApply()
    api_steps = [s for s in steps if s.host.startswith("namespace/") and s.command is not None]
    nodes = {h.name for h in params.hosts}
    node_steps = [s for s in steps if s.host in nodes and s.command is not None]
    if api_steps:
        _apply_api(params, api_steps, creds, kubeconfig, on_change, out)
    if node_steps:
        _apply_nodes(params, fleet, node_steps, creds, kubeconfig, on_change, out, wait)
    return out


def _record(step: Step, on_change, out: AccessApply) -> None:
    out.applied.append(f"{step.host}: {step.operation}: {step.change}")
    if on_change:
        on_change(step)


def _apply_api(params, steps: Sequence[Step], creds: Credentials, kubeconfig: Path, on_change, out: AccessApply) -> None:
    from ..kubernetes import verify

    client, api = verify.api_client(kubeconfig, params)
    try:
        v1 = client.CoreV1Api(api)
        for ns in dict.fromkeys(s.host.removeprefix("namespace/") for s in steps):
            for step in [s for s in steps if s.host == ns_target(ns)]:
                try:
                    _api_step(client, v1, params, ns, step, creds)
                except Exception as e:  # this namespace stops; the others carry on
                    why = e.args[0] if isinstance(e, RunbookError) else api_error(e)
                    out.errors.append(f"{ns_target(ns)}: {step.operation} ({step.change}) failed: {why}")
                    break
                _record(step, on_change, out)
    finally:
        api.close()


def _api_step(client, v1, params, ns: str, step: Step, creds: Credentials) -> None:
    r = params.registry
    if step.operation == "namespace":
        v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=dict(MANAGED_BY))))
    elif step.operation == "pull secret":
        body = pullsecret.secret_manifest(r.secret_name, ns, creds.config_json)
        try:
            existing = v1.read_namespaced_secret(r.secret_name, ns)
        except client.ApiException as e:
            if not _missing(e):
                raise
            v1.create_namespaced_secret(ns, body)
            return
        if existing.type != pullsecret.SECRET_TYPE:
            raise RunbookError(f"Secret {ns}/{r.secret_name} has type {existing.type} now; it is not this runbook's to replace")
        del existing
        v1.patch_namespaced_secret(r.secret_name, ns, {"metadata": {"labels": dict(MANAGED_BY)}, "data": body["data"]})
    elif step.operation == "service account":
        sa = step.command.rsplit(" ", 1)[1]
        if step.command.startswith(f"kubectl -n {ns} create serviceaccount"):
            v1.create_namespaced_service_account(ns, client.V1ServiceAccount(
                metadata=client.V1ObjectMeta(name=sa, labels=dict(MANAGED_BY)),
                image_pull_secrets=[client.V1LocalObjectReference(name=r.secret_name)]))
            return
        add_pull_secret(client, v1, ns, sa, r.secret_name)


def add_pull_secret(client, v1, ns: str, sa: str, secret: str, wait: float = 60.0) -> None:
    """Add ``secret`` to the account's imagePullSecrets, keeping the others; ``default`` is waited for (the
    controller manager makes it with the namespace). The patch carries the resourceVersion it was read at."""
    deadline = time.monotonic() + wait
    while True:
        try:
            account = v1.read_namespaced_service_account(sa, ns)
        except client.ApiException as e:
            if not _missing(e) or time.monotonic() > deadline:
                if _missing(e):
                    raise RunbookError(f"ServiceAccount {ns}/{sa} did not appear within {wait:g} s; the controller manager "
                                       "makes default with the namespace: is kube-controller-manager running?") from None
                raise
            time.sleep(1)
            continue
        names = [ref.name for ref in account.image_pull_secrets or []]
        if secret in names:
            return
        patch = {"metadata": {"resourceVersion": account.metadata.resource_version},
                 "imagePullSecrets": [{"name": n} for n in [*names, secret]]}
        try:
            v1.patch_namespaced_service_account(sa, ns, patch)
            return
        except client.ApiException as e:
            if e.status != 409 or time.monotonic() > deadline:  # 409: changed since it was read: read it again
                raise


def _apply_nodes(params, fleet, steps: Sequence[Step], creds: Credentials, kubeconfig: Path, on_change, out: AccessApply,
                 wait: float) -> None:
    from ..kubernetes import rke2
    from ..kubernetes.install_rke2 import wait_for_node, write_remote
    from ..kubernetes.spec import spec_from_params

    first = rke2.first_server(spec_from_params(params)).name

    def execute(host, step: Step) -> HostResult:
        try:
            if step.command == "registries.yaml":
                fleet.run_on(host, f"mkdir -p {REGISTRIES_YAML.rsplit('/', 1)[0]}").check()
                write_remote(fleet, host, REGISTRIES_YAML, creds.node_file.encode(), 0o600)
                return HostResult(host.name, True, exit_code=0)
            if step.operation == "rke2 restart":
                r = fleet.run_on(host, step.command)
                if not r.ok:
                    return r
                r = wait_for_node(fleet, host, host.name == first, wait)
                if not r.ok:
                    return r
                why = wait_back(kubeconfig, host.name, wait)
                return HostResult(host.name, not why, exit_code=0 if not why else 1, error=why)
            return fleet.run_on(host, step.command)
        except Exception as e:  # an SFTP or SSH failure is this node's, said with its name
            return HostResult(host.name, False, exit_code=1, error=f"{type(e).__name__}: {e}")

    order = [h.name for h in cluster_nodes(params)]
    pending = [n for n in order if any(s.host == n for s in steps)]
    for i, name in enumerate(pending):
        mine = [s for s in steps if s.host == name]
        results = phase_steps.apply(fleet, mine, on_change=lambda s: _record(s, on_change, out), execute=execute, desc=name)
        bad = [r.error for r in results.values() if not r.ok]
        if bad:
            rest = pending[i + 1:]
            out.errors.append("; ".join(bad) + (f"; the roll stopped there: not done on {', '.join(rest)}" if rest else ""))
            return


def wait_back(kubeconfig: Path, node: str, timeout: float) -> str:
    """Until the node is back after its restart: a kubelet lease renewal later than the first one the API shows
    once the restart returned (the old agent is gone by then), and Ready. "" or why not."""
    from ..kubernetes import verify

    deadline = time.monotonic() + timeout
    first: str | None = None
    last = "the API did not answer"
    while time.monotonic() < deadline:
        try:
            client, api = verify.api_client(kubeconfig)
            try:
                renewed = str(client.CoordinationV1Api(api).read_namespaced_lease(node, NODE_LEASES).spec.renew_time or "")
                conditions = client.CoreV1Api(api).read_node(node).status.conditions or []
            finally:
                api.close()
            ready = next((c.status for c in conditions if c.type == "Ready"), None)
            first = renewed if first is None else first
            if renewed != first and ready == "True":
                return ""
            last = f"lease renewed at {renewed or 'never'} (first seen after the restart: {first or 'none'}), Ready={ready}"
        except Exception as e:  # the API restarts with a server: keep waiting, remember why
            last = api_error(e)
        time.sleep(2)
    return f"{node} did not come back within {timeout:g} s after the restart ({last}); see `systemctl status rke2-*` there"


# -- verification ---------------------------------------------------------------------------------

def row(check: str, target: str, status: str, detail: str = "") -> dict:
    return {"check": check, "target": target, "status": status, "detail": detail}


WORKLOAD_KINDS = (("deployment", "list_namespaced_deployment"), ("daemonset", "list_namespaced_daemon_set"),
                  ("statefulset", "list_namespaced_stateful_set"))


def image_host(image: str) -> str:
    """The registry host of an image reference (``docker.io`` when the first part names none)."""
    first, sep, _ = image.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else "docker.io"


def workload_row(kind: str, ns: str, name: str, pod_spec: dict, accounts: dict[str, list[str]], secret: str,
                 hosts: Sequence[str]) -> dict:
    """Whether one workload can pull its images from Google's registries: ok, fail (with what to do) or n/a."""
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    images = [c.get("image", "") for c in containers]
    google = [i for i in images if image_host(i) in hosts or image_host(i).endswith(("-docker.pkg.dev", ".gcr.io"))]
    target = f"{ns}/{kind}/{name}"
    if not google:
        return row("workload can pull", target, "n/a", f"pulls nothing from Google's registries ({', '.join(images) or 'no image'})")
    uncovered = sorted({image_host(i) for i in google} - set(hosts))
    if uncovered:
        return row("workload can pull", target, "fail", f"pulls from {', '.join(uncovered)}, which the secret does not log in to; "
                                                        "set registry.server to that host")
    ok, why = pullsecret.pod_can_pull(pod_spec, accounts, secret)
    return row("workload can pull", target, "ok" if ok else "fail", why)


def verify_cluster(params, kubeconfig: Path, creds: Credentials) -> list[dict]:
    """Per listed namespace: the Secret (present, type, checksum), each named ServiceAccount lists it, every
    Deployment, DaemonSet and StatefulSet can use it. An API that does not answer is a failing row."""
    from kubernetes.client import ApiException

    from ..kubernetes import verify

    r = params.registry
    rows: list[dict] = []
    if not kubeconfig.exists():
        return [row("API answers", str(kubeconfig), "fail", "no kubeconfig there: the cluster has not been brought up (03-kubernetes-cluster)")]
    try:
        client, api = verify.api_client(kubeconfig, params)
    except Exception as e:
        return [row("API answers", str(kubeconfig), "fail", f"{type(e).__name__}: not a usable kubeconfig")]
    try:
        v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        for ns in r.namespaces:
            target = f"{ns}/{r.secret_name}"
            try:
                s = v1.read_namespaced_secret(r.secret_name, ns)
                data = (s.data or {}).get(".dockerconfigjson")
                digest = sha256(base64.b64decode(data)) if data else None
                rows.append(row("secret present", target, "ok", "exists"))
                rows.append(row("secret type", target, "ok" if s.type == pullsecret.SECRET_TYPE else "fail",
                                f"{s.type}; expected {pullsecret.SECRET_TYPE}"))
                rows.append(row("secret content", target, "ok" if digest == creds.config_sha256 else "fail",
                                f"sha256 {short(digest)}; expected {short(creds.config_sha256)}" +
                                ("" if digest == creds.config_sha256 else " (another key, or written by hand: apply again)")))
                del s, data
            except ApiException as e:
                if not _missing(e):
                    raise
                rows.append(row("secret present", target, "fail", f"no Secret {r.secret_name} in namespace {ns}: apply this runbook"))
            accounts = {sa.metadata.name: [ref.name for ref in sa.image_pull_secrets or []]
                        for sa in v1.list_namespaced_service_account(ns).items}
            for name in r.accounts_in(ns):
                have = accounts.get(name)
                ok = have is not None and r.secret_name in have
                rows.append(row("service account lists secret", f"{ns}/{name}", "ok" if ok else "fail",
                                f"imagePullSecrets: {', '.join(have) or 'none'}" if have is not None else "no such ServiceAccount"))
            for kind, method in WORKLOAD_KINDS:
                for w in getattr(apps, method)(ns).items:
                    spec = api.sanitize_for_serialization(w.spec.template.spec)
                    rows.append(workload_row(kind, ns, w.metadata.name, spec, accounts, r.secret_name, creds.hosts))
    except Exception as e:  # every check is a row, never a crash
        rows.append(row("API answers", str(kubeconfig), "fail", api_error(e)))
    finally:
        api.close()
    return rows


def verify_nodes(params, fleet, creds: Credentials) -> list[dict]:
    """Each cluster node's registries.yaml: present with the right checksum, 0600 and root's. Never its content."""
    facts, errors = gather_nodes(params, fleet)
    rows = []
    for host in cluster_nodes(params):
        if host.name in errors:
            rows.append(row("registries.yaml", host.name, "fail", f"unreachable: {errors[host.name]}"))
            continue
        f = facts.get(host.name, {})
        if not f.get("sha256"):
            rows.append(row("registries.yaml", host.name, "fail", f"no {REGISTRIES_YAML}: apply this runbook"))
            continue
        same = f["sha256"] == creds.node_file_sha256
        rows.append(row("registries.yaml content", host.name, "ok" if same else "fail",
                        f"sha256 {short(f['sha256'])}; expected {short(creds.node_file_sha256)}"))
        private = f.get("mode") == "600" and f.get("owner") == "root"
        rows.append(row("registries.yaml mode", host.name, "ok" if private else "fail",
                        f"{f.get('owner')} {f.get('mode')}; expected root 600 (the file holds the key)"))
    return rows


def verify(params, fleet, kubeconfig: Path | None, creds: Credentials | None) -> list[dict]:
    """Every check the mode calls for: the cluster's (secret, both) and the nodes' (registries-yaml, both)."""
    if creds is None or kubeconfig is None:
        return []
    r = params.registry
    return ((verify_cluster(params, kubeconfig, creds) if r.uses_secret else []) +
            (verify_nodes(params, fleet, creds) if r.uses_node_file else []))


def cannot_pull(rows: Sequence[dict]) -> list[dict]:
    """The workloads that cannot pull, each with what to do: the table an engineer acts on."""
    return [{"workload": r["target"], "why, and what to do": r["detail"]} for r in rows
            if r["check"] == "workload can pull" and r["status"] == "fail"]


def failing(rows: Sequence[dict]) -> list[str]:
    return [f"{r['check']} {r['target']}: {r['detail']}" for r in rows if r["status"] == "fail"]


def status_colour(rows: Sequence[dict]) -> Callable[[int, str], str]:
    tones = {"ok": "ok", "fail": "bad", "n/a": ""}
    return lambda i, col: tones.get(rows[i]["status"], "") if col == "status" else ""


def recap(rows: Sequence[dict]) -> list[dict]:
    """One line per kind of check: how many passed, failed, did not apply, and which failed with what to do."""
    out: dict[str, dict] = {}
    for r in rows:
        line = out.setdefault(r["check"], {"check": r["check"], "ok": 0, "failed": 0, "n/a": 0, "failing": []})
        key = {"ok": "ok", "fail": "failed"}.get(r["status"], "n/a")
        line[key] += 1
        if r["status"] == "fail":
            line["failing"].append(f"{r['target']}: {r['detail']}")
    return [{**line, "failing": "; ".join(line["failing"])} for line in out.values()]


def verdict(steps: Sequence[Step], outcome_status: str, result: AccessApply | None, failed_checks: Sequence[str],
            blockers: Sequence[str] = ()) -> tuple[str, list[str]]:
    """*not ready* (lint errors, or blocked steps and nothing applied), *planned*, *nothing to do*, *done* or *incomplete*."""
    held = [f"{s.host}: {s.operation}: {s.blocked}" for s in steps if s.command is None]
    problems = [*blockers, *held, *(result.errors if result is not None else []), *failed_checks]
    if blockers or (held and outcome_status not in ("applied",)):
        return "not ready", problems
    if outcome_status == "planned":
        return "planned", problems
    if problems:
        return "incomplete", problems
    return ("nothing to do" if outcome_status == "empty" else "done"), problems
