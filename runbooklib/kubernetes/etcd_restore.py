"""Restoring etcd from a verified snapshot, and the restore drill that proves it works.

A restore rolls the whole cluster back to the snapshot: everything written since is gone. So it is
planned as steps like any change, and refused (a blocked step, naming why) unless the snapshot was
verified in this run (:func:`.etcd_backup.verify`) and is still on its node with the same SHA-256.
The plan names the snapshot (name, revision, when it was taken) before anyone confirms it.

- **RKE1**: ``rke etcd snapshot-restore --config cluster.yml --name N``, run here. rke takes the first
  etcd node's ``N.zip`` (copying it to the others), rebuilds etcd from it on every etcd node and
  brings the cluster back up (RKE: it removes and rebuilds the cluster).
- **RKE2** (docs.rke2.io, backup and restore, "Restoring a snapshot to existing nodes"): stop
  ``rke2-server`` on every server; on the first server ``rke2 server --cluster-reset
  --cluster-reset-restore-path=<snapshot>`` (it restores into a one-member etcd and exits); start it
  again; on each other server move ``/var/lib/rancher/rke2/server/db`` aside and start it, so it
  joins the restored cluster.

The drill (``kubernetes.etcd_backup.drill``) proves a restore on the cluster it runs against: a
canary namespace with a ConfigMap, a snapshot (taken, verified, copied off), the namespace deleted,
the snapshot restored, and the canary found again, with the cluster verified healthy
(:mod:`.verify`).
"""

from __future__ import annotations

import datetime as dt
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunbookError
from ..phase.steps import Step
from . import etcd_backup, state
from .etcd_backup import RKE2_DB, Verified

CANARY_CONFIGMAP = "canary"


def target(params) -> str:
    return f"cluster {params.kubernetes.cluster_name}"


def describe(v: Verified) -> str:
    """The snapshot as the confirmation names it: name, revision, when it was taken, where."""
    s = v.snapshot
    return (f"snapshot {s.name} (revision {v.status.revision}, {v.status.total_keys} keys, taken {s.created or 'at an unknown time'}, "
            f"on {s.node})")


# -- the plan -------------------------------------------------------------------------------------

def restore_blockers(params, fleet, verified: Verified | None) -> list[str]:
    """Why the snapshot cannot be restored now (none: it can): not verified, gone from its node, changed, not on the first server."""
    if verified is None:
        return ["the snapshot was not verified in this run: a restore is only made from a snapshot etcdutl has checked on its "
                "node (see the verification above)"]
    s = verified.snapshot
    if s.node != etcd_backup.source_node(params).name:
        return [f"{s.name} is on {s.node}, but the restore reads it on {etcd_backup.source_node(params).name}; copy it there "
                f"(same folder) and run the runbook again"]
    r = fleet.run_on(params.host(s.node), f"sha256sum {shlex.quote(s.path)}")
    if not r.ok:
        return [f"{s.node}: {s.path} is not there any more ({r.error}); nothing was restored"]
    now = (r.stdout.split() or [""])[0]
    if now != verified.sha256:
        return [f"{s.node}: {s.path} changed since it was verified (SHA-256 {now[:16]}..., verified {verified.sha256[:16]}...); "
                "verify it again"]
    return []


def restore_argv(params, name: str) -> list[str]:
    from .bringup import rke_binary

    return [rke_binary(params), "etcd", "snapshot-restore", "--config", str(state.state_dir(params) / state.CLUSTER_YML), "--name", name]


def reset_command(path: str) -> str:
    """RKE2's restore on the first server (rke2-server stopped): a one-member etcd from the snapshot; the process then exits."""
    return f"rke2 server --cluster-reset --cluster-reset-restore-path={shlex.quote(path)}"


def plan_restore(params, verified: Verified | None, blockers: list[str] = (), stamp: str | None = None) -> list[Step]:
    """The restore as steps, each with what it changes; one blocked step when it may not run (``blockers``)."""
    where = target(params)
    if verified is None or blockers:
        why = "; ".join(blockers) or "the snapshot was not verified in this run: a restore is only made from a verified one"
        return [Step(where, "etcd restore", "nothing: the snapshot cannot be restored", None, blocked=why)]
    what = describe(verified)
    undo = ("restore the snapshot this run took before it (listed above): a restore is undone only by another restore")
    if params.kubernetes.distribution == "rke1":
        return [Step(where, "etcd restore", f"roll the whole cluster back to {what}: rke rebuilds etcd on every etcd node from the "
                                            "first node's copy and brings the cluster up again; every write since is lost",
                     " ".join(shlex.quote(a) for a in restore_argv(params, verified.snapshot.name)), undo_note=undo)]
    from .rke2 import first_server, node_kind
    from .spec import spec_from_params

    spec = spec_from_params(params)
    first = first_server(spec).name
    servers = [n.name for n in spec.nodes if node_kind(spec, n) == "server"]
    others = [s for s in servers if s != first]
    stamp = stamp or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    steps = [Step(s, "rke2 stop", "stop rke2-server (the API is down until the restore is done)", "systemctl stop rke2-server",
                  undo="systemctl start rke2-server") for s in servers]
    steps.append(Step(first, "etcd restore", f"reset etcd to one member restored from {what}; every write since is lost",
                      reset_command(verified.snapshot.path), undo_note=undo + f"; RKE2 keeps the old data as {RKE2_DB}/etcd-old-<time>"))
    steps.append(Step(first, "rke2 start", "start rke2-server on the restored etcd, wait for its API", "systemctl start rke2-server",
                      undo="systemctl stop rke2-server"))
    for s in others:
        aside = f"{RKE2_DB}.before-restore-{stamp}"
        steps.append(Step(s, "etcd data aside", f"move {RKE2_DB} to {aside}: this server rejoins the restored etcd",
                          f"mv {RKE2_DB} {aside}", undo=f"mv {aside} {RKE2_DB}"))
        steps.append(Step(s, "rke2 start", "start rke2-server: it joins the restored cluster", "systemctl start rke2-server",
                          undo="systemctl stop rke2-server"))
    return steps


# -- carrying it out ------------------------------------------------------------------------------

@dataclass
class Restored:
    applied: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def apply_restore(params, fleet, steps: list[Step], on_change: Callable[[Step], object] | None = None,
                  on_line: Callable[[str], None] = print, wait: float = 300.0) -> Restored:
    """Carry out :func:`plan_restore`'s steps in order; the first failure stops (the rest would act on a half-restored cluster)."""
    out = Restored()
    t0 = time.monotonic()
    try:
        for step in steps:
            if step.command is None:
                out.error = step.blocked
                return out
            try:
                error = _one(params, fleet, step, on_line, out.output, wait)
            except RunbookError as e:  # rke cannot be started: said as the step's failure, never a crashed cell
                error = str(e)
            if error:
                out.error = f"{step.host}: {step.operation} failed: {error}"
                return out
            out.applied.append(f"{step.host}: {step.operation}")
            if on_change:
                on_change(step)
        return out
    finally:
        out.seconds = time.monotonic() - t0


def _one(params, fleet, step: Step, on_line, keep: list[str], wait: float) -> str:
    if params.kubernetes.distribution == "rke1":
        from .bringup import run_streaming

        code = run_streaming(shlex.split(step.command), state.state_dir(params), on_line, keep)
        if code != 0:
            return next((line for line in reversed(keep) if line.startswith("FATA")), keep[-1] if keep else f"exit {code}")
        return ""
    host = params.host(step.host)
    r = fleet.run_on(host, step.command, timeout=900)
    for line in (r.stdout + r.stderr).splitlines()[-20:]:
        keep.append(f"{step.host}: {line}")
        on_line(f"{step.host}: {line}")
    if not r.ok:
        return r.error or r.stderr.strip()[-300:]
    if step.operation == "rke2 start":
        from .install_rke2 import wait_for_node
        from .rke2 import first_server
        from .spec import spec_from_params

        first = first_server(spec_from_params(params)).name == step.host
        done = wait_for_node(fleet, host, first, wait)
        return "" if done.ok else done.error
    return ""


# -- the API, and the drill's canary -----------------------------------------------------------------

def wait_for_api(kubeconfig: Path, timeout: float = 300.0) -> str:
    """Until the API answers a namespace list through ``kubeconfig``; "" then, else why not (after ``timeout``)."""
    from . import verify

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            client, api = verify.api_client(kubeconfig)
            client.CoreV1Api(api).list_namespace(limit=1, _request_timeout=10)
            return ""
        except Exception as e:  # starting: refused, 503, a timeout; remember the last
            last = verify.api_failure(e)
            time.sleep(2)
    return f"the API did not answer within {timeout:g} s ({last})"


@dataclass(frozen=True)
class Canary:
    """The drill's witness: a namespace with one ConfigMap, made before the snapshot, deleted after it."""

    namespace: str
    data: tuple[tuple[str, str], ...]
    configmap: str = CANARY_CONFIGMAP

    def manifest(self) -> str:
        """What is created, as kubectl would take it (shown in the plan)."""
        data = "".join(f"\n  {k}: {v}" for k, v in self.data)
        return (f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {self.namespace}\n---\napiVersion: v1\nkind: ConfigMap\n"
                f"metadata:\n  name: {self.configmap}\n  namespace: {self.namespace}\ndata:{data}\n")


def canary_for(run_id: str, now: dt.datetime | None = None) -> Canary:
    """A canary of this run: ``runbook-restore-drill-<time>`` (a valid namespace name), stamped with the run."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return Canary(f"runbook-restore-drill-{now.strftime('%Y%m%d-%H%M%S')}",
                  (("run", run_id), ("created", now.strftime("%Y-%m-%dT%H:%M:%SZ")), ("purpose", "etcd restore drill")))


def canary_steps(params, canary: Canary) -> dict[str, Step]:
    """The drill's own changes to the cluster, by name: create the canary, then delete it (the loss the restore repairs)."""
    where = target(params)
    return {
        "create": Step(where, "drill canary", f"create namespace {canary.namespace} with ConfigMap {canary.configmap}",
                       f"kubectl create namespace {canary.namespace} && kubectl -n {canary.namespace} create configmap {canary.configmap} "
                       + " ".join(f"--from-literal={k}={shlex.quote(v)}" for k, v in canary.data),
                       undo=f"kubectl delete namespace {canary.namespace}", diff=canary.manifest()),
        "delete": Step(where, "drill loss", f"delete namespace {canary.namespace} (and its ConfigMap): the loss the restore must repair",
                       f"kubectl delete namespace {canary.namespace} --wait",
                       undo_note="the restore that follows brings it back; if the drill stops here, create it again from the plan"),
    }


def create_canary(kubeconfig: Path, canary: Canary) -> None:
    from . import verify

    client, api = verify.api_client(kubeconfig)
    v1 = client.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": canary.namespace, "labels": {"runbook/purpose": "etcd-restore-drill"}}})
    v1.create_namespaced_config_map(canary.namespace, {"metadata": {"name": canary.configmap}, "data": dict(canary.data)})


def delete_canary(kubeconfig: Path, canary: Canary, timeout: float = 120.0) -> str:
    """Delete the namespace and wait until it is gone (the namespace controller empties it first); "" or why not."""
    from . import verify

    client, api = verify.api_client(kubeconfig)
    v1 = client.CoreV1Api(api)
    v1.delete_namespace(canary.namespace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v1.read_namespace(canary.namespace)
        except client.ApiException as e:
            if e.status == 404:
                return ""
            raise
        time.sleep(1)
    return f"namespace {canary.namespace} still exists {timeout:g} s after its deletion (Terminating: see its finalizers)"


def canary_rows(kubeconfig: Path, canary: Canary) -> list[dict]:
    """Whether the restore brought the canary back: the namespace, and its ConfigMap with the same data."""
    from . import verify

    client, api = verify.api_client(kubeconfig)
    v1 = client.CoreV1Api(api)
    rows = []
    try:
        ns = v1.read_namespace(canary.namespace)
        phase = ns.status.phase if ns.status else "?"
        rows.append(verify.row("canary namespace back", canary.namespace, phase == "Active", f"phase {phase}"))
    except client.ApiException as e:
        return [verify.row("canary namespace back", canary.namespace, False, f"not found ({e.status}): the restore did not bring it back")]
    try:
        cm = v1.read_namespaced_config_map(canary.configmap, canary.namespace)
        same = (cm.data or {}) == dict(canary.data)
        rows.append(verify.row("canary ConfigMap back", f"{canary.namespace}/{canary.configmap}", same,
                               "the same data as before the snapshot" if same else f"data differs: {cm.data}"))
    except client.ApiException as e:
        rows.append(verify.row("canary ConfigMap back", f"{canary.namespace}/{canary.configmap}", False, f"not found ({e.status})"))
    return rows


def canary_gone(kubeconfig: Path, canary: Canary) -> bool:
    from . import verify

    client, api = verify.api_client(kubeconfig)
    try:
        client.CoreV1Api(api).read_namespace(canary.namespace)
        return False
    except client.ApiException as e:
        return e.status == 404


# -- a restore, checked again at the moment it runs ---------------------------------------------------

def restore_now(params, fleet, kubeconfig: Path, verified: Verified | None, confirmed: list[Step], stamp: str,
                on_change: Callable[[Step], object] | None = None, on_line: Callable[[str], None] = print) -> Restored:
    """Restore ``verified`` if it still may be: the checks run again now (verified, on its node, unchanged), and the plan
    they give must be the one confirmed; then the steps, then the API waited for."""
    steps = plan_restore(params, verified, restore_blockers(params, fleet, verified), stamp)
    if any(s.command is None for s in steps):
        return Restored(error="; ".join(s.blocked for s in steps if s.command is None))
    if steps != list(confirmed):
        return Restored(error="the restore plan changed since it was confirmed (the snapshot or the cluster changed): nothing "
                              "was restored; run the runbook again to see the new plan")
    out = apply_restore(params, fleet, steps, on_change, on_line)
    if out.ok:
        why = wait_for_api(kubeconfig)
        if why:
            out.error = why
    return out


class Incident:
    """An incident's restore of a named snapshot (``kubernetes.etcd_backup.restore``): found, verified, planned, restored."""

    def __init__(self, params, fleet, kubeconfig: Path, name: str, listing: list[etcd_backup.NodeSnapshot],
                 on_change: Callable[[Step], object] | None = None, on_line: Callable[[str], None] = print):
        self.params, self.fleet, self.kubeconfig, self.name = params, fleet, kubeconfig, name
        self.on_change, self.on_line = on_change, on_line
        self.snapshot = etcd_backup.find_snapshot(params, listing, name)
        self.verified: Verified | None = None
        self.restored: Restored | None = None
        self.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.problems: list[str] = []
        if self.snapshot is None:
            self.problems.append(f"no snapshot named {name} on {etcd_backup.source_node(params).name}, where the restore reads it "
                                 "(the snapshots on the nodes are listed above)")

    def verify(self) -> Verified | None:
        if self.snapshot is not None:
            try:
                self.verified = etcd_backup.verify(self.params, self.fleet, self.snapshot)
            except etcd_backup.SnapshotError as e:
                self.problems.append(str(e))
        return self.verified

    def steps(self) -> list[Step]:
        """The restore plan; blocked (naming why) unless the snapshot was found, verified and is unchanged on its node."""
        why = restore_blockers(self.params, self.fleet, self.verified) if self.verified else list(self.problems)
        return plan_restore(self.params, self.verified, why, self.stamp)

    def restore(self, confirmed: list[Step]) -> Restored:
        self.restored = restore_now(self.params, self.fleet, self.kubeconfig, self.verified, confirmed, self.stamp, self.on_change,
                                    self.on_line)
        if not self.restored.ok:
            self.problems.append(f"restore: {self.restored.error}")
        return self.restored


# -- the drill, stage by stage (one confirmation each) --------------------------------------------------

class Drill:
    """The restore drill's state across the runbook's cells: a stage acts only when the one before it succeeded.

    The canary is deleted only once a snapshot holding it was taken, verified and copied off, so the
    drill never causes a loss it cannot repair; the restore is checked again as it runs
    (:func:`restore_now`). A stage not yet tried (a plan, or a button not yet clicked) shows its steps as
    planned; after a failed stage the next ones show as blocked, saying why. Each change is recorded
    through ``on_change`` once it succeeded.
    """

    def __init__(self, params, fleet, kubeconfig: Path, run_id: str, on_change: Callable[[Step], object] | None = None,
                 on_line: Callable[[str], None] = print):
        self.params, self.fleet, self.kubeconfig, self.on_change, self.on_line = params, fleet, kubeconfig, on_change, on_line
        self.canary = canary_for(run_id)
        self.steps = canary_steps(params, self.canary)
        self.name = etcd_backup.snapshot_name("drill")
        self.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.tried: set[str] = set()
        self.created = self.deleted = False
        self.snapshot: etcd_backup.SnapshotRun | None = None
        self.restored: Restored | None = None
        self.problems: list[str] = []

    def _record(self, step: Step) -> None:
        if self.on_change:
            self.on_change(step)

    def _restore_placeholder(self) -> Step:
        return Step(target(self.params), "etcd restore", f"restore snapshot {self.name} once it is verified and copied off: "
                                                         f"namespace {self.canary.namespace} must come back",
                    "the restore plan, shown with the snapshot's revision before it is confirmed",
                    undo_note="a restore is undone only by another restore")

    def plan(self) -> list[Step]:
        """Every stage, for the engineer to read first."""
        return [self.steps["create"], *etcd_backup.plan_snapshot(self.params, self.name), self.steps["delete"], self._restore_placeholder()]

    @staticmethod
    def _blocked(operation: str, why: str, where: str) -> list[Step]:
        return [Step(where, operation, "nothing: the drill stopped before this stage", None, blocked=why)]

    def create(self) -> bool:
        self.tried.add("create")
        try:
            create_canary(self.kubeconfig, self.canary)
        except Exception as e:  # an ApiException or an API that does not answer: the drill stops here, nothing lost
            self.problems.append(f"drill: could not create the canary {self.canary.namespace}: {type(e).__name__}: {str(e)[:300]}")
            return False
        self.created = True
        self._record(self.steps["create"])
        return True

    def snapshot_steps(self) -> list[Step]:
        if "create" in self.tried and not self.created:
            return self._blocked("etcd snapshot", "the canary was not created", target(self.params))
        return etcd_backup.plan_snapshot(self.params, self.name)

    def take_snapshot(self, steps: list[Step]) -> etcd_backup.SnapshotRun:
        self.tried.add("snapshot")
        if not self.created:
            self.snapshot = etcd_backup.SnapshotRun(error="not taken: the canary was not created")
        else:
            self.snapshot = etcd_backup.apply_snapshot(self.params, self.fleet, steps, self.name, self.on_change, self.on_line)
        if not self.snapshot.ok:
            self.problems.append(f"drill snapshot: {self.snapshot.error}")
        return self.snapshot

    def delete_steps(self) -> list[Step]:
        if "snapshot" in self.tried and not (self.snapshot and self.snapshot.ok):
            return self._blocked("drill loss", "the drill snapshot was not taken, verified and copied off: the canary is kept",
                                 target(self.params))
        return [self.steps["delete"]]

    def delete(self) -> bool:
        self.tried.add("delete")
        if not (self.snapshot and self.snapshot.ok):
            self.problems.append("drill: the canary was not deleted: no verified snapshot holds it")
            return False
        try:
            why = delete_canary(self.kubeconfig, self.canary)
        except Exception as e:  # the API refused or did not answer
            why = f"{type(e).__name__}: {str(e)[:300]}"
        if why:
            self.problems.append(f"drill: deleting the canary failed: {why}")
            return False
        self.deleted = True
        self._record(self.steps["delete"])
        return True

    def verified(self) -> Verified | None:
        return self.snapshot.verified if self.snapshot and self.snapshot.ok else None

    def restore_steps(self) -> list[Step]:
        if self.deleted:
            return plan_restore(self.params, self.verified(), restore_blockers(self.params, self.fleet, self.verified()), self.stamp)
        if "delete" in self.tried:
            return self._blocked("etcd restore", "the canary was not deleted: there is nothing to repair", target(self.params))
        return [self._restore_placeholder()]

    def restore(self, confirmed: list[Step]) -> Restored:
        self.tried.add("restore")
        if not self.deleted:
            self.restored = Restored(error="not restored: the canary was not deleted")
        else:
            self.restored = restore_now(self.params, self.fleet, self.kubeconfig, self.verified(), confirmed, self.stamp,
                                        self.on_change, self.on_line)
        if not self.restored.ok:
            self.problems.append(f"drill restore: {self.restored.error}")
        return self.restored

    def check(self) -> list[dict]:
        """The canary back (namespace and ConfigMap), once the drill got as far as a restore."""
        if not (self.restored and self.restored.ok):
            return []
        rows = canary_rows(self.kubeconfig, self.canary)
        self.problems += [f"drill: {r['check']} {r['target']}: {r['detail']}" for r in rows if r["status"] != "ok"]
        return rows
