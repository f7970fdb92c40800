"""``runbook suite``: the migration's runbooks in their declared order, one suite id, resumable.

The order is not a list kept here: each phase declares the phases it needs first
(:attr:`~runbooklib.phase.Phase.after`) and the runbooks it contributes, in order
(:attr:`~runbooklib.phase.Phase.suite`, :class:`~runbooklib.phase.SuiteEntry`); phases are sorted by
those dependencies, ties kept in the registry's order (:data:`runbooklib.phases.PHASE_PACKAGES`).

Every step is an ordinary ``runbook run`` archived as its own record; its manifest carries
``suite: {id, phase, step, index, steps, params_sha256}``, which is all the suite's state: a re-run
reads the archive, finds the newest unfinished suite of the same environment, mode and parameter
file, and resumes it (same id) at the first step that did not succeed. A step whose runbook uses
another step's result (``needs``) checks the archive for a succeeded run of it before it starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import RunbookError
from .phase import Phase, SuiteEntry

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class SuiteError(RunbookError):
    """The suite cannot start: an unknown phase or step, a dependency cycle, a missing notebook (bad input: exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Step:
    phase: str
    entry: SuiteEntry
    skip: str = ""  # why the step does not apply to these parameters (empty: it runs)

    @property
    def name(self) -> str:
        return self.entry.name


# -- order ---------------------------------------------------------------------------------------

def ordered(phases: Iterable[Phase]) -> list[Phase]:
    """Phases sorted so that each comes after every phase in its ``after``; ties in the given order."""
    phases = list(phases)
    by_name = {p.name: p for p in phases}
    for p in phases:
        unknown = [a for a in p.after if a not in by_name]
        if unknown:
            raise SuiteError(f"phase {p.name}: after names {', '.join(unknown)}, which is not a registered phase "
                             f"(runbooklib/phases.py: {', '.join(by_name)})")
    done: list[Phase] = []
    placed: set[str] = set()
    while len(done) < len(phases):
        ready = next((p for p in phases if p.name not in placed and all(a in placed for a in p.after)), None)
        if ready is None:
            left = [p.name for p in phases if p.name not in placed]
            raise SuiteError(f"the phases {', '.join(left)} wait for each other (a cycle in their `after`); "
                             "one of them must not name the other")
        done.append(ready)
        placed.add(ready.name)
    return done


def _is_set(params, path: str) -> bool:
    node = params
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return False
    return True


def steps(params, phases: Iterable[Phase] | None = None) -> list[Step]:
    """Every step of the suite for ``params``, in order; a step that does not apply says why in ``skip``."""
    if phases is None:
        from .phases import phases as registered

        phases = registered()
    out = []
    for ph in ordered(phases):
        for entry in ph.suite:
            skip = ""
            if ph.section and not _is_set(params, ph.section):
                skip = f"the parameter file has no {ph.section} section"
            elif entry.when and not _is_set(params, entry.when):
                skip = f"{entry.when} is not set in the parameter file"
            out.append(Step(ph.name, entry, skip))
    names = [s.name for s in out]
    for s in out:
        if names.count(s.name) > 1:
            raise SuiteError(f"two suite steps are named {s.name}; give one a label (SuiteEntry(label=...)) in phase {s.phase}")
        for need in s.entry.needs:
            if need not in names or names.index(need) > names.index(s.name):
                raise SuiteError(f"step {s.name} (phase {s.phase}) needs {need}, which is not a step before it")
    return out


def select(all_steps: list[Step], start: str | None = None, only: Iterable[str] = ()) -> list[Step]:
    """The steps asked for: from ``start`` (a phase or a step) on, or ``only`` these phases and steps."""
    phase_names = {s.phase for s in all_steps}
    step_names = {s.name for s in all_steps}

    def known(name: str, option: str) -> None:
        if name not in phase_names and name not in step_names:
            raise SuiteError(f"{option} {name}: no such phase or step; phases: {', '.join(dict.fromkeys(s.phase for s in all_steps))}; "
                             f"steps: {', '.join(s.name for s in all_steps)}")

    only = list(only)
    for name in only:
        known(name, "--only")
    chosen = [s for s in all_steps if not only or s.phase in only or s.name in only]
    if start:
        known(start, "--from")
        first = next(i for i, s in enumerate(chosen) if start in (s.phase, s.name)) if any(
            start in (s.phase, s.name) for s in chosen) else len(chosen)
        chosen = chosen[first:]
    return chosen


# -- state, from the archive -----------------------------------------------------------------------

def good(m: dict, allow_not_ready: bool = False) -> bool:
    """Whether a run's record counts as done: it succeeded and its verdict is not a bad one (unless allowed)."""
    from .notebook import BAD_VERDICTS

    verdict = (m.get("verdict") or {}).get("verdict")
    return m.get("status") == "succeeded" and (allow_not_ready or verdict not in BAD_VERDICTS)


def env_manifests(archive, environment: str) -> list[dict]:
    """The manifests of the runs on ``environment``, in the archive's order (read once per suite command)."""
    from .changes import _manifests  # the one reader of every manifest (through the Archive)

    return [m for m in _manifests(archive) if m.get("record") == "runbook run" and (m.get("environment") or {}).get("name") == environment]


def _suite_records(manifests: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in manifests:
        if m.get("suite"):
            out.setdefault(m["suite"]["id"], []).append(m)
    return out


@dataclass
class Resume:
    suite_id: str
    done: dict[str, dict]  # step name -> the manifest of its good run in this suite
    why: str


def find_resumable(manifests: list[dict], mode: str, params_sha256: str, wanted: list[Step]) -> Resume | None:
    """The newest suite of this environment, mode and parameter file with a step of ``wanted`` not yet done."""
    records = _suite_records(manifests)
    for suite_id in sorted(records, key=lambda k: max(m.get("seq", 0) for m in records[k]), reverse=True):
        ms = records[suite_id]
        same = [m for m in ms if m["suite"].get("mode") == mode and m["suite"].get("params_sha256") == params_sha256]
        if not same:
            continue
        allow = {s.name: s.entry.allow_not_ready for s in wanted}
        done = {m["suite"]["step"]: m for m in same if good(m, allow.get(m["suite"]["step"], False))}
        if all(s.name in done or s.skip for s in wanted):
            return None  # the newest such suite finished what is asked: a new suite
        last = max(same, key=lambda m: m.get("seq", 0))
        return Resume(suite_id, done, f"suite {suite_id} stopped at {last['suite']['step']} (run {last['run_id']} "
                                      f"{last.get('status')}); resuming it")
    return None


def need_met(manifests: list[dict], need: Step) -> dict | None:
    """The newest good run of step ``need`` among ``manifests`` (this suite's, an earlier one's, or a run by hand), or None.

    A step that changes things counts only when it ran with --apply: its plan is not its result. A run made
    outside a suite counts for a step that is its runbook under its own name.
    """
    best = None
    for m in manifests:
        s = m.get("suite") or {}
        by_hand = not s and not need.entry.label and m.get("notebook") == need.entry.runbook.rsplit("/", 1)[-1]
        if s.get("step") != need.name and not by_hand:
            continue
        if good(m, need.entry.allow_not_ready) and (m.get("mode") == "apply" or not need.entry.apply):
            best = m
    return best


# -- running -----------------------------------------------------------------------------------------

@dataclass
class StepResult:
    step: Step
    status: str  # succeeded, failed, skipped, done before, blocked, interrupted
    run_id: str = ""
    detail: str = ""


@dataclass
class SuiteResult:
    suite_id: str
    results: list[StepResult]
    exit_code: int
    stopped_at: StepResult | None = None


def run_suite(params_file: str | Path, *, apply: bool = False, start: str | None = None, only: Iterable[str] = (),
              new: bool = False, archive_root: str | Path | None = None, notebooks: str | Path | None = None,
              stream: TextIO | None = sys.stderr, out: TextIO = sys.stdout, operator_name: str | None = None,
              why: str | None = None, timeout: float | None = None, change: str | None = None,
              key: str | Path | None = None) -> SuiteResult:
    """Run the suite's steps (see the module's doc); stops at the first step that does not end well."""
    from .archive import Archive, default_root, suite_lock
    from .params import load_params
    from .references import require_references
    from .runner import operator

    params = load_params(params_file)
    require_references(params)
    folder = Path(notebooks) if notebooks else (NOTEBOOKS if NOTEBOOKS.is_dir() else Path.cwd() / "notebooks")
    all_steps = steps(params)
    wanted = select(all_steps, start, only)
    for s in wanted:
        if not (folder / f"{s.entry.runbook}.ipynb").is_file():
            raise SuiteError(f"step {s.name} (phase {s.phase}): no notebook {folder / s.entry.runbook}.ipynb")
    archive = Archive(archive_root or default_root())
    env = params.environment.name
    # the whole environment, for the whole suite: no single `runbook run` interleaves with its steps
    holder = {"operator": operator(operator_name), "pid": os.getpid(), "suite": "(starting)",
              "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "archive": archive.location}
    with suite_lock(env, holder), _no_kernel_left():
        return _run_steps(params, params_file, archive, folder, all_steps, wanted, apply=apply, start=start, new=new,
                          stream=stream, out=out, operator_name=operator_name, why=why, timeout=timeout, change=change, key=key)


@contextlib.contextmanager
def _no_kernel_left():
    """Before the suite releases the environment: the last steps' kernels have exited, and a kernel launched
    ahead for a step that never ran (the suite stopped, or was stopped) is stopped."""
    from .runner import _finish_kernel_stops, discard_spare_kernel

    try:
        yield
    finally:
        discard_spare_kernel()
        _finish_kernel_stops()


def _run_steps(params, params_file, archive, folder: Path, all_steps: list[Step], wanted: list[Step], *, apply: bool,
               start: str | None, new: bool, stream: TextIO | None, out: TextIO, operator_name: str | None, why: str | None,
               timeout: float | None, change: str | None, key) -> SuiteResult:
    from .archive import update_suite_holder
    from .runner import _add_stage, new_run_id, recover_killed_runs, run_notebook

    recover_killed_runs(archive, stream)
    archive.check_ready()
    env = params.environment.name
    mode = "apply" if apply else "plan"
    known = env_manifests(archive, env)  # this environment's records; each new run is added as it ends
    resume = None if new else find_resumable(known, mode, params.sha256, wanted)
    if resume:
        suite_id, done = resume.suite_id, resume.done
        print(f"suite {suite_id}: {resume.why}", file=out)
    else:
        suite_id, done = f"suite-{new_run_id()}", {}
        print(f"suite {suite_id}: {len(wanted)} step(s) on {env} in {mode} mode ({params.source})", file=out)
    update_suite_holder(env, suite=suite_id)
    results: list[StepResult] = []
    code = 0
    stopped = None
    for i, s in enumerate(wanted, 1):
        label = f"[suite {i}/{len(wanted)}] {s.phase}/{s.name}"
        if s.skip:
            results.append(StepResult(s, "skipped", detail=s.skip))
            print(f"{label}: skipped ({s.skip})", file=out)
            continue
        # a step done in this suite is skipped unless asked for: --from runs its phase and what follows again
        if s.name in done and not start:
            results.append(StepResult(s, "done before", done[s.name]["run_id"], "succeeded earlier in this suite"))
            print(f"{label}: done before in this suite (run {done[s.name]['run_id']}); skipped", file=out)
            continue
        unmet = []
        for need in s.entry.needs:
            needed = next(x for x in all_steps if x.name == need)  # steps() checked that it exists, earlier
            if needed.skip:
                continue  # not part of this site (its section is absent): nothing to need
            if need_met(known, needed) is None:
                unmet.append(need)
        if unmet:
            detail = (f"{s.name} uses the result of {', '.join(unmet)}, and the archive holds no succeeded run of it on "
                      f"{env} (one that applied, for a step that changes things); run it first (runbook suite --params {params.source} "
                      f"--from {unmet[0]}{' --apply' if apply else ''})")
            results.append(StepResult(s, "blocked", detail=detail))
            stopped, code = results[-1], 2
            print(f"{label}: blocked: {detail}", file=out)
            break
        print(f"{label}: {s.entry.runbook}", file=out)
        out.flush()
        step_apply = apply and s.entry.apply
        suite_info = {"id": suite_id, "phase": s.phase, "step": s.name, "index": all_steps.index(s) + 1,
                      "steps": len(all_steps), "mode": mode, "applies": step_apply,
                      "allow_not_ready": s.entry.allow_not_ready, "params_sha256": params.sha256}
        # the next step that would run, if this one ends well: its kernel boots while this step runs
        after = next((x for x in wanted[i:] if not x.skip and (x.name not in done or start)), None)
        t_run = time.perf_counter()
        result = run_notebook(folder / f"{s.entry.runbook}.ipynb", params_file, apply=step_apply, timeout=timeout,
                              archive_root=archive.root, stream=stream, summary_stream=stream, operator_name=operator_name,
                              why=why, change=change, key=key, suite=suite_info,
                              next_notebook=folder / f"{after.entry.runbook}.ipynb" if after else None)
        _add_stage("runner (whole call)", time.perf_counter() - t_run)
        m = result.manifest
        known.append(m)
        verdict = result.verdict or ""
        if result.signal:
            results.append(StepResult(s, "interrupted", result.run_id, f"stopped by signal {result.signal}"))
            stopped, code = results[-1], 128 + result.signal
            break
        rc = result.exit_code(allow_not_ready=s.entry.allow_not_ready)
        if rc == 0:
            results.append(StepResult(s, "succeeded", result.run_id, f"{verdict or 'no verdict'}, {len(m['changes'])} change(s)"))
            print(f"{label}: succeeded: {verdict or 'no verdict'}, {len(m['changes'])} change(s) applied (run {result.run_id})", file=out)
            continue
        failure = m.get("failure") or {}
        if failure:
            where = f" at {failure['cell']}" if failure.get("cell") else ""
            detail = f"run {result.run_id} {result.status}{where}: {failure.get('ename')}: {failure.get('evalue')}"
        else:
            problems = (m.get("verdict") or {}).get("problems") or []
            detail = f"run {result.run_id} ended with verdict {verdict}" + (f": {problems[0]}" if problems else "") + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        results.append(StepResult(s, "failed", result.run_id, detail))
        stopped, code = results[-1], rc
        break
    if stopped is not None:
        print(f"suite {suite_id} stopped at phase {stopped.step.phase}, step {stopped.step.name}: {stopped.detail}", file=out)
        print(f"  fix the cause and run the same command again: the suite resumes at {stopped.step.name} "
              "(steps that succeeded are not run again; --new starts over)", file=out)
    else:
        ran = sum(r.status == "succeeded" for r in results)
        print(f"suite {suite_id} complete: {ran} step(s) run, {sum(r.status == 'done before' for r in results)} done before, "
              f"{sum(r.status == 'skipped' for r in results)} skipped", file=out)
    print(f"  archive: {archive.root}  (runbook report writes the browsable record)", file=out)
    return SuiteResult(suite_id, results, code, stopped)


def cmd_suite(args) -> int:
    if args.list:
        from .params import load_params

        for i, s in enumerate(steps(load_params(args.params)), 1):
            e = s.entry
            notes = [n for n in ("plan only" if not e.apply else "", "a report: a bad verdict does not stop" if e.allow_not_ready else "",
                                 f"needs {', '.join(e.needs)}" if e.needs else "", f"skipped: {s.skip}" if s.skip else "") if n]
            print(f"{i:2}. {s.phase}/{s.name}  ({e.runbook}.ipynb)" + (f"  [{'; '.join(notes)}]" if notes else ""))
        return 0
    r = run_suite(args.params, apply=args.apply, start=args.start, only=args.only or (), new=args.new,
                  archive_root=args.archive, notebooks=args.notebooks, operator_name=args.operator, why=args.reason,
                  timeout=args.timeout, change=args.change, key=args.key)
    return r.exit_code


def add_parser(sub) -> None:
    """``runbook suite`` (registered by :func:`runbooklib.cli.build_parser`)."""
    p = sub.add_parser("suite", help="run the migration's runbooks in their declared order, resumable, under one suite id")
    p.add_argument("--params", required=True, type=Path, help="parameter file (params/<environment>.yaml)")
    p.add_argument("--apply", action="store_true", help="make changes (default: every step plans only)")
    p.add_argument("--from", dest="start", metavar="PHASE",
                   help="start at this phase (or step), running it and the steps after it even if they are done")
    p.add_argument("--only", nargs="+", metavar="PHASE", help="run only these phases (or steps); done ones are skipped")
    p.add_argument("--new", action="store_true", help="start a new suite instead of resuming an unfinished one")
    p.add_argument("--list", action="store_true", help="print the steps in order, with what each needs, and exit")
    p.add_argument("--notebooks", type=Path, metavar="DIR", help="where the runbooks are (default: the project's notebooks/)")
    p.add_argument("--timeout", type=float, metavar="S", help="fail a cell that runs longer than S seconds")
    p.add_argument("--reason", metavar="TEXT", help="why (recorded in every run); default $RUNBOOK_REASON")
    p.add_argument("--operator", metavar="NAME", help="who runs it; default $RUNBOOK_OPERATOR, else user@host")
    p.add_argument("--change", metavar="ID", help="the change the runs belong to; default $RUNBOOK_CHANGE")
    p.add_argument("--key", metavar="FILE", help="where approvals are required: the operator's SSH key")
    p.set_defaults(func=cmd_suite)
