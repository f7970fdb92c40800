"""Upgrading Kubernetes one minor at a time: the path, the version skew rules, and per distribution the steps.

Kubernetes is never upgraded across a minor it skips (1.30 -> 1.31 -> 1.32, never 1.30 -> 1.32): each
node goes through every minor between its own and the target's. The planner works from what runs, not
from what a file says, so a run that stopped half-way is resumed by running the runbook again:

- **the running cluster**: each Node's kubelet version and the API server's ``/version`` (RKE1 and RKE2
  run every component of a node from one release, so a control-plane node's version is its API
  server's, controller manager's and scheduler's too);
- **the target**: ``kubernetes.version``; **the releases on the way**: ``kubernetes.upgrade_path``, one
  release per minor between the oldest node's and the target's (``[v1.35.4]``, or with RKE2's
  artifact folder of that release ``[{version: v1.35.4, artifacts: rke2-artifacts/v1.35.4}]``); a minor
  the path needs and the parameters do not name is a clear error, never a skip;
- **the path**: one :class:`PathStep` per minor, each with the nodes still below its release:
  the control-plane nodes one at a time first, then etcd-only servers, then the workers in batches of
  ``kubernetes.upgrade_worker_batch``. A node at or past a step's release is left alone; the
  oldest nodes' own minor needs no step (a patch release on the way up is not needed);
- **refused**: a downgrade (any node newer than the target), a state of the running cluster outside
  the version skew policy, and a path any of whose intermediate states would be (:func:`simulate`
  applies the path node by node and checks the rules after each, and that no node skips a minor).

The version skew rules (kubernetes.io/releases/version-skew-policy, checked 2026-11): kube-apiserver
instances within one minor of each other; a kubelet never newer than any kube-apiserver and at most
three minors older than the newest (two for kubelets before 1.25); kube-controller-manager and
kube-scheduler never newer than the kube-apiserver they talk to (on RKE1 and RKE2 their own node's)
and at most one minor older; kubectl within one minor of every kube-apiserver (the engineer's own
client: a warning, not a blocker).

The steps, per distribution (an etcd snapshot first in both):

- RKE2: ``rke2 etcd-snapshot save --name pre-upgrade-<target>`` on the first etcd server; then per
  node, the release's air-gapped artifacts copied and installed with ``install.sh`` (checksums checked
  here and again by the installer), ``systemctl restart rke2-server|rke2-agent``, and the node waited
  for until its kubelet's lease is renewed after the restart and the Node is Ready at the new release
  (a server's own API server too). Nodes with the worker role
  are cordoned and drained first (:mod:`.drain`) and uncordoned after; a node this runbook cordons is
  annotated :data:`CORDONED`, so that a run that stopped after the drain uncordons it when resumed,
  and a node someone else cordoned stays cordoned.
- RKE1: ``rke etcd snapshot-save --name pre-upgrade-<target>-<time>``; then per minor, ``cluster.yml``
  with that release and ``rke up`` (rke upgrades the nodes in its own order, following the file's
  ``upgrade_strategy``: control-plane nodes one at a time, workers in batches, drained).

Between minors the cluster is verified (the API and every node at the release and Ready, the system
workloads available, etcd healthy); the first failure stops the run with a resume point.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunbookError
from ..phase import steps as phase_steps
from ..phase.steps import Step, file_diff
from ..ssh import HostResult
from . import state

CORDONED = "runbooklib/cordoned-for-upgrade"  # the annotation on a node this runbook cordoned: the release it was for
SNAPSHOT_PREFIX = "pre-upgrade"
KUBELET_SKEW = 3  # minors a kubelet may be behind the newest kube-apiserver (since 1.25; 2 before)
SKEW_POLICY = "kubernetes.io/releases/version-skew-policy"


class UpgradeError(RunbookError):
    """A path that cannot be planned: a downgrade, a missing release, a skip. Nothing has been changed."""

    exit_code = 2


# -- versions ------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Version:
    """A Kubernetes release: compared as numbers (v1.9.0 < v1.10.0), shown as ``v1.35.4``."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> "Version":
        """``v1.35.4``, ``1.35.4``, and with a build suffix (``+rke2r1``, ``+kwok-lab-simulation``, RKE1's ``-rancher1-1``)."""
        m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?", str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a Kubernetes version; write it like v1.35.4")
        return cls(*(int(g) for g in m.groups()))

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    @property
    def line(self) -> str:
        """The minor it belongs to: ``v1.35``."""
        return f"v{self.major}.{self.minor}"


@dataclass(frozen=True)
class Release:
    """A release the cluster goes to, and where the parameters name it (and, for RKE2, its artifact folder)."""

    version: Version
    field: str  # kubernetes.version or kubernetes.upgrade_path[i]
    artifacts: str | None = None
    artifacts_field: str = ""


def releases(params) -> tuple[Release, list[Release]]:
    """The target (``kubernetes.version``, with ``kubernetes.artifacts``) and the intermediate releases of the parameters."""
    k = params.kubernetes
    target = Release(Version.parse(k.version), "kubernetes.version", k.artifacts, "kubernetes.artifacts")
    on_the_way = [Release(Version.parse(r.version), f"kubernetes.upgrade_path[{i}]", r.artifacts,
                          f"kubernetes.upgrade_path[{i}].artifacts") for i, r in enumerate(k.upgrade_path)]
    return target, on_the_way


# -- the running cluster ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeVersion:
    """One node as the API shows it, with what the parameters say it is."""

    name: str
    version: Version
    control_plane: bool = False  # runs a kube-apiserver (the controlplane role)
    server: bool = False  # etcd or control plane: upgraded one at a time, before the workers
    worker: bool = True  # takes workloads: drained before its upgrade
    ready: bool = True
    unschedulable: bool = False
    cordoned_for: str = ""  # the CORDONED annotation: this runbook cordoned it for that release


@dataclass
class Running:
    """What runs: the API server's version (its ``/version``) and every Node."""

    api: Version | None
    nodes: list[NodeVersion]
    unknown: list[str] = field(default_factory=list)  # Nodes the parameters do not name
    missing: list[str] = field(default_factory=list)  # cluster hosts without a Node

    def rows(self) -> list[dict]:
        return [{"node": n.name, "version": str(n.version), "kind": "control plane" if n.control_plane else
                 ("etcd" if n.server else "worker"), "ready": "yes" if n.ready else "NO",
                 "schedulable": "no (cordoned" + (f" by this runbook for {n.cordoned_for})" if n.cordoned_for else ")")
                 if n.unschedulable else "yes"} for n in self.nodes]


def read_running(params, kubeconfig: Path) -> Running:
    """The running versions through the API (the official client); a :class:`RunbookError` naming the kubeconfig if it does not answer."""
    from . import verify

    try:
        client, api = verify.api_client(kubeconfig, params)
        reported = client.VersionApi(api).get_code().git_version
        items = client.CoreV1Api(api).list_node().items
    except verify.ApiUnanswered as e:  # names the host itself
        raise RunbookError(f"{e}; an upgrade starts from a running cluster (03-kubernetes-cluster brings it up)") from None
    except Exception as e:  # any failure to read is the same thing for the plan: it cannot know what runs
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise RunbookError(f"the cluster's API does not answer through {kubeconfig} ({type(e).__name__}: {first}); an upgrade "
                           "starts from a running cluster: bring it up with 03-kubernetes-cluster or check the control plane") from None
    hosts = {h.name: h for h in params.hosts if h.in_cluster}
    nodes = []
    for n in items:
        name = n.metadata.name
        h = hosts.get(name)
        roles = set(h.roles) if h else set()
        ready = {c.type: c.status for c in (n.status.conditions or [])}.get("Ready") == "True"
        nodes.append(NodeVersion(name, Version.parse(n.status.node_info.kubelet_version), "controlplane" in roles,
                                 bool(roles & {"etcd", "controlplane"}), "worker" in roles or h is None, ready,
                                 bool(n.spec.unschedulable), (n.metadata.annotations or {}).get(CORDONED, "")))
    order = {name: i for i, name in enumerate(hosts)}
    nodes.sort(key=lambda n: order.get(n.name, len(order)))  # inventory order: the order nodes are upgraded in
    return Running(Version.parse(reported), nodes, unknown=sorted(n.name for n in nodes if n.name not in hosts),
                   missing=[name for name in hosts if name not in {n.name for n in nodes}])


# -- the version skew policy -----------------------------------------------------------------------

def _row(rule: str, component: str, ok: bool, detail: str, fix: str = "") -> dict:
    return {"rule": rule, "component": component, "status": "ok" if ok else "fail", "detail": detail, "fix": "" if ok else fix}


def kubelet_skew(kubelet: Version) -> int:
    """How many minors a kubelet of this release may be behind the newest kube-apiserver."""
    return KUBELET_SKEW if kubelet.minor >= 25 else 2


def skew(apiservers: dict[str, Version], kubelets: dict[str, Version], controllers: dict[str, Version] | None = None,
         kubectl: Version | None = None) -> list[dict]:
    """The version skew policy's rules on one state of a cluster, a row per rule and component.

    ``apiservers``: where each kube-apiserver runs -> its release; ``kubelets``: node -> release;
    ``controllers``: node -> the release of its kube-controller-manager and kube-scheduler; default:
    the node's kube-apiserver's release. ``kubectl``: the client's release, if there is one to judge.

    On a node that runs a kube-apiserver, the kubelet and the controllers talk to that one (RKE1 and
    RKE2 point them at 127.0.0.1:6443, as kubeadm's ControlPlaneKubeletLocalMode does): they are judged
    against it. A kubelet elsewhere may reach any of them (a load balancer), so the policy's narrowing
    applies: never newer than the oldest, at most the allowed minors behind the newest.
    """
    if not apiservers:
        return [_row("kube-apiserver instances", "cluster", False, "no kube-apiserver version is known",
                     "check that the control-plane nodes are registered as Nodes")]
    oldest, newest = min(apiservers.values()), max(apiservers.values())
    spread = newest.minor - oldest.minor
    rows = [_row("kube-apiserver instances within one minor", ", ".join(apiservers), spread <= 1,
                 f"from {oldest} to {newest}" if spread else f"all at {oldest.line}",
                 "upgrade the older control-plane nodes to the newer minor before anything else")]
    for node, v in kubelets.items():
        low, high = (apiservers[node], apiservers[node]) if node in apiservers else (oldest, newest)
        behind, allowed = high.minor - v.minor, kubelet_skew(v)
        if v.minor > low.minor:
            rows.append(_row("kubelet not newer than kube-apiserver", f"kubelet {node}", False,
                             f"{v} is newer than the kube-apiserver at {low}" + (" on the same node" if node in apiservers else ""),
                             f"upgrade the control plane to {v.line} first; a kubelet is upgraded after the API servers"))
        else:
            rows.append(_row(f"kubelet at most {allowed} minors older than kube-apiserver", f"kubelet {node}", behind <= allowed,
                             f"{v}: {behind} minor(s) behind the newest kube-apiserver ({high})" if behind else f"{v}",
                             f"upgrade {node} towards {high.line}, one minor at a time, before the control plane goes further"))
    for node, v in (controllers if controllers is not None else dict(apiservers)).items():
        talks_to = apiservers.get(node, oldest)
        lag = talks_to.minor - v.minor
        rows.append(_row("kube-controller-manager and kube-scheduler not newer, at most one minor older", f"controllers {node}",
                         0 <= lag <= 1, f"{v} with its kube-apiserver at {talks_to}",
                         "upgrade the node's kube-apiserver first, then its controllers, in one step of the same release"))
    if kubectl is not None:  # the engineer's client, not part of the cluster: a warning, never a blocker
        far = sorted({str(a) for a in apiservers.values() if abs(a.minor - kubectl.minor) > 1})
        rows.append(_row("kubectl within one minor of kube-apiserver", "kubectl", not far,
                         f"{kubectl}" + (f"; more than one minor from {', '.join(far)}" if far else ""),
                         f"use a kubectl of {newest.line} (or one minor either side)") | ({"status": "warn"} if far else {}))
    return rows


def local_kubectl() -> Version | None:
    """The release of the kubectl on this machine's PATH (the one an engineer uses next to the runbook), or None."""
    import json
    import shutil
    import subprocess

    found = shutil.which("kubectl")
    if not found:
        return None
    try:
        done = subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=20)
        return Version.parse(json.loads(done.stdout)["clientVersion"]["gitVersion"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def failing(rows: Sequence[dict]) -> list[str]:
    """The rows that break the policy (``fail``; a ``warn`` is said in the table, and blocks nothing)."""
    return [f"{r['rule']}: {r['component']}: {r['detail']}; {r['fix']}" for r in rows if r["status"] == "fail"]


def cluster_skew(running: Running, kubectl: Version | None = None) -> list[dict]:
    """The skew rows of the running cluster: its control-plane nodes' releases and the API's ``/version`` are its kube-apiservers."""
    apiservers = {n.name: n.version for n in running.nodes if n.control_plane}
    if running.api is not None:
        apiservers.setdefault("/version", running.api)
    controllers = {n.name: n.version for n in running.nodes if n.control_plane}
    return skew(apiservers, {n.name: n.version for n in running.nodes}, controllers, kubectl)


# -- the path --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PathStep:
    """One minor: its release, the control-plane nodes (one at a time) and the worker batches still below it."""

    release: Release
    servers: tuple[str, ...]
    batches: tuple[tuple[str, ...], ...]

    @property
    def nodes(self) -> list[str]:
        return [*self.servers, *(n for b in self.batches for n in b)]


def path(nodes: Sequence[NodeVersion], target: Release, on_the_way: Sequence[Release], batch: int = 1) -> list[PathStep]:
    """The steps from the running nodes to ``target``, one per minor, each with the nodes still below its release.

    Raises :class:`UpgradeError` for a downgrade and for a minor on the way that ``on_the_way`` does
    not name. Nodes keep their order (inventory order) within a step.
    """
    if not nodes:
        raise UpgradeError("the cluster has no nodes: nothing to upgrade from")
    majors = {n.version.major for n in nodes} | {target.version.major}
    if majors != {1}:
        raise UpgradeError(f"only Kubernetes 1.x is known to this planner (found major {', '.join(map(str, sorted(majors)))})")
    newer = [n for n in nodes if n.version > target.version]
    if newer:
        raise UpgradeError(
            f"{target.field} {target.version} is older than what runs ({', '.join(f'{n.name} {n.version}' for n in newer)}): "
            f"Kubernetes is not downgraded. Set {target.field} to {max(n.version for n in newer)} (or newer), or restore the "
            "etcd snapshot taken before the upgrade with the previous release (the incident runbook)")
    by_minor = {r.version.minor: r for r in on_the_way}
    low = min(n.version.minor for n in nodes)
    steps = []
    for minor in range(low, target.version.minor + 1):
        if minor == target.version.minor:
            release = target
        elif minor == low:
            continue  # the oldest nodes are on this minor already: the way up starts at the next one
        elif minor in by_minor:
            release = by_minor[minor]
        else:
            oldest = [n.name for n in nodes if n.version.minor < minor]
            raise UpgradeError(
                f"no v1.{minor} release to go through: the path from {min(n.version for n in nodes)} ({', '.join(oldest)}) to "
                f"{target.version} goes through every minor, and kubernetes.upgrade_path names none of v1.{minor}. Add the v1.{minor} "
                f"release you will install, like `- {{version: v1.{minor}.N, artifacts: <its RKE2 artifact folder>}}` "
                f"(RKE1: `- v1.{minor}.N`)")
        behind = [n for n in nodes if n.version < release.version]
        if not behind:
            continue
        workers = [n.name for n in behind if not n.server]
        # the control plane first: an etcd-only server's kubelet reaches the API servers like a worker's
        servers = [n.name for n in behind if n.control_plane] + [n.name for n in behind if n.server and not n.control_plane]
        steps.append(PathStep(release, tuple(servers),
                              tuple(tuple(workers[i:i + batch]) for i in range(0, len(workers), batch))))
    return steps


def simulate(nodes: Sequence[NodeVersion], steps: Sequence[PathStep]) -> list[str]:
    """Apply ``steps`` node by node and judge every state on the way: what would leave the skew policy or skip a minor.

    An empty list means every intermediate state is within the policy and no node jumps over a minor.
    """
    now = {n.name: n.version for n in nodes}
    control_plane = [n.name for n in nodes if n.control_plane]
    problems: list[str] = []
    for step in steps:
        for group in [(s,) for s in step.servers] + list(step.batches):
            for name in group:
                before, after = now[name], step.release.version
                if after.minor - before.minor > 1:
                    problems.append(f"{name} would go from {before} to {after}, skipping v1.{before.minor + 1}")
                if after < before:
                    problems.append(f"{name} would go back from {before} to {after}")
                now[name] = after
            rows = skew({n: now[n] for n in control_plane}, dict(now))
            problems += [f"after {', '.join(group)} to {step.release.version}: {p}" for p in failing(rows)]
            if problems:
                return problems
    return problems


def path_rows(running: Running, steps: Sequence[PathStep], distribution: str) -> list[dict]:
    """The path as a table: one row per minor step, what it upgrades and from what."""
    now = {n.name: n.version for n in running.nodes}
    rows = []
    for i, s in enumerate(steps, 1):
        frm = sorted({str(now[n]) for n in s.nodes})
        rows.append({"step": i, "release": str(s.release.version), "named by": s.release.field,
                     "from": ", ".join(frm), "control plane, one at a time": ", ".join(s.servers) or "-",
                     "workers, in batches": " | ".join(", ".join(b) for b in s.batches) or "-",
                     **({"artifacts": s.release.artifacts or "(not set)"} if distribution == "rke2" else {})})
        for n in s.nodes:
            now[n] = s.release.version
    return rows


# -- the plan --------------------------------------------------------------------------------------

@dataclass
class Group:
    """Steps carried out together: one node (control plane), a batch of workers, or one cluster-wide action."""

    kind: str  # snapshot | node | batch | uncordon | rke1
    release: Release | None
    steps: list[Step]


@dataclass
class UpgradePlan:
    target: Version
    running: Running | None = None
    path: list[PathStep] = field(default_factory=list)
    skew: list[dict] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)  # str(release) -> install_rke2.Artifacts
    snapshot: str = ""  # the snapshot's name

    @property
    def steps(self) -> list[Step]:
        """What the confirmation shows: every step in order; one blocked step saying why, when the plan is blocked."""
        if self.blockers:
            return [Step("cluster", "upgrade", "nothing until the blockers are fixed", None, blocked="; ".join(self.blockers))]
        return [s for g in self.groups for s in g.steps]

    def path_table(self, distribution: str) -> list[dict]:
        return path_rows(self.running, self.path, distribution) if self.running else []


def where(params) -> str:
    return f"cluster {params.kubernetes.cluster_name}"


def plan(params, kubeconfig: Path, blockers: Sequence[str] = (), kubectl: Version | None = None,
         now: dt.datetime | None = None) -> UpgradePlan:
    """The upgrade from what runs to ``kubernetes.version``: path, skew, and the steps; what blocks it instead.

    ``blockers`` (lint errors) block everything. Nothing here changes anything.
    """
    target, on_the_way = releases(params)
    out = UpgradePlan(target.version, blockers=list(blockers))
    if out.blockers:
        return out
    if not kubeconfig.exists():
        out.blockers.append(f"no kubeconfig at {kubeconfig}: the cluster has not been brought up (03-kubernetes-cluster), "
                            "so there is nothing to upgrade")
        return out
    try:
        out.running = read_running(params, kubeconfig)
    except RunbookError as e:
        out.blockers.append(str(e))
        return out
    running = out.running
    out.blockers += [f"{n}: a Node the parameters do not name; add it to inventory.hosts or remove it from the cluster "
                     "(10-capacity-fold-in) before upgrading" for n in running.unknown]
    out.blockers += [f"{n}: in the parameters but not a Node of the cluster; join it (03-kubernetes-cluster) or remove it from "
                     "inventory.hosts before upgrading" for n in running.missing]
    out.blockers += [f"{n.name}: not Ready; an upgrade starts from a healthy cluster: bring {n.name} back (see `systemctl status "
                     f"rke2-*` or the node's kubelet) and run this runbook again" for n in running.nodes if not n.ready]
    out.skew = cluster_skew(running, kubectl)
    out.blockers += [f"version skew now ({SKEW_POLICY}): {p}" for p in failing(out.skew)]
    try:
        out.path = path(running.nodes, target, on_the_way, params.kubernetes.upgrade_worker_batch)
    except UpgradeError as e:
        out.blockers.append(str(e))
        return out
    out.blockers += [f"refused: {p}" for p in simulate(running.nodes, out.path)]
    if params.kubernetes.distribution == "rke1" and state.lost_state(params):
        out.blockers.append(state.lost_state(params))
    if params.kubernetes.distribution == "rke2":
        out.blockers += _load_artifacts(params, out)
    if out.blockers:
        return out
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    cordoned = [n for n in running.nodes if n.cordoned_for and n.name not in {m for s in out.path for m in s.nodes}]
    if out.path:
        out.snapshot = f"{SNAPSHOT_PREFIX}-{target.version}" + (f"-{stamp}" if params.kubernetes.distribution == "rke1" else "")
        out.groups.append(_snapshot_group(params, out.snapshot))
    if params.kubernetes.distribution == "rke1":
        out.groups += _rke1_groups(params, out.path)
    else:
        out.groups += _rke2_groups(params, running, out.path, out.artifacts)
    for n in cordoned:  # a run that stopped after this node's upgrade: it is at its release, only the uncordon is left
        out.groups.append(Group("uncordon", None, [Step(n.name, "uncordon", f"uncordon {n.name} (cordoned by this runbook for "
                                                                          f"{n.cordoned_for}; it runs {n.version} and is Ready)",
                                                        "uncordon", undo=f"kubectl cordon {n.name}")]))
    return out


def _load_artifacts(params, out: UpgradePlan) -> list[str]:
    """RKE2: every release of the path has its artifact folder, checked here (checksums), and no two releases share a tarball."""
    from . import install_rke2

    problems = []
    seen: dict[str, str] = {}
    for step in out.path:
        r = step.release
        if not r.artifacts:
            problems.append(f"{r.artifacts_field} is not set: RKE2 {r.version} is installed from its air-gapped artifact folder "
                            f"({install_rke2.TARBALL}, {install_rke2.SUMS}, {install_rke2.INSTALLER} of that release); "
                            + ("set kubernetes.artifacts" if r.field == "kubernetes.version" else
                               f"write {r.field} as {{version: {r.version}, artifacts: <folder>}}"))
            continue
        try:
            a = install_rke2.load_artifacts(params, r.artifacts, r.artifacts_field)
        except RunbookError as e:
            problems.append(str(e))
            continue
        if a.tarball_sha256 in seen:
            problems.append(f"{r.artifacts_field} holds the same tarball as the folder named for {seen[a.tarball_sha256]}: one of the two "
                            f"is not {r.version}'s; copy each release's files into its own folder")
        seen[a.tarball_sha256] = str(r.version)
        out.artifacts[str(r.version)] = a
    return problems


def _snapshot_group(params, name: str) -> Group:
    from .spec import spec_from_params

    k = params.kubernetes
    if k.distribution == "rke1":
        from .bringup import rke_binary

        config = state.state_dir(params) / state.CLUSTER_YML
        return Group("snapshot", None, [Step(where(params), "etcd snapshot", f"etcd snapshot {name} on every etcd node, before "
                                                                              "anything changes",
                                             f"{shlex.quote(rke_binary(params))} etcd snapshot-save --config {shlex.quote(str(config))} "
                                             f"--name {name}",
                                             undo_note="a snapshot changes nothing; it is the way back: rke etcd snapshot-restore "
                                                       f"--name {name} with the previous cluster.yml")])
    first = next(n for n in spec_from_params(params).nodes if n.has("etcd"))
    return Group("snapshot", None, [Step(first.name, "etcd snapshot", f"etcd snapshot {name} on {first.name}, before anything "
                                                                      "changes", f"rke2 etcd-snapshot save --name {name}",
                                         undo_note="a snapshot changes nothing; it is the way back: on the servers, the previous "
                                                   "release and `rke2 server --cluster-reset --cluster-reset-restore-path=<it>`")])


def _rke1_groups(params, steps: Sequence[PathStep]) -> list[Group]:
    from .bringup import rke_binary
    from .rke1 import render_cluster_yml

    path = state.state_dir(params) / state.CLUSTER_YML
    current = path.read_text() if path.exists() else ""
    rke = rke_binary(params)
    out = []
    for s in steps:
        text = render_cluster_yml(params, version=str(s.release.version))
        nodes = len(s.nodes)
        out.append(Group("rke1", s.release, [
            Step(where(params), "cluster.yml", f"kubernetes_version {s.release.version} in {path}", f"write {path}",
                 undo_note="the previous file is kept as cluster.yml.runbook-bak", diff=file_diff(str(path), current or None, text)),
            Step(where(params), "rke up", f"`rke up` upgrades {nodes} node(s) to {s.release.version}: control plane one at a time, "
                                          f"workers {params.kubernetes.upgrade_worker_batch} at a time, drained (upgrade_strategy)",
                 f"{shlex.quote(rke)} up --config {shlex.quote(str(path))}",
                 undo_note="not undone step by step: restore the pre-upgrade etcd snapshot with the previous cluster.yml")]))
        current = text
    return out


def _rke2_groups(params, running: Running, steps: Sequence[PathStep], artifacts: dict) -> list[Group]:
    from . import install_rke2

    info = {n.name: n for n in running.nodes}
    out = []
    for s in steps:
        v = s.release.version
        a = artifacts[str(v)]
        for group, kind in [((name,), "node") for name in s.servers] + [(b, "batch") for b in s.batches]:
            mine = []
            for name in group:
                n = info[name]
                service = "rke2-server" if n.server else "rke2-agent"
                if n.worker:
                    timeout = params.kubernetes.drain_timeout_seconds
                    if n.unschedulable and n.cordoned_for == str(v):  # a run that stopped cordoned it: not cordoned again
                        change = (f"drain {name} again: cordoned for {v} by a run that stopped (it stays cordoned), "
                                  f"evict what is left on it (timeout {timeout} s)")
                    else:
                        change = (f"cordon {name} and evict its pods (timeout {timeout} s)"
                                  + (" (already cordoned: it stays cordoned)" if n.unschedulable and not n.cordoned_for else ""))
                    mine.append(Step(name, "cordon and drain", change, "drain", undo=f"kubectl uncordon {name}"))
                env = f"INSTALL_RKE2_ARTIFACT_PATH={install_rke2.REMOTE_ARTIFACTS}" + ("" if n.server else " INSTALL_RKE2_TYPE=agent")
                mine += [
                    Step(name, "rke2 artifacts", f"copy RKE2 {v}'s artifacts ({a.folder.name}) to {install_rke2.REMOTE_ARTIFACTS}",
                         "upload", undo_note="the previous release's files are replaced; copy them again to go back"),
                    Step(name, "rke2 install", f"install RKE2 {v} ({'server' if n.server else 'agent'}) from the artifacts, checksums verified",
                         f"{env} sh {install_rke2.REMOTE_ARTIFACTS}/{install_rke2.INSTALLER} && mkdir -p "
                         f"{install_rke2.INSTALLED.rsplit('/', 1)[0]} && echo {a.tarball_sha256} > {install_rke2.INSTALLED}",
                         undo_note=f"install the previous release's artifacts the same way and restart {service}"),
                    Step(name, "rke2 restart", f"systemctl restart {service}, then wait for {name} Ready at {v}",
                         f"systemctl restart {service}", undo_note=f"after reinstalling the previous release: systemctl restart {service}"),
                ]
                if n.worker and not (n.unschedulable and not n.cordoned_for):
                    mine.append(Step(name, "uncordon", f"uncordon {name} once it is Ready at {v}", "uncordon", undo=f"kubectl cordon {name}"))
            out.append(Group(kind, s.release, mine))
    return out


# -- applying --------------------------------------------------------------------------------------

@dataclass
class UpgradeResult:
    applied: list[str] = field(default_factory=list)  # one line per group carried out
    verified: list[dict] = field(default_factory=list)  # the checks between steps (and after the last)
    snapshot: str = ""  # the snapshot taken, as the distribution names it
    error: str = ""
    resume: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def apply(params, fleet, plan: UpgradePlan, kubeconfig: Path, on_change: Callable[[Step], object] | None = None,
          on_line: Callable[[str], object] = print, wait: float = 300.0) -> UpgradeResult:
    """Carry out the plan group by group; verify after each release; the first failure stops everything, with a resume point."""
    from . import verify

    out = UpgradeResult()
    if plan.blockers:
        out.error = "nothing was changed: the plan is blocked (" + "; ".join(plan.blockers) + ")"
        return out
    hosts = {h.name: h for h in params.hosts}
    unreachable = _unreachable(fleet, plan, hosts)
    if unreachable:
        out.error = ("nothing was changed: " + "; ".join(unreachable) + ". The upgrade logs in to every node it upgrades: a node "
                     "is cordoned and drained only when it can then be installed on. Start the host or fix its SSH (a changed host "
                     "key: check why, then pin the new one in ssh.known_hosts), then run this runbook again")
        return _stopped(params, plan, out, kubeconfig, ", ".join(u.split(":")[0] for u in unreachable), 0)
    client, api = verify.api_client(kubeconfig, params)
    pending: Release | None = None  # a release whose nodes are done and that is not verified yet
    for i, group in enumerate(plan.groups):
        if pending is not None and group.release != pending:
            if not _verified(params, fleet, kubeconfig, pending, out, on_line):
                return _stopped(params, plan, out, kubeconfig, f"the verification at {pending.version}", i)
            pending = None
        try:
            if group.kind == "snapshot":
                error = _snapshot(params, fleet, plan, group.steps[0], out, on_line)
                if not error and on_change:  # the record names the snapshot taken (each run that changes something takes its own)
                    step = group.steps[0]
                    on_change(dataclasses.replace(step, change=step.change.replace(plan.snapshot, out.snapshot, 1))
                              if out.snapshot and out.snapshot != plan.snapshot else step)
            elif group.kind == "rke1":
                error = _rke1(params, group, on_line, on_change)
            else:
                error = _nodes(params, fleet, group, plan, kubeconfig, client, api, hosts, on_change, on_line, wait)
        except Exception as e:  # an API or SSH failure is this group's: stop with it named
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if error:
            out.error = error
            return _stopped(params, plan, out, kubeconfig, ", ".join(dict.fromkeys(s.host for s in group.steps)), i)
        out.applied.append(_summary(group))
        pending = group.release or pending
    if pending is not None and not _verified(params, fleet, kubeconfig, pending, out, on_line):
        return _stopped(params, plan, out, kubeconfig, f"the verification at {pending.version}", len(plan.groups))
    return out


def _unreachable(fleet, plan: UpgradePlan, hosts: dict) -> list[str]:
    """Every host the plan logs in to (RKE2: the snapshot's etcd node and each node it upgrades), tried once before anything
    changes: a host stopped, cut off or whose host key changed is named here, not after its node was cordoned and drained."""
    names = list(dict.fromkeys(s.host for g in plan.groups if g.kind in ("snapshot", "node", "batch") for s in g.steps if s.host in hosts))
    if not names:
        return []
    tried = fleet.run("true", hosts=[hosts[n] for n in names], desc="upgrade: the nodes answer")
    return [f"{name}: cannot log in ({r.error or r.exit_code})" if not r.error.startswith(f"{name}:") else r.error
            for name, r in tried.items() if not r.ok]


def _summary(group: Group) -> str:
    hosts = ", ".join(dict.fromkeys(s.host for s in group.steps))
    what = {"snapshot": "etcd snapshot", "rke1": f"rke up to {group.release.version if group.release else ''}",
            "uncordon": "uncordoned"}.get(group.kind, f"upgraded to {group.release.version if group.release else ''}")
    return f"{hosts}: {what}"


def _snapshot(params, fleet, plan: UpgradePlan, step: Step, out: UpgradeResult, on_line) -> str:
    """Take the snapshot and find it listed; an error text, or '' (``out.snapshot`` names it)."""
    if params.kubernetes.distribution == "rke1":
        from .bringup import run_streaming

        lines: list[str] = []
        code = run_streaming(shlex.split(step.command), state.state_dir(params), on_line, lines)
        if code != 0:
            return f"etcd snapshot: `rke etcd snapshot-save` exited {code}: {lines[-1] if lines else ''}; nothing was upgraded"
        out.snapshot = plan.snapshot
        return ""
    host = next(h for h in params.hosts if h.name == step.host)
    r = fleet.run_on(host, step.command)
    if not r.ok:
        return (f"etcd snapshot on {host.name} failed ({r.error or r.exit_code}): {(r.stderr or r.stdout).strip()[-300:]}; "
                "nothing was upgraded")
    listed = fleet.run_on(host, "rke2 etcd-snapshot ls")
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()] if listed.ok else []
    found = [n for n in names if n.startswith(f"{plan.snapshot}-")]
    if not found:
        return f"etcd snapshot: `rke2 etcd-snapshot ls` on {host.name} lists no {plan.snapshot}-*; nothing was upgraded"
    out.snapshot = found[-1]
    on_line(f"{host.name}: etcd snapshot {out.snapshot} saved")
    return ""


def _rke1(params, group: Group, on_line, on_change) -> str:
    from .bringup import apply_rke1

    done = apply_rke1(params, group.steps, on_line, on_change, version=str(group.release.version))
    return done.error


def _nodes(params, fleet, group: Group, plan: UpgradePlan, kubeconfig: Path, client, api, hosts: dict, on_change, on_line,
           wait: float) -> str:
    """A control-plane node, or a batch of workers in parallel: each node's steps in order, its first failure stops it."""
    from . import drain as drains
    from . import install_rke2

    release = group.release

    def execute(host, step: Step) -> HostResult:
        name = host.name
        try:
            if step.command == "drain":
                v1 = client.CoreV1Api(api)
                if drains.cordon(api, name):
                    v1.patch_node(name, {"metadata": {"annotations": {CORDONED: str(release.version)}}})
                    on_line(f"{name}: cordoned (for {release.version})")
                result = drains.drain(api, name, params.kubernetes.drain_timeout_seconds, on_line=on_line,
                                      delete_emptydir_data=params.kubernetes.drain_delete_emptydir_data)
                if not result.ok:
                    why = "; ".join(f"{b['pod']}: {b['reason']} (fix: {b['fix']})" for b in result.blockers)
                    return HostResult(name, False, exit_code=1, error=f"the drain of {name} stopped ({len(result.blockers)} pod(s) "
                                                                      f"remain; the node stays cordoned): {why}")
                return HostResult(name, True, exit_code=0)
            if step.command == "uncordon":
                return _uncordon(client, api, name, on_line)
            if step.command == "upload":
                folder = plan.artifacts[str(release.version)].folder  # its checksums were verified when planned
                fleet.run_on(host, f"mkdir -p {install_rke2.REMOTE_ARTIFACTS} && chmod 700 {install_rke2.REMOTE_ARTIFACTS}").check()
                for f in (install_rke2.TARBALL, install_rke2.SUMS, install_rke2.INSTALLER):
                    fleet.put(host, folder / f, f"{install_rke2.REMOTE_ARTIFACTS}/{f}", 0o600)
                return HostResult(name, True, exit_code=0)
            r = fleet.run_on(host, step.command)
            if r.ok and step.operation == "rke2 restart":
                why = wait_upgraded(fleet, host, kubeconfig, release.version, wait)
                if why:
                    return HostResult(name, False, exit_code=1, error=why)
                on_line(f"{name}: Ready at {release.version}")
            return r
        except Exception as e:  # an SSH, SFTP or API failure is this node's, said with its name
            return HostResult(name, False, exit_code=1, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")

    results = phase_steps.apply(fleet, group.steps, on_change=on_change, execute=execute, desc=f"upgrade to {release.version}"
                                if release else "upgrade")
    problems = [r.error for r in results.values() if not r.ok]
    return "; ".join(problems)


def _uncordon(client, api, name: str, on_line) -> HostResult:
    """Uncordon a node this runbook cordoned (the annotation says so), and drop the annotation."""
    from . import drain as drains

    v1 = client.CoreV1Api(api)
    node = v1.read_node(name)
    if CORDONED in (node.metadata.annotations or {}):
        drains.uncordon(api, name)
        v1.patch_node(name, {"metadata": {"annotations": {CORDONED: None}}})
        on_line(f"{name}: uncordoned")
    return HostResult(name, True, exit_code=0)


def wait_upgraded(fleet, host, kubeconfig: Path, version: Version, timeout: float) -> str:
    """Until the node is back at ``version``: its service active, its kubelet's lease renewed after the restart (later than the
    first renewal the API shows once the restart returned: the old kubelet is gone by then), its Node Ready and reporting
    ``version``, and on a control-plane node its own API server answering with ``version``. '' when it is; else why not."""
    from . import verify

    server = bool({"etcd", "controlplane"} & set(host.roles))
    service = "rke2-server" if server else "rke2-agent"
    deadline = time.monotonic() + timeout
    first: str | None = None
    last = "the service did not become active"
    while time.monotonic() < deadline:
        if fleet.run_on(host, f"systemctl is-active -q {service}").ok:
            try:
                renewed, last = _upgraded(verify, kubeconfig, host, version, first)
                first = renewed if first is None else first
                if not last:
                    return ""
            except Exception as e:  # the API is restarting: keep waiting, remember why
                last = verify.api_failure(e)
        time.sleep(2)
    return (f"{host.name} not back at {version} within {timeout:g} s ({last}); see `systemctl status {service}` and "
            f"/var/log/pods on {host.name}; are the artifacts those of {version}?")


def _upgraded(verify, kubeconfig: Path, host, version: Version, first: str | None) -> tuple[str | None, str]:
    """The lease's last renewal (None before the API server answers), and '' when the node is back at ``version`` or what is missing."""
    client, api = verify.api_client(kubeconfig)
    try:
        if "controlplane" in host.roles:
            api.configuration.host = f"https://{host.address}:6443"  # this server's own API server (its address is in the certificate)
            own = Version.parse(client.VersionApi(api).get_code().git_version)
            if own != version:
                return None, f"its API server reports {own}"
        node = client.CoreV1Api(api).read_node(host.name)
        renewed = str(client.CoordinationV1Api(api).read_namespaced_lease(host.name, "kube-node-lease").spec.renew_time or "")
    finally:
        api.close()
    have = Version.parse(node.status.node_info.kubelet_version)
    ready = {c.type: c.status for c in (node.status.conditions or [])}.get("Ready")
    if first is None or renewed == first:
        return renewed, f"its kubelet's lease not renewed since the restart (last {renewed or 'never'}); the Node reports {have}, Ready={ready}"
    if have != version or ready != "True":
        return renewed, f"the Node reports {have}, Ready={ready}"
    return renewed, ""


def release_rows(params, kubeconfig: Path, version: Version) -> list[dict]:
    """Every cluster node at ``version``, read through the API (the health rows come from :func:`verify.verify_api`)."""
    from . import verify

    try:
        client, api = verify.api_client(kubeconfig, params)
        nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
    except Exception as e:  # noqa: BLE001 - a failing row, never a crash
        return [verify.row("node version", "cluster", False, f"the API did not answer: {verify.api_failure(e)}")]
    rows = []
    for h in (h for h in params.hosts if h.in_cluster):
        n = nodes.get(h.name)
        have = n.status.node_info.kubelet_version if n is not None else "no Node"
        rows.append(verify.row("node version", h.name, n is not None and Version.parse(have) == version, f"{have}; expected {version}"))
    return rows


def _verified(params, fleet, kubeconfig: Path, release: Release, out: UpgradeResult, on_line) -> bool:
    """The cluster at ``release``, given ``kubernetes.settle_seconds`` to settle (pods evicted by a drain are being
    scheduled again, a restarted component is catching up); the last answer is kept."""
    from . import verify

    rows = verify.settled(lambda: [dict(r, after=str(release.version)) for r in
                                   verify.verify_api(params, kubeconfig, str(release.version))
                                   + release_rows(params, kubeconfig, release.version) + verify.verify_etcd(params, fleet)],
                          params.kubernetes.settle_seconds, on_line)
    bad = verify.failing(rows)
    out.verified += rows
    on_line(f"verified at {release.version}: {len(rows) - len(bad)} of {len(rows)} checks pass")
    if bad:
        out.error = f"the cluster does not verify at {release.version}: " + "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return not bad


def _stopped(params, plan: UpgradePlan, out: UpgradeResult, kubeconfig: Path, at: str, index: int) -> UpgradeResult:
    """The resume point: where it stopped, what is done, what runs now, and how to go on."""
    done = ", ".join(out.applied) or "nothing"
    try:
        now = read_running(params, kubeconfig)
        runs = ", ".join(f"{n.name} {n.version}" + (" (cordoned)" if n.unschedulable else "") for n in now.nodes)
    except RunbookError:
        runs = "unknown (the API does not answer)"
    left = len(plan.groups) - index
    out.resume = (f"Stopped at {at} (group {index + 1} of {len(plan.groups)}; {left} left). Done: {done}. Running now: {runs}. "
                  f"{'The snapshot taken first is ' + out.snapshot + '. ' if out.snapshot else ''}"
                  "Fix the cause above, then run this runbook again: it reads the running versions and plans only what is left "
                  "(a node it cordoned is uncordoned once upgraded).")
    return out


def verdict(plan: UpgradePlan, outcome_status: str, result: UpgradeResult | None, failed_checks: Sequence[str]) -> tuple[str, list[str]]:
    """*not ready* (blocked), *planned*, *cancelled*, *nothing to do* (already at the target and verified), *done* or *incomplete*."""
    problems = [*plan.blockers]
    if result is not None and not result.ok and not plan.blockers:
        problems += [result.error, result.resume]
    problems += list(failed_checks)
    if plan.blockers:
        return "not ready", problems
    if outcome_status in ("planned", "cancelled"):
        return outcome_status, problems
    if problems:
        return "incomplete", problems
    return ("nothing to do" if outcome_status == "empty" else "done"), problems


# -- for the bring-up: a version change is an upgrade --------------------------------------------

def version_change(params) -> str | None:
    """Why the bring-up (runbook 03) must not apply: the running cluster is at another release than ``kubernetes.version``.

    None when there is no cluster yet, when it does not answer (the bring-up's own checks say so) or
    when it runs that release. A bring-up would restart every node at once with the new release;
    runbook 11 upgrades one minor at a time, node by node.
    """
    kubeconfig = state.kubeconfig_path(params)
    if not kubeconfig.exists():
        return None
    try:
        running = read_running(params, kubeconfig)
    except RunbookError:
        return None
    target = Version.parse(params.kubernetes.version)
    other = sorted({str(n.version) for n in running.nodes if n.version != target})
    if not other and (running.api is None or running.api == target):
        return None
    return (f"the cluster runs {', '.join(other) or running.api} and kubernetes.version is {target}: changing the release "
            "is an upgrade, one minor at a time with a snapshot first: run 11-upgrade (this runbook would restart every node at once)")

