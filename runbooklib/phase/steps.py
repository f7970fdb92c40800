"""Steps: what an operation still needs to do on a host, planned from facts, applied over SSH.

An :class:`Operation` is named after the state it ensures and returns the :class:`Step` s still
needed on one host: none when the host is already right, so a plan is the operations' output,
applying is running it, and a second apply finds nothing to do. A step carries its command, how to
undo it (a command where one exists, a note otherwise), and for file writes the content or a
unified diff against the host's current file. The same words (host, operation, change) travel
from the step to the run's change log and the archived manifest.
"""

from __future__ import annotations

import base64
import difflib
import itertools
import secrets
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    host: str
    operation: str
    change: str  # what will be different afterwards, for people
    command: str | None  # None: cannot be done automatically (``blocked`` says why)
    undo: str | None = None  # a command that reverses the step, where one exists
    undo_note: str = ""  # how to reverse it by hand otherwise, or what the undo command relies on
    blocked: str = ""
    diff: str = ""  # for a file: a unified diff against the host's current file (or the new content)

    @property
    def undo_text(self) -> str:
        return self.undo or self.undo_note or "-"


@dataclass(frozen=True)
class Operation:
    """A function ``(params, host, facts) -> [Step]`` with what it touches and how it is undone."""

    name: str
    ensure: Callable[[Any, Any, dict], list[Step]]
    touches: str
    undo: str
    def __call__(self, params, host, facts) -> list[Step]:
        return self.ensure(params, host, facts)


@dataclass(frozen=True)
class Part:
    """Something a runbook changes that is not an :class:`Operation` (a Kubernetes object, a search engine's
    template), as its rollback table shows it: what it touches and how it is undone."""

    name: str
    touches: str
    undo: str


def operation(name: str, *, touches: str, undo: str):
    """Declare an operation: ``@operation("swap disabled", touches="/etc/fstab", undo="swapon -a")``.

    Which readiness rules it makes pass is said once, by the rules (``Rule.fixed_by``).
    """
    def wrap(fn: Callable[[Any, Any, dict], list[Step]]) -> Operation:
        return Operation(name, fn, touches, undo)
    return wrap


@dataclass
class HostApply:
    """What an apply did on one host: the steps that succeeded, and the error that stopped it."""

    host: str
    applied: list[Step] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


# -- building steps ----------------------------------------------------------------------------

def write_file(path: str, content: str, mode: str = "0644") -> str:
    """A command that writes ``content`` to ``path`` atomically (no quoting pitfalls: base64)."""
    data = base64.b64encode(content.encode()).decode()
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".runbook-tmp")
    return f"mkdir -p $(dirname {p}) && echo {data} | base64 -d > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}"


def file_diff(path: str, current: str | None, want: str) -> str:
    """A unified diff from the host's file (absent: /dev/null) to the content the step writes."""
    before = (current or "").splitlines(keepends=True)
    after = want.splitlines(keepends=True)
    lines = difflib.unified_diff(before, after, "/dev/null" if current is None else f"a{path}", f"b{path}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


# -- planning and applying ---------------------------------------------------------------------

def plan(operations: Sequence[Operation], params, facts: dict[str, dict],
         fact_errors: dict[str, dict[str, str]] | None = None) -> list[Step]:
    """Every step still needed, host by host (hosts with facts only), in operation order.

    A host some of whose facts failed to parse or were cut short gets one blocked step instead: an
    operation planned on a default value could undo what it cannot see (an ``/etc/hosts`` read as
    empty would be rewritten without its other lines).
    """
    steps = []
    for host in params.hosts:
        if host.name not in facts:
            continue
        broken = (fact_errors or {}).get(host.name)
        if broken:
            why = "; ".join(f"{name}: {reason}" for name, reason in broken.items())
            steps.append(Step(host.name, "facts", "nothing planned: some facts could not be read", None,
                              blocked=f"facts incomplete ({why}); re-run once the host answers fully"))
            continue
        for op in operations:
            steps.extend(op(params, host, facts[host.name]))
    return steps


def apply(fleet, steps: Sequence[Step], on_change: Callable[[Step], Any] | None = None,
          on_step: Callable[[Step], None] | None = None, desc: str = "apply",
          execute: Callable[[Any, Step], Any] | None = None) -> dict[str, HostApply]:
    """Run the steps: hosts in parallel, each host's steps in order, a host stopping at its first failure.

    ``on_step(step)`` is called before a step runs, ``on_change(step)`` after it succeeded (the
    run's change log). The other hosts carry on when one fails. ``execute(host, step)`` carries a
    step out and returns a :class:`~runbooklib.ssh.HostResult` (default: run its command over SSH);
    a phase whose steps copy files gives its own.

    With the default execution and no ``on_step``, a host's steps go in one round trip
    (:func:`batch_script`): the same commands in the same order, each in its own subshell, the
    script stopping at the first that fails; each step's exit code comes back, so what is recorded
    is exactly what succeeded.
    """
    by_host: dict[str, list[Step]] = {}
    for s in steps:
        by_host.setdefault(s.host, []).append(s)

    def record(result: HostApply, done: list[Step], ran_after: list[Step]) -> bool:
        """Record ``done`` in order; False (and the host's error set) when the record fails."""
        for i, step in enumerate(done):
            result.applied.append(step)
            if on_change:
                try:
                    on_change(step)
                except Exception as e:  # applied, but not in the record: stop this host and say so
                    later = done[i + 1:] + ran_after
                    result.applied.extend(later)
                    result.error = f"{result.host}: {step.operation} ({step.change}) was applied but not recorded: {e}" + (
                        f"; so were, unrecorded, the {len(later)} step(s) after it in the same round trip: "
                        + "; ".join(f"{s.operation} ({s.change})" for s in later) if later else "")
                    return False
        return True

    def failed(result: HostApply, step: Step, r) -> None:
        detail = r.stderr.strip()[-300:] if r.exit_code is not None else ""
        result.error = f"{result.host}: {step.operation} ({step.change}) failed: {r.error}" + (
            f"; {detail}" if detail and detail not in r.error else "")

    def run_host(host) -> HostApply:
        result = HostApply(host.name)
        for step in by_host[host.name]:
            if step.command is None:
                result.error = f"{host.name}: {step.operation}: {step.blocked}"
                break
            if on_step:
                on_step(step)
            r = execute(host, step) if execute else fleet.run_on(host, step.command)
            if not r.ok:
                failed(result, step, r)
                break
            if not record(result, [step], []):
                break
        return result

    def run_host_batched(host) -> HostApply:
        result = HostApply(host.name)
        mine = by_host[host.name]
        runnable = list(itertools.takewhile(lambda s: s.command is not None, mine))
        if runnable:
            script, token = batch_script(runnable)
            # bounded as a whole (command_timeout per step), and by silence: each step prints a marker as it starts and ends,
            # so a step that hangs, or a link cut under it, ends the batch after one command_timeout without an answer
            r = fleet.run_on(host, script, timeout=fleet.ssh.command_timeout * len(runnable), idle=fleet.ssh.command_timeout)
            done, failure = batch_outcome(runnable, r, token)
            if not record(result, done, []):
                return result
            if failure is not None:
                failed(result, *failure)
                return result
        if len(runnable) < len(mine):
            blocked = mine[len(runnable)]
            result.error = f"{host.name}: {blocked.operation}: {blocked.blocked}"
        return result

    targets = [h for h in fleet.hosts if h.name in by_host]
    one = run_host if (execute or on_step) else run_host_batched
    return fleet.each(one, hosts=targets, desc=desc) if targets else {}


def batch_script(steps: Sequence[Step]) -> tuple[str, str]:
    """One shell script running ``steps`` in order, each in its own subshell with no input, stopping at the
    first that fails; markers (with a token of their own) delimit each step's output and carry its exit code."""
    token = secrets.token_hex(6)
    lines = []
    for i, step in enumerate(steps):
        lines.append(f"echo '@@rb-{token} {i}'; echo '@@rb-{token} {i}' >&2; ( {step.command}\n) </dev/null; rc=$?; "
                     f"echo; echo \"@@rb-{token}-rc {i} $rc\"; [ $rc -eq 0 ] || exit $rc")
    return "\n".join(lines) + "\n", token


def _segments(text: str, token: str) -> dict[int, str]:
    out: dict[int, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(f"@@rb-{token} "):
            current = int(line.split()[1])
            out[current] = []
        elif line.startswith(f"@@rb-{token}-rc "):
            current = None
        elif current is not None:
            out[current].append(line)
    return {i: "\n".join(lines) for i, lines in out.items()}


def batch_outcome(steps: Sequence[Step], r, token: str) -> tuple[list[Step], tuple[Step, Any] | None]:
    """What a :func:`batch_script` run did: the steps that succeeded, in order, and the first failure
    as ``(step, result)`` (a result of its own, as if the step had run alone), or None."""
    from ..ssh import HostResult

    codes = {}
    for line in r.stdout.splitlines():
        if line.startswith(f"@@rb-{token}-rc "):
            _, i, rc = line.split()
            codes[int(i)] = int(rc)
    done = [s for i, s in enumerate(steps) if codes.get(i) == 0]
    if len(done) == len(steps):
        return done, None
    step = steps[len(done)]
    if len(done) in codes:  # the step ran and exited non-zero
        rc = codes[len(done)]
        err = _segments(r.stderr, token).get(len(done), "")
        out = _segments(r.stdout, token).get(len(done), "")
        return done, (step, HostResult(r.host, False, out, err, rc, f"{step.command.split()[0]!r} exited {rc}: {err.strip()[-300:]}",
                                       r.seconds))
    # no exit code: the connection or the deadline ended the round trip while this step ran (or before it)
    return done, (step, HostResult(r.host, False, error=r.error or f"no exit code came back (exit {r.exit_code})", seconds=r.seconds))


def apply_first(fleet, steps: Sequence[Step], first: str, on_change: Callable[[Step], Any] | None = None,
                execute: Callable[[Any, Step], Any] | None = None, role: str = "primary", rest: str = "others"
                ) -> dict[str, HostApply]:
    """``first``'s steps, then everyone else's in parallel; nothing on the others when ``first`` failed (a replica
    is pointed at a primary that already has its accounts and settings)."""
    mine = [s for s in steps if s.host == first]
    others = [s for s in steps if s.host != first]
    results = apply(fleet, mine, on_change=on_change, execute=execute, desc=role) if mine else {}
    if any(not r.ok for r in results.values()):
        for host in dict.fromkeys(s.host for s in others):
            results[host] = HostApply(host, error=f"{host}: not changed: the {role} {first} failed first")
        return results
    if others:
        results.update(apply(fleet, others, on_change=on_change, execute=execute, desc=rest))
    return results


# -- what people read --------------------------------------------------------------------------

def plan_rows(steps: Iterable[Step]) -> list[dict]:
    return [{"host": s.host, "operation": s.operation, "change": s.change if s.command else f"BLOCKED: {s.blocked}",
             "undo": s.undo_text} for s in steps]


def plan_recap(steps: Sequence[Step]) -> list[dict]:
    """One line per host: how many steps, for which operations, and how many are blocked."""
    out = []
    for host in dict.fromkeys(s.host for s in steps):
        mine = [s for s in steps if s.host == host]
        ops = Counter(s.operation for s in mine)
        out.append({"host": host, "steps": len(mine), "blocked": sum(1 for s in mine if s.command is None),
                    "operations": ", ".join(f"{op} ({n})" if n > 1 else op for op, n in ops.items())})
    return out


def plan_summary(steps: Sequence[Step]) -> str:
    hosts = len({s.host for s in steps})
    ops = len({s.operation for s in steps})
    blocked = sum(1 for s in steps if s.command is None)
    text = f"{len(steps)} change(s) on {hosts} host(s) across {ops} operation(s)"
    return text + (f"; {blocked} blocked (need a person)" if blocked else "")


def diffs(steps: Iterable[Step]) -> str:
    """Every file change in the plan as one unified diff, host by host."""
    return "".join(f"# {s.host}: {s.operation}\n{s.diff}" for s in steps if s.diff)


def result_rows(results: dict[str, HostApply]) -> list[dict]:
    return [{"host": h, "steps applied": len(r.applied), "result": "ok" if r.ok else r.error} for h, r in results.items()]


def problems(results: dict[str, HostApply], unreachable: dict[str, str]) -> list[str]:
    """Why an apply is incomplete: hosts whose apply stopped, hosts that could not be reached."""
    return [r.error for r in results.values() if not r.ok] + [f"{h}: unreachable: {e}" for h, e in unreachable.items()]


# what a confirmation's outcome means as a runbook's verdict
_VERDICTS = {"applied": "applied", "empty": "nothing to do", "planned": "planned", "cancelled": "cancelled",
             "pending": "waiting for a decision", "failed": "failed"}


def apply_verdict(outcome_status: str, problems: Sequence[str]) -> str:
    """The verdict of a plan-and-apply runbook: ``incomplete`` when any host has a problem, else what the confirmation became."""
    return "incomplete" if problems else _VERDICTS.get(outcome_status, outcome_status)


def rollback_markdown(operations: Sequence[Operation]) -> str:
    """The rollback table a runbook's first cell shows, generated so that it cannot drift."""
    lines = ["| operation | touches | to undo |", "| --- | --- | --- |"]
    lines += [f"| {op.name} | {op.touches} | {op.undo} |" for op in operations]
    return "\n".join(lines)
