"""The failover's logic without a server: where a failover stands, its steps in order, the old primary's own
transactions counted from recorded binlogs, the verdicts."""

from __future__ import annotations

from pathlib import Path

from test_database_operations import converged, params_for

from runbooklib.database import failover, recovery, switchover
from runbooklib.database.dialects import dialect
from runbooklib.database.operations import desired_config
from runbooklib.phase.facts import Gathered

BINLOGS = Path(__file__).resolve().parents[1] / "data" / "database" / "binlog"
MARIADB_TX = recovery.parse_binlog((BINLOGS / "mariadb-10.11-insert-then-delete.txt").read_text(), "mysql-bin.000001")
PROMOTED_MARKER = failover.marker_text("db1", "0-180682783-17", "run-1")


def topology(tmp_path, **extra):
    p = params_for(tmp_path, {"params": {"database.switchover": {"failover": True, **extra}}})
    return p, {h: converged(p, h) for h in ("db1", "db2", "db3")}


def failed_over(p, facts):
    """The facts after the failover: db2 promoted and marked, db3 re-pointed; db1 as it boots (writable, no source)."""
    facts["db2"]["replica"] = None
    facts["db2"]["sql"]["variables"]["read_only"] = "OFF"
    facts["db2"]["failover_marker"] = PROMOTED_MARKER
    facts["db2"]["config"] = desired_config(switchover.swapped(p), p.host("db2"))
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "source_host": str(p.host("db2").address)}
    return facts


def test_a_lost_primary_with_a_running_replica_is_a_failover_and_the_planned_switchover_says_how(tmp_path):
    p, facts = topology(tmp_path)
    del facts["db1"]
    g = Gathered(facts, {"db1": "connect timeout"}, {})
    assert failover.situation(p, g) == (failover.FAILOVER, [])
    planned = params_for(tmp_path, {"params": {"database.switchover": {}}})
    blockers = switchover.preflight(planned, None, g)
    assert blockers[0] == "db1: unreachable: connect timeout"
    assert "set database.switchover.failover: true" in blockers[1]
    # a server that does not answer on a VM that does is lost too
    p, facts = topology(tmp_path)
    facts["db1"]["sql"] = {"answering": False, "error": "ERROR 2002 (HY000): Can't connect", "variables": {}}
    assert failover.situation(p, Gathered(facts, {}, {})) == (failover.FAILOVER, [])


def test_a_failover_is_refused_while_the_primary_answers_and_when_the_candidate_cannot_take_over(tmp_path):
    p, facts = topology(tmp_path)
    mode, why = failover.situation(p, Gathered(facts, {}, {}))
    assert mode == failover.BLOCKED and why[0].startswith("db1: it answers and db2 replicates from it: the primary is not lost")
    del facts["db1"]
    facts["db2"]["replica"] = {**facts["db2"]["replica"], "sql_running": "No", "sql_error": "Duplicate entry"}
    assert failover.situation(p, Gathered(facts, {"db1": "x"}, {}))[1] == [
        "db2: its applier is not running (Duplicate entry): what it received would not be applied; fix it first"]
    assert failover.situation(p, Gathered({"db3": facts["db3"]}, {"db1": "x", "db2": "no route"}, {}))[1] == [
        "db2: unreachable: no route: the candidate must answer to take over"]


def test_the_failover_plan_stops_receiving_applies_what_was_received_promotes_marks_and_keeps_the_delay(tmp_path):
    p, facts = topology(tmp_path)
    del facts["db1"]
    steps = failover.plan(p, Gathered(facts, {"db1": "down"}, {}), failover.FAILOVER)
    assert [(s.host, s.operation) for s in steps] == [("db2", "stop receiving"), ("db2", "apply received"), ("db2", "mark promotion"),
                                                      ("db2", "promote"), ("db3", "re-point"), ("db2", "drop-in")]
    assert steps[0].statements == ("STOP SLAVE IO_THREAD",) and steps[0].undo == "START SLAVE IO_THREAD"
    assert "MASTER_HOST = '10.77.0.32'" in steps[4].statements[1] and "MASTER_DELAY = 2592000" in steps[4].statements[1]
    assert "+read_only = OFF\n" in steps[5].diff
    assert not any(s.host == "db1" for s in steps)  # nothing is asked of the lost server


def test_while_the_old_primary_is_down_a_run_waits_and_once_back_it_is_fenced_counted_and_rejoined(tmp_path):
    p, facts = topology(tmp_path)
    facts = failed_over(p, facts)
    down = {k: v for k, v in facts.items() if k != "db1"}
    assert failover.situation(p, Gathered(down, {"db1": "down"}, {})) == (failover.WAITING, [])
    assert failover.plan(p, Gathered(down, {"db1": "down"}, {}), failover.WAITING) == []  # converged while db1 is down
    # a failover that stopped before the delayed replica was re-pointed: the next run does it
    stale = {**down, "db3": {**down["db3"], "replica": {**down["db3"]["replica"], "source_host": str(p.host("db1").address)}}}
    steps = failover.plan(p, Gathered(stale, {"db1": "down"}, {}), failover.WAITING)
    assert [(s.host, s.operation) for s in steps] == [("db3", "re-point")] and "MASTER_DELAY = 2592000" in steps[0].statements[1]
    assert failover.verdict(failover.WAITING, "empty", None, []) == "failed over"
    assert "boots WRITABLE" in failover.pending(failover.WAITING, None, p)

    facts["db1"]["sql"]["variables"]["read_only"] = "OFF"
    facts["db1"]["heartbeat"]["event"] = "ENABLED"
    g = Gathered(facts, {}, {})
    assert failover.situation(p, g) == (failover.REJOIN, [])
    steps = failover.plan(p, g, failover.REJOIN)
    assert [(s.host, s.operation) for s in steps] == [("db1", "fence"), ("db1", "count"), ("db1", "rejoin"), ("db1", "drop-in")]
    assert steps[0].statements[-1] == "SET GLOBAL read_only = ON" and "DISABLE ON SLAVE" in steps[0].statements[1]
    assert list(steps[2].statements[:3]) == ["STOP SLAVE", "RESET MASTER", "SET GLOBAL gtid_slave_pos = '0-180682783-17'"]
    assert "MASTER_HOST = '10.77.0.32'" in steps[2].statements[4] and "MASTER_DELAY = 0" in steps[2].statements[4]
    assert "mariadb-binlog" in steps[1].command and "+read_only = ON\n" in steps[3].diff

    # rejoined: nothing to do
    facts["db1"]["replica"] = {**facts["db3"]["replica"], "sql_delay": 0}
    facts["db1"]["sql"]["variables"]["read_only"] = "ON"
    assert failover.situation(p, Gathered(facts, {}, {})) == (failover.DONE, [])
    assert failover.plan(p, Gathered(facts, {}, {}), failover.DONE) == []


def test_the_old_primarys_own_transactions_past_the_promotion_are_counted_with_their_rows():
    d = dialect("mariadb")
    past = failover.own_past(d, MARIADB_TX, "0-180682783-17")
    assert [t.gtid for t in past] == [f"0-180682783-{n}" for n in range(18, 26)]
    found = failover.diverged(past)
    assert (found["transactions"], found["rows"], found["heartbeat_ticks"]) == (3, 102, 5)
    assert found["table"] == [{"table": "shop.orders", "transactions": 3, "rows": 102, "verdict": "bad"}]
    assert found["gtids"] == ["0-180682783-18", "0-180682783-23", "0-180682783-24"]
    # heartbeat ticks only (what a rebooted old primary writes before the fence): nothing diverged
    ticks = failover.diverged(failover.own_past(d, MARIADB_TX, "0-180682783-24"))
    assert (ticks["transactions"], ticks["rows"], ticks["heartbeat_ticks"]) == (0, 0, 1)
    assert failover.own_past(d, MARIADB_TX, "0-180682783-25") == []
    # another domain's position does not hide this one's transactions
    assert len(failover.own_past(d, MARIADB_TX, "1-5-900")) == len(MARIADB_TX)


def test_mysql_counts_by_gtid_set_membership():
    txs = recovery.parse_binlog((BINLOGS / "mysql-8.4-insert-then-delete.txt").read_text(), "binlog.000007")
    d = dialect("mysql-8.4")
    past = failover.own_past(d, txs, "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42")
    assert [t.gtid for t in past] == ["3e11fa47-71ca-11e1-9e33-c80aa9429562:43"]
    assert failover.diverged(past)["rows"] == 2
    assert d.restart_from("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42") == [
        "STOP REPLICA", "RESET BINARY LOGS AND GTIDS", "SET GLOBAL gtid_purged = '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42'"]


def test_the_marker_round_trips_and_the_verdicts_never_hide_a_loss(tmp_path):
    assert failover.parse_marker(PROMOTED_MARKER)["position"] == "0-180682783-17"
    assert failover.parse_marker(None) == {}
    p, _ = topology(tmp_path)
    assert failover.verdict(failover.FAILOVER, "applied", {"ok": True}, []) == "failed over"
    assert failover.verdict(failover.REJOIN, "applied", {"ok": True}, []) == "rejoined"
    assert failover.verdict(failover.DONE, "empty", None, []) == "nothing to do"
    assert failover.verdict(failover.REJOIN, "applied", {"ok": False}, ["x"]) == "incomplete"
    lost = failover.problems(failover.FAILOVER, {"ok": True, "received_elsewhere": {"db3": 2}}, p)
    assert lost == ["2 transaction(s) of db1 reached db3 but not db2: lost at the promotion"]
    assert failover.verdict(failover.FAILOVER, "applied", {"ok": True}, lost) == "incomplete"


class _HeartbeatClient:
    """A client whose server reports these heartbeat lags, one per query (the last one repeated)."""

    def __init__(self, lags):
        self.dialect, self.lags, self.asked = dialect("mariadb"), list(lags), 0

    def query(self, host, sql, timeout=None):
        assert sql == self.dialect.heartbeat_query()
        self.asked += 1
        return [{"lag_seconds": self.lags.pop(0) if len(self.lags) > 1 else self.lags[0], "newest": ""}]


def test_after_the_promotion_the_new_primarys_own_first_heartbeat_is_waited_for(monkeypatch):
    # until its event first fires, the newest row is the lost primary's last one: old, and read as a stopped heartbeat
    clock = iter(range(0, 1000))
    monkeypatch.setattr(failover.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(failover.time, "sleep", lambda s: None)
    client = _HeartbeatClient(["11.8", "12.8", "NULL", "0.4"])
    assert failover._own_heartbeat(client, "db2") is not None and client.asked == 4
    never = _HeartbeatClient(["30.0"])
    assert failover._own_heartbeat(never, "db2", within=5) is None and never.asked >= 5


class _RepointClient:
    """The delayed replica (db3) has applied ``applied``; the new primary (db2) was promoted at db1's transaction 18 (its
    marker says so); db1's binlog is the recorded one (rows in 18, heartbeat ticks 19 to 22, rows in 23 and 24), or db1
    is down."""

    def __init__(self, p, applied, old_down=False):
        from types import SimpleNamespace

        self.p, self.dialect, self.applied, self.old_down, self.executed = p, dialect("mariadb"), applied, old_down, []
        self.fleet = SimpleNamespace(ssh=SimpleNamespace(command_timeout=30.0))

    def host(self, name):
        return self.p.host(name)

    def shell(self, host, command, files=None, timeout=None):
        from runbooklib.ssh import HostResult

        if host.name == "db2":
            assert command == f"cat {failover.FAILOVER_MARKER}"
            return HostResult("db2", True, stdout=failover.marker_text("db1", "0-180682783-18", "run-1"))
        assert host.name == "db1" and "mariadb-binlog" in command
        if self.old_down:
            return HostResult("db1", False, error="db1: connection refused")
        return HostResult("db1", True, stdout="@@BINLOG mysql-bin.000001\n" + (BINLOGS / "mariadb-10.11-insert-then-delete.txt").read_text())

    def query(self, host, sql, timeout=None):
        assert host.name == "db3" and "gtid_slave_pos" in sql
        return [{"applied": self.applied}] if self.applied is not None else []  # the client gives no row for an empty value

    def execute(self, host, statements):
        from runbooklib.ssh import HostResult

        self.executed.append((host.name, list(statements)))
        return HostResult(host.name, True)


def test_a_delayed_replica_past_the_promotion_is_re_pointed_only_if_it_applied_nothing_but_heartbeat_ticks(tmp_path):
    """db3 was down during the failover (db2 promoted at db1's transaction 18), and applied more of db1's: the new
    primary's binlog cannot continue it (the servers refuse, error 1236). db1's binlog says what they were: heartbeat
    ticks only, and db3 goes back to the promotion position and is re-pointed; rows, and it is not, named, with the
    table; db1 down, and it waits for it. Behind the promotion (its delay kept it there), it is simply re-pointed."""
    p, facts = topology(tmp_path)
    down = {k: v for k, v in failed_over(p, facts).items() if k != "db1"}
    down["db3"] = {**down["db3"], "replica": {**down["db3"]["replica"], "source_host": str(p.host("db1").address)}}
    steps = failover.plan(p, Gathered(down, {"db1": "down"}, {}), failover.WAITING)
    assert [(s.host, s.operation) for s in steps] == [("db3", "re-point")]

    ticks = _RepointClient(p, "0-180682783-20")
    out = failover.apply(p, ticks, steps)
    assert out["ok"] and [h for h, _ in ticks.executed] == ["db3"]
    sent = ticks.executed[0][1]
    assert sent[:3] == ["STOP SLAVE", "RESET MASTER", "SET GLOBAL gtid_slave_pos = '0-180682783-18'"]
    assert any("MASTER_DELAY = 2592000" in s for s in sent[3:]) and "only heartbeat ticks of db1" in out["applied"][0].change

    rows = _RepointClient(p, "0-180682783-24")
    out = failover.apply(p, rows, steps)
    assert not out["ok"] and rows.executed == [] and out["applied"] == []
    assert out["error"].startswith("db3 applied 6 transaction(s) of db1 past the promotion at 0-180682783-18")
    assert "2 hold data (shop.orders" in out["error"] and "NOT re-pointed" in out["error"] and "rebuild db3 from db2" in out["error"]
    assert failover.verdict(failover.WAITING, "applied", out, failover.problems(failover.WAITING, out, p)) == "incomplete"

    unknown = _RepointClient(p, "0-180682783-20", old_down=True)
    out = failover.apply(p, unknown, steps)
    assert not out["ok"] and unknown.executed == [] and "run this runbook again once db1 answers" in out["error"]

    behind = _RepointClient(p, "0-180682783-15")
    out = failover.apply(p, behind, steps)
    assert out["ok"] and [h for h, _ in behind.executed] == ["db3"] and behind.executed[0][1][0] != "RESET MASTER"
    for nothing in ("", None):  # a delayed replica that has applied nothing yet (a lab minutes old, a long delay)
        fresh = _RepointClient(p, nothing)
        out = failover.apply(p, fresh, steps)
        assert out["ok"] and [h for h, _ in fresh.executed] == ["db3"] and fresh.executed[0][1][0] != "RESET MASTER"
