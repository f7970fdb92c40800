"""The in-notebook API: displays, the plan/apply confirmation, the change journal."""

from __future__ import annotations

import json

import pytest

from runbooklib.display import Table
from runbooklib.notebook import JOURNAL_ENV, Run, open_run
from runbooklib.params import load_params
from runbooklib.secrets import Redactor

from conftest import LAB_PARAMS


@pytest.fixture
def params():
    return load_params(LAB_PARAMS)


def test_table_text_and_html():
    t = Table([{"host": "db1", "state": "<ok>"}, {"host": "db2", "state": None}], title="T")
    text = repr(t)
    assert text.splitlines()[0] == "T"
    assert "db1" in text and "<ok>" in text
    html = t._repr_html_()
    assert "&lt;ok&gt;" in html and "<th style='text-align:left'>host</th>" in html


def test_table_cells_are_scrubbed():
    r = Redactor()
    r.add("pw-1234567890", "database.root_password")
    t = Table([{"k": "password is pw-1234567890"}], redactor=r)
    assert "pw-1234567890" not in repr(t) and "pw-1234567890" not in t._repr_html_()


def test_headless_plan_does_not_run_the_action(params, capsys):
    calls = []
    run = Run(params, "r1", apply=False, headless=True)
    outcome = run.confirm([{"host": "w1", "change": "swap off"}], lambda: calls.append(1))
    assert outcome.status == "planned" and calls == []
    assert "PLAN mode: nothing was changed" in capsys.readouterr().out


def test_headless_apply_runs_the_action(params):
    run = Run(params, "r1", apply=True, headless=True)
    outcome = run.confirm([{"host": "w1", "change": "swap off"}], lambda: "done")
    assert outcome.status == "applied" and outcome.result == "done"


def test_empty_plan_changes_nothing(params):
    run = Run(params, "r1", apply=True, headless=True)
    assert run.confirm([], lambda: pytest.fail("must not run")).status == "empty"


def test_interactive_apply_waits_for_the_click(params):
    calls = []
    run = Run(params, None, apply=False, headless=False)
    outcome = run.confirm([{"host": "w1", "change": "swap off"}], lambda: calls.append(run.apply) or "ok")
    assert outcome.status == "pending" and calls == []
    apply_btn, cancel_btn = outcome.widget.children[0].children
    apply_btn.click()
    assert outcome.status == "applied" and outcome.result == "ok"
    assert calls == [True]  # the action ran in apply mode...
    assert run.apply is False  # ...and the run went back to plan mode after it
    assert apply_btn.disabled and cancel_btn.disabled
    apply_btn.click()  # a second click (queued before the buttons disabled) must not apply twice
    assert calls == [True]


def test_interactive_cancel(params):
    run = Run(params, None, apply=False, headless=False)
    outcome = run.confirm([{"host": "w1"}], lambda: pytest.fail("must not run"))
    outcome.widget.children[0].children[1].click()
    assert outcome.status == "cancelled"


def test_changes_go_to_the_journal_scrubbed(params, tmp_path, monkeypatch):
    journal = tmp_path / "j.jsonl"
    monkeypatch.setenv(JOURNAL_ENV, str(journal))
    run = open_run(LAB_PARAMS, run_id="r9", apply=True)
    pw = run.secret("database.root_password")
    run.record_change("db1", f"set password {pw.reveal()}", "ALTER USER")
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[0]["event"] == "kernel" and events[0]["executable"]
    assert events[1]["host"] == "db1"
    assert events[1]["action"] == "set password [redacted:database.root_password]"
    assert pw.reveal() not in journal.read_text()


def test_open_run_defaults(params):
    run = open_run(LAB_PARAMS)
    assert run.headless is False and run.mode == "plan" and run.run_id.startswith("interactive-")
    assert run.is_lab and len(run.hosts) == 16
    assert "lab" in repr(run.banner())
