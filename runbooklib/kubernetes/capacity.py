"""Capacity fold-in: workers joining and leaving a running cluster, and what that does to its capacity.

The parameter file says which hosts are cluster nodes; the running cluster says which Nodes exist.
:func:`membership` is the difference, :func:`plan` the steps that close it, in an order that never
lowers capacity first:

1. the new workers join (RKE1: ``cluster.yml`` with them added and the leaving nodes still in,
   then ``rke up --update-only``; RKE2: the air-gapped install of an agent, as the bring-up does);
2. each leaving node is cordoned and drained (:mod:`.drain`: evictions that honour
   PodDisruptionBudgets, with a timeout and the list of what blocks);
3. the leaving nodes go (RKE1: ``cluster.yml`` without them, ``rke up --update-only``, which deletes
   the Node and cleans the host; RKE2: ``rke2-uninstall.sh`` on the host, then the Node deleted).

Only workers come and go here. Adding or removing an etcd or control-plane node changes the
control plane's quorum and certificates: that is a bring-up change (``03-kubernetes-cluster``),
and this runbook refuses it, saying so.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import RunbookError
from ..phase.steps import Step, file_diff
from . import state

CONTROL = ("etcd", "controlplane")
RKE2_UNINSTALL = "/usr/local/bin/rke2-uninstall.sh"


@dataclass(frozen=True)
class NodeInfo:
    """A Node as the API shows it, with its allocatable resources."""

    name: str
    address: str
    roles: tuple[str, ...]
    ready: bool
    unschedulable: bool
    cpu: float  # cores
    memory_gib: float
    pods: int
    kubelet: str

    def row(self) -> dict:
        return {"node": self.name, "roles": ",".join(self.roles) or "none", "ready": "yes" if self.ready else "NO",
                "schedulable": "no (cordoned)" if self.unschedulable else "yes", "CPU (cores)": round(self.cpu, 2),
                "memory (GiB)": round(self.memory_gib, 2), "pods": self.pods, "kubelet": self.kubelet}


_SUFFIX = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}


def quantity(text: str | None) -> float:
    """A Kubernetes resource quantity (``1500m``, ``4Gi``, ``2``, ``1e3``) as a number of base units."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[kMGTPEm]?)", (text or "0").strip())
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def node_info(node, distribution: str) -> NodeInfo:
    from .verify import _taint, node_roles

    labels = node.metadata.labels or {}
    taints = {_taint(f"{t.key}={t.value or ''}:{t.effect}") for t in node.spec.taints or []}
    alloc = node.status.allocatable or {}
    ready = next((c.status == "True" for c in node.status.conditions or [] if c.type == "Ready"), False)
    address = next((a.address for a in node.status.addresses or [] if a.type == "InternalIP"), "")
    return NodeInfo(node.metadata.name, address, tuple(node_roles(distribution, labels, taints)), ready,
                    bool(node.spec.unschedulable), quantity(alloc.get("cpu")), quantity(alloc.get("memory")) / 2**30,
                    int(quantity(alloc.get("pods"))), node.status.node_info.kubelet_version if node.status.node_info else "")


def connect(params):
    """The API client of the cluster the state folder's kubeconfig reaches; a clear error when there is none yet."""
    from .verify import api_client

    kubeconfig = state.kubeconfig_path(params)
    if not kubeconfig.exists():
        raise RunbookError(f"{params.source}: no kubeconfig at {kubeconfig} (kubernetes.state_dir): bring the cluster up with "
                           "03-kubernetes-cluster first, or point kubernetes.state_dir at the folder that has it")
    return api_client(kubeconfig, params)[1]


def running_nodes(api, distribution: str) -> list[NodeInfo]:
    from kubernetes import client

    return sorted((node_info(n, distribution) for n in client.CoreV1Api(api).list_node().items), key=lambda n: n.name)


@dataclass
class Membership:
    """The difference between the running cluster and the parameters."""

    add: list[str] = field(default_factory=list)  # hosts of the parameters with no Node
    remove: list[NodeInfo] = field(default_factory=list)  # Nodes the parameters no longer name
    keep: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # changes this runbook does not make, each with why

    def rows(self, params) -> list[dict]:
        hosts = {h.name: h for h in params.hosts}
        out = [{"node": n, "change": "join as worker", "roles": ",".join(r for r in hosts[n].roles)} for n in self.add]
        out += [{"node": n.name, "change": "leave (cordon, drain, remove)", "roles": ",".join(n.roles)} for n in self.remove]
        out += [{"node": n, "change": "stays", "roles": ",".join(hosts[n].roles)} for n in self.keep]
        return out


def membership(params, nodes: Sequence[NodeInfo]) -> Membership:
    """Which workers join, which leave; a joining or leaving etcd/control-plane node is refused with why."""
    want = {h.name: h for h in params.hosts if h.in_cluster}
    have = {n.name: n for n in nodes}
    out = Membership()
    for name, h in want.items():
        if name in have:
            out.keep.append(name)
            continue
        control = [r for r in CONTROL if r in h.roles]
        if control:
            out.refused.append(f"{name} would join with role {'/'.join(control)}: adding etcd or control-plane nodes changes the "
                               "control plane (quorum, certificates); do it with 03-kubernetes-cluster, not a fold-in")
        else:
            out.add.append(name)
    for name, n in have.items():
        if name in want:
            continue
        control = [r for r in CONTROL if r in n.roles]
        if control:
            out.refused.append(f"{name} ({'/'.join(control)}) is not in the parameters: removing an etcd or control-plane node "
                               "changes the control plane's quorum; this runbook only removes workers. Put it back in the "
                               "parameters, or replace it with a procedure of its own")
        else:
            out.remove.append(n)
    return out


# -- the plan ----------------------------------------------------------------------------------

@dataclass
class FoldIn:
    """A fold-in plan: the steps, and what the RKE1 steps write."""

    steps: list[Step]
    files: dict[str, str] = field(default_factory=dict)  # step operation -> cluster.yml content


def _intermediate_spec(params, leaving: Sequence[str]):
    """RKE1: the cluster with the new nodes and the leaving ones still in (read back from the current cluster.yml)."""
    from .rke1 import read_cluster_yml
    from .spec import spec_from_params

    want = spec_from_params(params)
    path = state.state_dir(params) / state.CLUSTER_YML
    if not leaving:
        return want
    if not path.exists():
        raise RunbookError(f"{path}: missing; the cluster was not brought up from this state folder, so the leaving nodes "
                           f"{', '.join(leaving)} cannot be kept while the new ones join. Check kubernetes.state_dir")
    current = read_cluster_yml(path.read_text(), str(path))
    return dataclasses.replace(want, nodes=want.nodes + tuple(n for n in current.nodes if n.name in leaving))


def plan(params, m: Membership, drain_preview: dict[str, list[dict]], not_ready: dict[str, str] | None = None,
         rke2_steps: Callable[[list[str]], list[Step]] | None = None) -> FoldIn:
    """The steps that close ``m``. ``drain_preview``: node -> what would block its drain now.

    ``not_ready``: joining hosts that failed the VM preflight (they block their join; on RKE1 the whole
    join, since ``rke up`` needs every node). ``rke2_steps(names)``: the RKE2 install steps of the
    joining nodes (the bring-up's own planner).
    """
    from .bringup import rke_binary, target
    from .rke1 import render_cluster_yml

    not_ready = not_ready or {}
    where = target(params)
    if m.refused:
        return FoldIn([Step(where, "membership", "nothing until the refused changes are taken out", None, blocked="; ".join(m.refused))])
    k = params.kubernetes
    steps: list[Step] = []
    files: dict[str, str] = {}
    leaving = [n.name for n in m.remove]
    held = {n: why for n, why in not_ready.items() if n in m.add}
    if k.distribution == "rke1":
        path = state.state_dir(params) / state.CLUSTER_YML
        current = path.read_text() if path.exists() else None
        rke = f"{shlex.quote(rke_binary(params))} up --update-only --config {shlex.quote(str(path))}"
        key = params.ssh.key.path(params.source_dir)
        if m.add:
            if held:
                steps.append(Step(where, "join", f"nothing: {', '.join(held)} not ready", None,
                                  blocked="; ".join(f"{n}: {why}" for n, why in held.items()) + " (rke up needs every node)"))
            else:
                text = render_cluster_yml(_intermediate_spec(params, leaving), key, ignore_docker_version=k.ignore_docker_version)
                # the parameter file's own header, so that the file says where it came from
                text = render_cluster_yml(params).split("\n", 1)[0] + "\n" + text.split("\n", 1)[1]
                files["cluster.yml (join)"] = text
                steps.append(Step(where, "cluster.yml (join)", f"add {', '.join(m.add)} to {path.name}", f"write {path}",
                                  undo_note="the previous file is kept as cluster.yml.runbook-bak", diff=file_diff(str(path), current, text)))
                steps.append(Step(where, "rke up --update-only", f"{', '.join(m.add)} join as workers (control plane untouched)", rke,
                                  undo_note="remove the nodes from cluster.yml and run rke up --update-only again"))
                current = text
    else:
        for n, why in held.items():
            steps.append(Step(n, "join", "nothing on this node until it is ready", None, blocked=why))
        joining = [n for n in m.add if n not in held]
        if joining and rke2_steps is not None:
            steps += rke2_steps(joining)
    for n in m.remove:
        blocking = drain_preview.get(n.name, [])
        steps.append(Step(n.name, "drain", f"cordon, then evict its pods (timeout {k.drain_timeout_seconds} s)", f"drain {n.name}",
                          undo=f"kubectl uncordon {n.name}",
                          blocked="; ".join(f"{b['pod']}: {b['reason']} ({b['fix']})" for b in blocking)))
    if leaving and k.distribution == "rke1":
        text = render_cluster_yml(params)
        files["cluster.yml (leave)"] = text
        steps.append(Step(where, "cluster.yml (leave)", f"remove {', '.join(leaving)} from {path.name}", f"write {path}",
                          undo_note="the previous file is kept as cluster.yml.runbook-bak", diff=file_diff(str(path), current, text)))
        steps.append(Step(where, "rke up --update-only", f"{', '.join(leaving)} leave: their Nodes deleted, the hosts cleaned", rke,
                          undo_note="add the nodes back to the parameters and run this runbook again (they join afresh)"))
    elif leaving:
        for n in m.remove:
            steps.append(Step(n.name, "rke2 uninstall", f"stop and remove RKE2 on {n.address} ({RKE2_UNINSTALL})", RKE2_UNINSTALL,
                              undo_note="add the host back to the parameters and run this runbook again (it joins afresh)"))
            steps.append(Step(n.name, "delete node", f"delete Node {n.name} from the API", f"kubectl delete node {n.name}",
                              undo_note="the node registers again when RKE2 runs there again"))
    return FoldIn([s if s.blocked == "" or s.command is None else dataclasses.replace(s, command=None) for s in steps], files)


def rke2_join_planner(params, fleet) -> Callable[[list[str]], list[Step]]:
    """The RKE2 bring-up's own planner, limited to the joining nodes (artifacts checked, facts read over SSH)."""
    from . import install_rke2

    def steps(names: list[str]) -> list[Step]:
        try:
            artifacts = install_rke2.load_artifacts(params)
        except RunbookError as e:
            return [Step(n, "rke2 artifacts", "nothing until the artifacts are right", None, blocked=str(e)) for n in names]
        facts, errors = install_rke2.gather(params, fleet)
        return [s for s in install_rke2.plan_rke2(params, facts, errors, artifacts) if s.host in names]
    return steps


# -- the apply ---------------------------------------------------------------------------------

@dataclass
class FoldInResult:
    applied: list[str] = field(default_factory=list)
    drains: list = field(default_factory=list)  # DrainResult per leaving node
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def apply(params, fleet, api, plan: FoldIn, m: Membership, on_change: Callable[[Step], object] | None = None,
          on_line: Callable[[str], None] = print, on_secret: Callable[[str, str], None] = lambda v, label: None) -> FoldInResult:
    """Carry out the plan in order; the first failure stops everything after it (a node is never removed
    after its drain failed)."""
    from . import drain
    from .bringup import run_streaming

    out = FoldInResult()
    d = state.state_dir(params, create=True)
    leaving = {n.name: n for n in m.remove}
    rke2_join = [s for s in plan.steps if s.operation.startswith("rke2 ") and s.host not in leaving or s.operation == "join token"]
    if rke2_join:
        from . import install_rke2

        done = install_rke2.apply_rke2(params, fleet, rke2_join, install_rke2.load_artifacts(params), on_change=on_change,
                                       on_secret=on_secret)
        out.applied += [f"{h}: joined ({len(r.applied)} step(s))" for h, r in done.results.items() if r.ok]
        if not done.ok:
            out.error = done.error or "; ".join(r.error for r in done.results.values() if not r.ok)
            return out
    for step in plan.steps:
        if step in rke2_join:
            continue
        if step.command is None:
            out.error = f"{step.host}: {step.operation}: {step.blocked}"
            return out
        if step.operation.startswith("cluster.yml"):
            state.write_cluster_yml(params, plan.files[step.operation])
        elif step.operation == "rke up --update-only":
            lines: list[str] = []
            code = run_streaming(shlex.split(step.command), d, on_line, lines)
            if code != 0:
                fatal = next((line for line in reversed(lines) if line.startswith("FATA")), lines[-1] if lines else "")
                out.error = f"rke up --update-only exited {code}: {fatal}"
                return out
        elif step.operation == "drain":
            result = drain.drain(api, step.host, params.kubernetes.drain_timeout_seconds, on_line,
                                 delete_emptydir_data=params.kubernetes.drain_delete_emptydir_data)
            out.drains.append(result)
            if not result.ok:
                out.error = f"{step.host}: drain stopped, nothing removed: " + "; ".join(
                    f"{b['pod']}: {b['reason']} ({b['fix']})" for b in result.blockers)
                return out
        elif step.operation == "rke2 uninstall":
            r = fleet.run_on(removed_host(params, leaving[step.host]), step.command)
            if not r.ok:
                out.error = f"{step.host}: {RKE2_UNINSTALL} failed: {r.error} {r.stderr.strip()[-300:]}"
                return out
        elif step.operation == "delete node":
            from kubernetes import client

            try:
                client.CoreV1Api(api).delete_node(step.host)
            except client.ApiException as e:
                if e.status != 404:
                    raise
        else:
            raise RunbookError(f"{step.host}: {step.operation}: no way to apply this step (a bug: report it)")
        out.applied.append(f"{step.host}: {step.operation}: {step.change}")
        if on_change:
            on_change(step)
    return out


def removed_host(params, node: NodeInfo):
    """A leaving node as an SSH target: its name and the address the API knows (the parameters no longer list it).
    Its host key must still be pinned in ``ssh.known_hosts``: nothing runs on a host whose key is not known."""
    from ..schema import Host

    if not node.address:
        raise RunbookError(f"{node.name}: the Node has no InternalIP address, so the host cannot be reached to uninstall RKE2; "
                           f"run {RKE2_UNINSTALL} there by hand, then delete the Node")
    return Host(name=node.name, address=node.address, roles=["worker"], location={"country": params.environment.data_country})


# -- capacity ----------------------------------------------------------------------------------

def capacity_rows(nodes: Sequence[NodeInfo]) -> list[dict]:
    rows = [n.row() for n in nodes]
    schedulable = [n for n in nodes if n.ready and not n.unschedulable and "worker" in n.roles]
    rows.append({"node": "TOTAL (schedulable workers)", "roles": f"{len(schedulable)} node(s)", "ready": "", "schedulable": "",
                 "CPU (cores)": round(sum(n.cpu for n in schedulable), 2),
                 "memory (GiB)": round(sum(n.memory_gib for n in schedulable), 2), "pods": sum(n.pods for n in schedulable), "kubelet": ""})
    return rows


def capacity_figure(before: Sequence[NodeInfo], after: Sequence[NodeInfo], title: str = "Allocatable capacity per node"):
    """Two panels (CPU cores, memory GiB): one pair of bars per node, before and after; a node absent on one side has no bar there."""
    import matplotlib.pyplot as plt

    names = sorted({n.name for n in before} | {n.name for n in after})
    b, a = {n.name: n for n in before}, {n.name: n for n in after}
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * len(names) + 3), 3.6), constrained_layout=True)
    x = range(len(names))
    for ax, (label, attr) in zip(axes, (("CPU (cores)", "cpu"), ("memory (GiB)", "memory_gib"))):
        ax.bar([i - 0.2 for i in x], [getattr(b[n], attr) if n in b else 0 for n in names], 0.4, label="before", color="#9aa5b1")
        ax.bar([i + 0.2 for i in x], [getattr(a[n], attr) if n in a else 0 for n in names], 0.4, label="after", color="#2f6f9f")
        ax.set_xticks(list(x), names, rotation=45, ha="right")
        ax.set_ylabel(label)
        total_b, total_a = sum(getattr(n, attr) for n in before), sum(getattr(n, attr) for n in after)
        ax.set_title(f"{label}: {total_b:g} -> {total_a:g} (all nodes)")
        ax.set_ylim(0, max([getattr(n, attr) for n in [*before, *after]] or [1]) * 1.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, frameon=False)
    fig.suptitle(title, x=0.02, ha="left")
    return fig
