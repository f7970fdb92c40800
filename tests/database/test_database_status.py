"""Replication status and lag from facts: every fault named with its host; the delayed replica judged against its delay."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from test_database_operations import converged, params_for  # noqa: E402

from runbooklib.database import status  # noqa: E402
from runbooklib.database.dialects import dialect  # noqa: E402
from runbooklib.phase.facts import Gathered  # noqa: E402


def site(tmp_path, **changes):
    p = params_for(tmp_path)
    facts = {h: converged(p, h) for h in ("db1", "db2", "db3")}
    facts["db1"]["sql"]["variables"]["gtid_binlog_pos"] = "0-1-100"
    facts["db2"]["sql"]["variables"]["gtid_slave_pos"] = "0-1-100"
    facts["db3"]["sql"]["variables"]["gtid_slave_pos"] = "0-1-40"
    facts["db3"]["heartbeat"]["lag_seconds"] = p.database.delay_seconds + 1.0
    for host, change in changes.items():
        for key, value in change.items():
            facts[host][key] = {**facts[host][key], **value} if isinstance(value, dict) and isinstance(facts[host][key], dict) else value
    return p, facts


def rows_for(p, facts, errors=None):
    return status.report(p, dialect("mariadb"), Gathered({h: f for h, f in facts.items() if h not in (errors or {})}, errors or {}, {}))


def test_a_healthy_site_reports_every_server_ok_with_positions_and_lag(tmp_path):
    p, facts = site(tmp_path)
    rows = rows_for(p, facts)
    assert [(r["host"], r["role"], r["verdict"]) for r in rows] == [("db1", "primary", "ok"), ("db2", "replica", "ok"),
                                                                    ("db3", "delayed replica", "ok")]
    assert rows[1]["behind (transactions)"] == 0 and rows[2]["behind (transactions)"] == 60
    assert rows[2]["delay (configured)"] == "30.00 days" and status.problems(rows) == []


def test_an_unreachable_replica_is_named_and_the_others_are_judged(tmp_path):
    p, facts = site(tmp_path)
    rows = rows_for(p, facts, errors={"db3": "no answer on 10.77.0.33:22 within 5 s; is the VM up?"})
    assert status.problems(rows) == ["db3 (delayed replica): unreachable: no answer on 10.77.0.33:22 within 5 s; is the VM up?"]


def test_faults_are_named_with_their_host(tmp_path):
    p, facts = site(tmp_path, db2={"replica": {**converged(params_for(tmp_path), "db2")["replica"], "io_running": "Connecting",
                                               "io_error": "Access denied for user 'repl'"},
                                   "heartbeat": {"lag_seconds": 95.0}},
                    db1={"heartbeat": {"event": "DISABLED"}})
    problems = status.problems(rows_for(p, facts))
    assert problems[0].startswith("db1 (primary): heartbeat event DISABLED")
    assert "db2 (replica): receiver Connecting: Access denied for user 'repl'" in problems[1]
    assert "applies 95.0 s behind the primary (alarm at 30 s)" in problems[1]


def test_a_delayed_replica_that_applies_late_or_without_its_delay_is_named_and_a_young_or_fresh_one_is_only_noted(tmp_path):
    p, facts = site(tmp_path)
    facts["db3"]["heartbeat"]["lag_seconds"] = 3.0  # just after a recovery: the server still holds new transactions back
    rows = rows_for(p, facts)
    assert status.problems(rows) == []
    assert status.notes(p, rows, Gathered(facts, {}, {}))[0].startswith("db3: what it applied is 3.0 s old, younger than its delay")
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "sql_delay": 0}  # the delay itself is gone: a fault
    assert "delay 0 s, the parameters say 2592000 s" in status.problems(rows_for(p, facts))[0]
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "sql_delay": p.database.delay_seconds}
    facts["db3"]["heartbeat"]["lag_seconds"] = p.database.delay_seconds + 600
    assert "beyond its delay" in status.problems(rows_for(p, facts))[0]
    facts["db3"]["heartbeat"]["lag_seconds"] = None
    rows = rows_for(p, facts)
    assert status.problems(rows) == []
    assert status.notes(p, rows, Gathered(facts, {}, {}))[0].startswith("db3: no heartbeat applied yet")


def test_a_primary_that_replicates_or_is_read_only_is_named(tmp_path):
    p, facts = site(tmp_path)
    facts["db1"]["replica"] = facts["db2"]["replica"]
    facts["db1"]["sql"]["variables"]["read_only"] = "ON"
    [problem] = status.problems(rows_for(p, facts))
    assert "replicates from 10.77.0.31: not a primary" in problem and "read-only: applications cannot write" in problem


def test_lag_samples_summary_and_figure(tmp_path):
    p, _ = site(tmp_path)
    assert status.parse_samples("1700000000.5 0.25\n1700000001.5 NULL\ngarbage\n") == [(1700000000.5, 0.25), (1700000001.5, None)]
    sampled = {"samples": [{"host": "db2", "role": "replica", "t": t, "lag": 0.2 + t / 10} for t in range(5)]
               + [{"host": "db3", "role": "delayed replica", "t": t, "lag": 2_592_000.5 + t} for t in range(5)],
               "failed": {"db1": "unreachable"}, "started": "2026-11-28T12:00:00+00:00"}
    rows = status.lag_summary(p, sampled)
    assert [r["samples"] for r in rows] == [0, 5, 5] and rows[0]["min"].startswith("failed: unreachable")
    assert rows[2]["target"] == "30.00 days" and rows[1]["max"] == "0.6 s"
    figure = status.lag_figure(p, sampled)
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "lag (days)"
    assert figure.axes[1].lines[-1].get_ydata()[0] == 30.0  # the target line, in days
    script = status.sample_script(dialect("mariadb"), 10, 1.0)
    assert "seq 10" in script and "runbooklib.heartbeat" in script
