"""The hostile suite's summary: one line per fault or input class, computed from the tests' real outcomes.

Every test here carries ``@pytest.mark.hostile(cls, runbooks)``: the class of fault or input it
exercises and the runbook(s) it covers. At the end of the session the table below is printed:
cases run, cases whose promise held, and the classes not run (slow ones without ``RUNBOOK_SLOW=1``).
A full run: ``RUNBOOK_SLOW=1 .venv/bin/python -m pytest tests/hostile``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

_OUTCOMES: dict[str, dict] = {}  # nodeid -> {cls, runbooks, outcome}


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile(cls, runbooks): the fault or input class a hostile test exercises and the runbooks it covers")


def _mark(item) -> tuple[str, tuple[str, ...]] | None:
    mark = item.get_closest_marker("hostile")
    if mark is None:
        return None
    cls, runbooks = mark.args
    return cls, (runbooks,) if isinstance(runbooks, str) else tuple(runbooks)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    found = _mark(item)
    if found is None:
        return
    entry = _OUTCOMES.setdefault(item.nodeid, {"cls": found[0], "runbooks": found[1], "outcome": None, "cases": 1})
    # a test that checks many cases in one go says how many with record_property("cases", n)
    entry["cases"] = next((v for k, v in item.user_properties if k == "cases"), entry["cases"])
    if report.skipped and entry["outcome"] is None:
        entry["outcome"] = "skipped"
    elif report.failed:
        entry["outcome"] = "failed"  # a failing setup, call or teardown breaks the promise
    elif report.when == "call" and report.passed and entry["outcome"] is None:
        entry["outcome"] = "passed"


ALL_RUNBOOKS = {p.stem for p in (Path(__file__).resolve().parents[2] / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}


def _covered(runbooks: set[str]) -> str:
    names = {Path(r).stem for r in runbooks}
    return f"all {len(names)} runbooks" if names == ALL_RUNBOOKS else ", ".join(sorted(names))


def summary_rows() -> list[dict]:
    by_class: dict[str, dict] = defaultdict(lambda: {"runbooks": set(), "planned": set(), "run": 0, "held": 0, "skipped": 0})
    for entry in _OUTCOMES.values():
        row = by_class[entry["cls"]]
        row["planned"].update(entry["runbooks"])  # covered only by the cases that ran
        if entry["outcome"] not in (None, "skipped"):
            row["runbooks"].update(entry["runbooks"])
        if entry["outcome"] == "skipped":
            row["skipped"] += entry["cases"]
        elif entry["outcome"] is not None:
            row["run"] += entry["cases"]
            row["held"] += entry["cases"] if entry["outcome"] == "passed" else 0
    rows = []
    for cls, row in by_class.items():
        if row["run"] == 0:
            verdict = "not run"
        else:
            verdict = "held" if row["held"] == row["run"] else f"NOT HELD ({row['run'] - row['held']} of {row['run']})"
        rows.append({"class": cls, "runbooks": _covered(row["runbooks"]) if row["runbooks"] else f"({_covered(row['planned'])})", "cases": row["run"],
                     "skipped": row["skipped"], "promise": verdict})
    return rows


def render_table(rows: list[dict]) -> str:
    head = ["fault or input class", "runbooks covered", "cases", "not run", "promise"]
    lines = [f"| {' | '.join(head)} |", f"|{'|'.join(' --- ' for _ in head)}|"]
    for r in rows:
        lines.append(f"| {r['class']} | {r['runbooks']} | {r['cases']} | {r['skipped']} | {r['promise']} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    rows = summary_rows()
    if not rows:
        return
    terminalreporter.section("hostile conditions: promises kept")
    terminalreporter.write_line(render_table(rows))
    if not os.environ.get("RUNBOOK_SLOW"):
        terminalreporter.write_line("(slow cases not run; a full run: RUNBOOK_SLOW=1 .venv/bin/python -m pytest tests/hostile)")
