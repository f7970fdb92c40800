"""The in-notebook API: displays, the plan/apply confirmation, the change journal."""

from __future__ import annotations

import json

import pytest

from conftest import LAB_PARAMS
from runbooklib.display import Table
from runbooklib.notebook import JOURNAL_ENV, Run, open_run
from runbooklib.params import load_params
from runbooklib.phase.steps import Step
from runbooklib.secrets import Redactor


@pytest.fixture
def params():
    return load_params(LAB_PARAMS)


SWAP_OFF = [Step("w1", "swap disabled", "turn off swap", "swapoff -a", "swapon -a")]


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
    outcome = run.confirm(SWAP_OFF, lambda: calls.append(1))
    assert outcome.status == "planned" and calls == []
    assert "PLAN mode: nothing was changed" in capsys.readouterr().out


def test_headless_apply_runs_the_action(params):
    run = Run(params, "r1", apply=True, headless=True)
    outcome = run.confirm(SWAP_OFF, lambda: "done")
    assert outcome.status == "applied" and outcome.result == "done"


def test_empty_plan_changes_nothing(params):
    run = Run(params, "r1", apply=True, headless=True)
    assert run.confirm([], lambda: pytest.fail("must not run")).status == "empty"


def test_plan_display_has_a_summary_recap_and_undo(params, capsys):
    run = Run(params, "r1", apply=False, headless=True)
    run.show_plan(SWAP_OFF + [Step("w2", "swap disabled", "turn off swap", "swapoff -a", "swapon -a")])
    out = capsys.readouterr().out
    assert "Plan: 2 change(s) on 2 host(s) across 1 operation(s)" in out
    assert "Recap per host" in out and "swapon -a" in out


def test_interactive_apply_waits_for_the_click(params):
    calls = []
    run = Run(params, None, apply=False, headless=False)
    outcome = run.confirm(SWAP_OFF, lambda: calls.append(run.apply) or "ok")
    assert outcome.status == "pending" and calls == []
    apply_btn, cancel_btn, summary = outcome.widget.children[0].children
    assert summary.value == "1 change(s) on 1 host(s) across 1 operation(s)"
    apply_btn.click()
    assert outcome.status == "applied" and outcome.result == "ok"
    assert calls == [True]  # the action ran in apply mode...
    assert run.apply is False  # ...and the run went back to plan mode after it
    assert apply_btn.disabled and cancel_btn.disabled
    assert apply_btn.description == "Apply 1 change to lab"
    apply_btn.click()  # a second click (queued before the buttons disabled) must not apply twice
    assert calls == [True]


def test_interactive_cancel(params):
    run = Run(params, None, apply=False, headless=False)
    outcome = run.confirm(SWAP_OFF, lambda: pytest.fail("must not run"))
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
    assert events[1]["operation"] == "set password [redacted:database.root_password]"
    assert events[1]["change"] == "ALTER USER"
    assert pw.reveal() not in journal.read_text()


def test_open_run_defaults(params):
    run = open_run(LAB_PARAMS)
    assert run.headless is False and run.mode == "plan" and run.run_id.startswith("interactive-")
    assert run.is_lab and len(run.hosts) == 16
    banner = dict(run.banner().lines)
    assert banner["environment"] == "lab (lab); personal data stays in RU"
    assert banner["mode"] == "PLAN: read-only, nothing is changed"
    assert banner["lab"].startswith("rehearsal on the built-in lab")


def test_banner_of_a_staging_environment_says_so_and_has_no_lab_line(tmp_path):
    from conftest import lab_data, set_path, write_params

    data = lab_data()
    set_path(data, "environment.name", "moscow-prod")
    set_path(data, "environment.kind", "staging")
    for i, h in enumerate(data["inventory"]["hosts"]):
        h["address"] = f"192.0.2.{i + 10}"  # documentation addresses: parsed, never dialled
    data["ssh"]["key"] = "file:id_ed25519"
    for section in ("database", "registry", "logging"):
        data.pop(section, None)
    run = Run(load_params(write_params(tmp_path, data)), "r1", apply=True, headless=True)
    banner = dict(run.banner().lines)
    assert banner["environment"] == "moscow-prod (staging); personal data stays in RU"
    assert banner["mode"] == "APPLY: changes will be made" and "lab" not in banner
    assert run.banner().tone == "apply"
