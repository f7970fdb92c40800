"""The in-notebook API: one call at the top of every runbook opens the run.

    run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)

The run holds the validated parameters and hosts, the mode (plan or apply), the change log, and the
display helpers. Under ``runbook run`` (headless) the runner passes ``run_id`` and ``apply``; the
confirmation then follows ``apply`` instead of waiting for a click. Opened by hand in JupyterLab
(``run_id`` left as None) the same notebook asks the engineer with buttons.

Changes and kernel facts go to the run's journal (``$RUNBOOK_JOURNAL``, set by the runner), from
which the runner builds the archived manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .display import Banner, Details, Table, in_notebook, progress, show
from .errors import RunbookError
from .params import Params, load_params
from .schema import Host
from .secrets import Redactor, Secret

JOURNAL_ENV = "RUNBOOK_JOURNAL"
# verdicts that make `runbook run` exit 4: the notebook ran, but what it found is not good
BAD_VERDICTS = ("not ready", "incomplete", "not compliant")  # not compliant: 14-data-residency


def _new_id() -> str:
    import secrets

    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Change:
    """One change a run made to a host (recorded as it happens, archived in the manifest).

    The same words as the step that made it: host, operation, change.
    """

    host: str
    operation: str
    change: str = ""
    at: str = field(default_factory=utcnow)


@dataclass
class Confirmation:
    """What became of a plan.

    ``empty`` (nothing to do), ``planned`` (headless, not applied), ``pending`` (waiting for a click),
    ``applying``, ``applied``, ``failed`` (the action raised) or ``cancelled``.
    """

    status: str
    result: Any = None
    widget: Any = None


class Run:
    """One execution of a runbook against one environment."""

    def __init__(self, params: Params, run_id: str | None, apply: bool, headless: bool):
        self.params = params
        self.run_id = run_id or "interactive-" + _new_id()
        self.apply = bool(apply)
        self.headless = headless
        self.changes: list[Change] = []
        self.redactor = Redactor()
        self._journal = os.environ.get(JOURNAL_ENV)
        self.plans: list[dict] = []  # every confirmation's plan part (runbooklib.approvals.plan_part), in order
        self._record = None  # the archive side of an interactive run (runbooklib.interactive)
        self._finished = False
        self._lock = threading.Lock()

    # -- facts about the run -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "apply" if self.apply else "plan"

    @property
    def environment(self):
        return self.params.environment

    @property
    def is_lab(self) -> bool:
        return self.params.environment.kind == "lab"

    @property
    def hosts(self) -> list[Host]:
        return self.params.hosts

    def hosts_with(self, role: str) -> list[Host]:
        return self.params.hosts_with(role)

    def fleet(self):
        """SSH to this environment's hosts (pinned keys, bounded parallelism), with progress bars.

        One fleet per run, its connections opened on first use and reused by every cell; the run
        closes them when it finishes (``finish``) or the kernel exits, so no cell closes them by hand.
        """
        if getattr(self, "_fleet", None) is None:
            import atexit

            from .ssh import Fleet

            self._fleet = Fleet.from_params(self.params, progress=lambda total, desc: self.progress(total=total, desc=desc))
            atexit.register(self.close)
        return self._fleet

    def close(self) -> None:
        """Close the run's connections (idempotent)."""
        fleet = getattr(self, "_fleet", None)
        if fleet is not None:
            fleet.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def secret(self, field: str) -> Secret:
        """Resolve a secret field now; its value is scrubbed from everything this run shows."""
        value = self.params.secret(field)
        self.redactor.add(value.reveal(), field)
        return value

    # -- the record --------------------------------------------------------------------------
    def _write_journal(self, event: dict) -> None:
        if self._journal:
            with open(self._journal, "a") as f:
                f.write(json.dumps(self.redactor.scrub_obj(event)) + "\n")

    def record_change(self, host: str, operation: str, change: str = "") -> Change:
        """Note a change made to ``host``; every applied step is recorded once."""
        if self._finished:
            raise RunbookError(f"run {self.run_id} is finished and archived; a change made now would be in no record. "
                               "Run the open_run cell again to start a new run")
        entry = Change(host, self.redactor.scrub(operation), self.redactor.scrub(change))
        with self._lock:  # apply steps on many hosts record from many threads
            self.changes.append(entry)
            self._write_journal({"event": "change", **asdict(entry)})
        print(f"changed: {host}  {entry.operation}: {entry.change}", flush=True)
        return entry

    def record(self, step) -> Change:
        """Record an applied :class:`~runbooklib.phase.steps.Step` (the ``on_change`` of an apply)."""
        return self.record_change(step.host, step.operation, step.change)

    # -- displays ----------------------------------------------------------------------------
    def table(self, rows: Sequence[Any], columns: Sequence[str] | None = None, title: str = "",
              status: Callable[[int, str], str] | None = None, collapsed: bool = False) -> None:
        # shown, not returned: a table as a cell's last expression would otherwise be shown twice
        show(Table(rows, columns, title, self.redactor, status, collapsed))

    def progress(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None):
        return progress(iterable, desc=desc, total=total, headless=self.headless)

    def banner(self) -> Banner:
        env = self.params.environment
        lines = [
            ("runbook run", self.run_id),
            ("environment", f"{env.name} ({env.kind}); personal data stays in {env.data_country}"),
            ("parameters", f"{self.params.source} (sha256 {self.params.sha256[:12]})"),
            ("hosts", str(len(self.params.hosts))),
            ("mode", "APPLY: changes will be made" if self.apply else "PLAN: read-only, nothing is changed"),
            ("driven by", "runbook runner (headless)" if self.headless else "an engineer (interactive)"),
        ]
        if self.is_lab:
            lines.append(("lab", "rehearsal on the built-in lab: hosts are simulated VMs on one machine"))
        tone = "apply" if self.apply else ("lab" if self.is_lab else "info")
        return Banner(lines, tone)

    def show_checks(self, checks: Sequence[Any], title: str) -> None:
        """Checks as people read them: a recap per host, the failing rules, then the host x rule figure."""
        from .phase import checks as C

        recap = C.recap_by_host(checks)
        tones = {"ready": "ok", "not ready": "bad", "unreachable": "bad"}
        self.table(recap, title=f"{title}: recap per host",
                   status=lambda i, col: tones.get(recap[i]["verdict"], "") if col == "verdict" else "")
        by_rule = C.recap_by_rule(checks)
        if by_rule:
            self.table(by_rule, title=f"{len(by_rule)} rule(s) failing")
        if checks and in_notebook():
            C.matrix_figure(checks, title=title)  # the inline backend shows it under the cell

    def show_plan(self, steps: Sequence[Any], title: str = "Plan") -> None:
        """A plan: one summary line, a recap per host, every step with its undo (collapsed), file diffs (collapsed)."""
        from .phase import steps as S

        if not steps:
            show("Nothing to change: every host is already as planned.")
            return
        show(f"{title}: {S.plan_summary(steps)}")
        self.table(S.plan_recap(steps), title="Recap per host")
        self.table(S.plan_rows(steps), title=f"Every step, with its undo ({len(steps)})", collapsed=True)
        text = S.diffs(steps)
        if text:
            show(Details(f"File changes as diffs ({sum(1 for s in steps if s.diff)} files)", self.redactor.scrub(text)))

    def confirm(self, steps: Sequence[Any], action: Callable[[], Any], title: str = "Plan") -> Confirmation:
        """Show the plan of ``steps``; run ``action`` only with consent.

        Headless, consent is the ``apply`` parameter. Interactive, it is a click on *Apply* (the
        action then runs in the button's callback, its output under the buttons).
        """
        if not steps:
            show("Nothing to change: every host is already as planned.")
            return Confirmation("empty")
        if self._finished:
            raise RunbookError(f"run {self.run_id} is finished and archived; run the open_run cell again to plan and "
                               "apply in a new run (so that its changes are recorded)")
        from .approvals import plan_part

        index, part = len(self.plans), plan_part(title, steps, self.redactor.scrub)
        self.plans.append(part)
        self._write_journal({"event": "plan", **part})
        inner_action = action

        def action():  # an environment that requires approvals: only the approved plan runs
            self._approved_or_raise(index, part)
            return inner_action()
        if self._record is not None:  # an interactive apply takes the lock a headless run would
            inner = action

            def action():
                with self._record.apply_lock():
                    return inner()
        self.show_plan(steps, title)
        if self.headless:
            if not self.apply:
                approvals = self.params.environment.approvals
                needs = (f" {self.environment.name} requires {approvals.required} approval(s) of this plan first: "
                         f"`runbook approve {self.run_id}`." if approvals else "")
                show(f"PLAN mode: nothing was changed. Re-run with --apply to make these {len(steps)} changes.{needs}")
                return Confirmation("planned")
            return Confirmation("applied", action())
        from .phase.steps import plan_summary

        return self._confirm_widget(len(steps), action, plan_summary(steps))

    def _approved_or_raise(self, index: int, part: dict) -> None:
        """Raise :class:`~runbooklib.approvals.ApprovalError` (nothing has run) unless this plan part may be applied."""
        rules = self.params.environment.approvals
        if rules is None:
            return
        from .approvals import ApprovalError, gate

        if self._record is not None:  # interactive: read and verify the approvals now
            granted = self._record.approvals()
        else:
            try:
                granted = json.loads((Path(self._journal).parent / "run.json").read_text())["approvals"]
            except (TypeError, OSError, ValueError, KeyError):
                granted = None
        if granted is None:
            raise ApprovalError(f"{self.environment.name} requires approvals before an apply, and this run has no record "
                                "to check them against: apply with `runbook run --apply` or from JupyterLab")
        plan_run, refusal = gate(rules.required, granted["plans"], granted["operator"], index, part, self.params.sha256,
                                 granted["git_commit"], self.environment.name, granted["notebook"],
                                 granted.get("git_dirty", False))
        if refusal:
            raise ApprovalError(refusal)
        self._write_journal({"event": "approved plan", "plan_run": plan_run, "part": index})
        approvers = next(", ".join(g["approvers"]) for g in granted["plans"] if g["plan_run"] == plan_run)
        show(f"Approved plan part {index + 1} ({part['title']}): plan run {plan_run}, approved by {approvers}: applying.")

    def finish(self, problems: Sequence[str] = (), verdict: str | None = None) -> None:
        """End the runbook with a verdict: the last output, journaled for the record, the runner's exit code.

        A verdict in :data:`BAD_VERDICTS` (``not ready``, ``incomplete``) makes ``runbook run`` exit 4
        (0 with ``--allow-not-ready``); every problem is listed under it. Nothing is raised: the
        notebook ran to its end, and what it found is the verdict.
        """
        if self._finished:
            raise RunbookError(f"run {self.run_id} was already finished")
        verdict = verdict or ("incomplete" if problems else "done")
        problems = [self.redactor.scrub(p) for p in problems]
        self._write_journal({"event": "verdict", "verdict": verdict, "problems": problems, "at": utcnow()})
        self.close()
        self._finished = True
        lines = [f"VERDICT: {verdict}" + (f" ({len(problems)} problem(s))" if problems else "")]
        lines += [f"  - {p}" for p in problems[:50]] + ([f"  ... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        show("\n".join(lines))
        if self._record is not None:
            from .interactive import finished_line

            show(finished_line(self._record.close("failed" if verdict == "failed" else "succeeded",
                                                  "the apply failed" if verdict == "failed" else "")))

    def _confirm_widget(self, count: int, action: Callable[[], Any], summary: str = "") -> Confirmation:
        import ipywidgets as w

        env = self.params.environment.name
        apply_btn = w.Button(description=f"Apply {count} change{'s' if count != 1 else ''} to {env}",
                             button_style="danger", icon="check", layout=w.Layout(width="auto"))
        cancel_btn = w.Button(description="Cancel", icon="times")
        out = w.Output()
        box = w.VBox([w.HBox([apply_btn, cancel_btn, w.Label(summary)]), out])
        outcome = Confirmation("pending", widget=box)
        waiting = in_notebook()  # in a kernel the cell holds until the decision (see _wait_for_decision)

        def on_apply(_):
            if outcome.status != "pending":  # a double click queued before the buttons disabled
                return
            outcome.status = "applying"
            apply_btn.disabled = cancel_btn.disabled = True
            # in a kernel the cell waits for this click, so what the apply prints belongs under that cell
            with (contextlib.nullcontext() if waiting else out):
                self.apply = True
                try:
                    outcome.result = action()
                    outcome.status = "applied"
                    if not waiting:  # a waiting cell says it itself, once the click is handled
                        print(self._decision_line(outcome))
                except Exception:
                    outcome.status = "failed"
                    raise
                finally:
                    self.apply = False

        def on_cancel(_):
            if outcome.status != "pending":
                return
            apply_btn.disabled = cancel_btn.disabled = True
            outcome.status = "cancelled"
            if not waiting:
                with out:
                    print(self._decision_line(outcome))

        apply_btn.on_click(on_apply)
        cancel_btn.on_click(on_cancel)
        show(box)
        if waiting:
            self._wait_for_decision(outcome)
            print(self._decision_line(outcome))
        return outcome

    def _decision_line(self, outcome: Confirmation) -> str:
        if outcome.status == "applied":
            return f"Applied. {len(self.changes)} change(s) recorded in this run."
        return "Cancelled: nothing was changed."

    def _wait_for_decision(self, outcome: Confirmation) -> None:
        """Hold the cell (and so Run All) until the engineer decides and the action has run.

        The kernel keeps handling widget events meanwhile (jupyter-ui-poll), so the click reaches
        the callback; the cells below then show the real outcome instead of "pending".
        """
        import time

        from jupyter_ui_poll import ui_events

        with ui_events() as poll:
            while outcome.status in ("pending", "applying"):
                poll(10)
                time.sleep(0.05)
        if outcome.status == "failed":
            problem = "the apply failed; its error is shown above, and every change made before it is in the run's change log"
            self.finish([problem], verdict="failed")  # the record says failed, not "the kernel shut down"
            raise RunbookError(problem)


def open_run(params_file: str | Path, run_id: str | None = None, apply: bool = False,
             headless: bool | None = None) -> Run:
    """Open a run: validate the parameters, show the banner, start the journal.

    ``headless`` defaults to True when a runner passed ``run_id``.
    """
    params = load_params(params_file)
    run = Run(params, run_id, apply, headless=run_id is not None if headless is None else headless)
    if not run.headless and in_notebook():  # an engineer in JupyterLab: the run is recorded all the same
        from . import interactive

        run._record = interactive.start(run)
    run._write_journal({
        "event": "kernel",
        "python": platform.python_version(),
        "executable": sys.executable,
        "implementation": platform.python_implementation(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "runbooklib": __version__,
        "at": utcnow(),
    })
    show(run.banner())
    return run
