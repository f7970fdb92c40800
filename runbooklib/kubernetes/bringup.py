"""Bringing the cluster up, RKE1: render ``cluster.yml`` into the state folder, then ``rke up`` with it.

The plan has at most two steps, both on the cluster as a whole: write ``cluster.yml`` where it
differs (with its diff), and run ``rke up`` when the file changed or the cluster does not verify
(a second apply of a converged cluster plans nothing). A lost ``cluster.rkestate`` blocks the plan
with the recovery steps (see :func:`state.lost_state`). ``rke``'s output is streamed line by line
to the caller (the notebook shows it and the record keeps it); it holds no keys.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunbookError
from ..phase.steps import Step, file_diff
from . import state
from .rke1 import render_cluster_yml


def rke_binary(params) -> str:
    """``kubernetes.rke``: a name on PATH, or a path relative to the parameter file."""
    given = params.kubernetes.rke
    if "/" not in given:
        return given
    path = Path(os.path.expanduser(given))
    return str(path if path.is_absolute() else (params.source_dir / path).resolve())


def target(params) -> str:
    return f"cluster {params.kubernetes.cluster_name}"


def plan_rke1(params, converged: Callable[[], bool]) -> list[Step]:
    """The steps that bring the cluster to what the parameters say; ``converged()`` asks the running cluster."""
    where = target(params)
    incident = state.lost_state(params)
    if incident:
        return [Step(where, "rke up", "the cluster cannot be updated safely", None, blocked=incident)]
    d = state.state_dir(params)
    path = d / state.CLUSTER_YML
    text = render_cluster_yml(params)
    current = path.read_text() if path.exists() else ""
    steps = []
    if text != current:
        diff = file_diff(str(path), current or None, text)
        steps.append(Step(where, "cluster.yml", f"{'update' if current else 'write'} {path} (nodes, roles, ranges, version)",
                          f"write {path}", undo_note="the previous file is kept as cluster.yml.runbook-bak" if current else
                          "remove the file", diff=diff))
    if steps or not converged():
        rke = rke_binary(params)
        steps.append(Step(where, "rke up", f"`rke up` brings the cluster to {path.name}: {sum(h.in_cluster for h in params.hosts)} "
                                           f"nodes, Kubernetes {params.kubernetes.version}",
                          f"{shlex.quote(rke)} up --config {shlex.quote(str(path))}",
                          undo_note="rke is not undone step by step: restore the etcd snapshot taken before (rke etcd "
                                    "snapshot-restore), or remove a node from cluster.yml and run rke up again"))
    return steps


@dataclass
class BringUp:
    """What an apply did: each step's result line, rke's exit code, and its output."""

    applied: list[str] = field(default_factory=list)
    exit_code: int | None = None
    output: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def apply_rke1(params, steps: list[Step], on_line: Callable[[str], None] = print,
               on_change: Callable[[Step], object] | None = None, version: str | None = None) -> BringUp:
    """Carry out the planned steps in order; the first failure stops (rke up after a failed write makes no sense).

    ``version``: the release cluster.yml is written with, if not ``kubernetes.version`` (an upgrade's step).
    """
    out = BringUp()
    d = state.state_dir(params, create=True)
    for step in steps:
        if step.blocked:
            out.error = step.blocked
            return out
        if step.operation == "cluster.yml":
            state.write_cluster_yml(params, render_cluster_yml(params, version=version))
        elif step.operation == "rke up":
            out.exit_code = run_streaming(shlex.split(step.command), d, on_line, out.output)
            if out.exit_code != 0:
                fatal = next((line for line in reversed(out.output) if line.startswith("FATA")), out.output[-1] if out.output else "")
                out.error = f"rke up exited {out.exit_code}: {fatal}"
                return out
        out.applied.append(f"{step.operation}: {step.change}")
        if on_change:
            on_change(step)
    return out


def run_streaming(argv: list[str], cwd: Path, on_line: Callable[[str], None], keep: list[str]) -> int:
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
    except OSError as e:
        raise RunbookError(f"cannot run {argv[0]}: {e.strerror or e}; set kubernetes.rke to the rke binary's path") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        keep.append(line)
        on_line(line)
    return proc.wait()


def plan(params, fleet, converged: Callable[[], bool], blockers: Sequence[str] = (),
         not_ready: dict[str, str] | None = None) -> list[Step]:
    """The bring-up plan for the parameters' distribution.

    ``blockers`` (lint errors) block everything, and so does a running cluster at another release than
    ``kubernetes.version`` (an upgrade: runbook 11). ``not_ready`` (host -> why) blocks everything on RKE1,
    whose ``rke up`` needs every node; on RKE2 it blocks those nodes alone (their steps become one
    blocked step each), unless it names the first server, without which no node can join.
    """
    where = target(params)
    not_ready = not_ready or {}
    if params.kubernetes.distribution == "rke1":
        blockers = [*blockers, *(f"{h}: {why}" for h, why in not_ready.items())]
    if blockers:
        return [Step(where, "bring-up", "nothing until the blockers are fixed", None, blocked="; ".join(blockers))]
    from .upgrade import version_change

    change = version_change(params)  # a new release on a running cluster is an upgrade: never all nodes at once
    if change:
        return [Step(where, "bring-up", "nothing: the cluster runs another release", None, blocked=change)]
    if params.kubernetes.distribution == "rke1":
        return plan_rke1(params, converged)
    from . import install_rke2, rke2
    from .spec import spec_from_params

    first = rke2.first_server(spec_from_params(params)).name
    if first in not_ready:
        return [Step(where, "bring-up", "nothing: the first server is not ready", None,
                     blocked=f"{first} (the first server, which every other node joins): {not_ready[first]}")]
    try:
        artifacts = install_rke2.load_artifacts(params)
    except RunbookError as e:
        return [Step(where, "rke2 artifacts", "nothing until the artifacts are right", None, blocked=str(e))]
    facts, errors = install_rke2.gather(params, fleet)
    steps = install_rke2.plan_rke2(params, facts, errors, artifacts)
    held = [Step(h, "rke2", "nothing on this node until it is ready", None, blocked=why) for h, why in not_ready.items()]
    return [s for s in steps if s.host not in not_ready] + held


def apply(params, fleet, steps: list[Step], on_change: Callable[[Step], object] | None = None,
          on_secret: Callable[[str, str], None] = lambda value, label: None, on_line: Callable[[str], None] = print) -> BringUp:
    """Carry out a plan of :func:`plan`: RKE1 runs rke; RKE2 installs node by node in order."""
    if params.kubernetes.distribution == "rke1":
        return apply_rke1(params, steps, on_line, on_change)
    from . import install_rke2

    done = install_rke2.apply_rke2(params, fleet, steps, install_rke2.load_artifacts(params), on_change=on_change,
                                   on_secret=on_secret)
    out = BringUp(applied=[f"{h}: {len(r.applied)} step(s)" + ("" if r.ok else f", stopped: {r.error}")
                           for h, r in done.results.items()])
    problems = ([done.error] if done.error else []) + [r.error for r in done.results.values() if not r.ok]
    out.error = "; ".join(problems)
    return out


def not_ready(readiness, hosts) -> dict[str, str]:
    """Host -> why it is not ready (unreachable, or the VM rules it fails), for the hosts of ``hosts`` not ready."""
    from ..phase.checks import Status, failures, ready_hosts

    ready = set(ready_hosts(readiness))
    out = {}
    for h in hosts:
        if h.name in ready:
            continue
        mine = [c for c in failures(readiness) if c.host == h.name]
        lost = next((c.reason for c in mine if c.status == Status.UNREACHABLE), None)
        out[h.name] = f"unreachable: {lost}" if lost else f"not ready: {', '.join(c.rule for c in mine)} (run 02-vm-baseline)"
    return out


def converged(params) -> bool:
    """Whether the cluster the state folder's kubeconfig reaches verifies clean through the API."""
    from . import verify

    kubeconfig = state.kubeconfig_path(params)
    return kubeconfig.exists() and not verify.failing(verify.verify_api(params, kubeconfig))


def verdict(blockers: Sequence[str], steps: Sequence[Step], outcome_status: str, result: BringUp | None,
            failed_checks: Sequence[str]) -> tuple[str, list[str]]:
    """The runbook's verdict and its problems: *not ready* when blocked (or nodes held back and nothing applied),
    *planned* in plan mode, else *done* or *incomplete*."""
    held = [f"{s.host}: {s.blocked}" for s in steps if s.command is None]
    problems = [*blockers, *held, *([result.error] if result is not None and not result.ok else []), *failed_checks]
    if blockers or (held and outcome_status != "applied"):
        return "not ready", problems
    if outcome_status == "planned":
        return "planned", problems
    return ("done" if not problems else "incomplete"), problems
