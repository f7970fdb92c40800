"""The incident runbooks' logic without a server: switchover preconditions and order, rows lost; the recovery's
freeze, rewind and outcome steps, the choice of the bad transaction, the verdicts."""

from __future__ import annotations

import datetime as dt

from test_database_operations import converged, params_for

from runbooklib.database import operations, recovery, switchover
from runbooklib.database.dialects import StopPoint, dialect
from runbooklib.errors import HostError
from runbooklib.phase.facts import Gathered
from runbooklib.ssh import HostResult


def topology(tmp_path, **params):
    p = params_for(tmp_path, {"params": params})
    return p, {h: converged(p, h) for h in ("db1", "db2", "db3")}


def test_a_healthy_site_can_switch_over_and_the_plan_runs_in_the_order_that_loses_nothing(tmp_path):
    p, facts = topology(tmp_path, **{"database.switchover": {}})
    g = Gathered(facts, {}, {})
    assert switchover.preflight(p, None, g) == []
    steps = switchover.plan(p, g)
    assert [(s.host, s.operation) for s in steps] == [("db1", "freeze writes"), ("db2", "catch up"), ("db2", "promote"),
                                                      ("db1", "re-point"), ("db3", "re-point"), ("db1", "drop-in"), ("db2", "drop-in")]
    assert list(steps[0].statements) == ["SET SESSION sql_log_bin = 0", "ALTER EVENT runbooklib.heartbeat_tick DISABLE ON SLAVE",
                                         "SET SESSION sql_log_bin = 1", "SET GLOBAL read_only = ON"]
    assert list(steps[2].statements) == ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF", "SET SESSION sql_log_bin = 0",
                                         "ALTER EVENT runbooklib.heartbeat_tick ENABLE", "SET SESSION sql_log_bin = 1"]
    # the old primary starts from what it committed; the delayed replica keeps its delay
    assert steps[3].statements[0] == "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos"
    assert "MASTER_HOST = '10.77.0.32'" in steps[3].statements[2] and "MASTER_DELAY = 0" in steps[3].statements[2]
    assert "MASTER_HOST = '10.77.0.32'" in steps[4].statements[1] and "MASTER_DELAY = 2592000" in steps[4].statements[1]
    assert "-read_only = OFF\n+read_only = ON\n" in steps[5].diff and "+read_only = OFF\n" in steps[6].diff
    assert "mariadbd --help --verbose" in steps[5].command and "systemctl" not in steps[5].command  # checked, never restarted
    new = switchover.swapped(p)
    assert (new.database.primary, new.database.replica, new.database.delayed_replica) == ("db2", "db1", "db3")


def test_what_stops_a_switchover_is_named(tmp_path):
    p, facts = topology(tmp_path, **{"database.switchover": {}})
    facts["db2"]["replica"] = {**facts["db2"]["replica"], "sql_running": "No"}
    facts["db1"]["sql"]["variables"]["read_only"] = "ON"
    facts["db3"]["recovery_marker"] = "x"
    problems = switchover.preflight(p, None, Gathered(facts, {}, {}))
    # db1 read-only with db2 following it: an earlier run froze it (this one would go on), but db2 is not applying
    assert problems == ["db2: replication is not running (IO Yes, SQL No); start it first",
                        "db3: a point-in-time recovery is in progress; finish it first"]
    facts["db2"]["replica"] = None  # read-only, and its candidate follows nothing: not a switchover of ours
    assert switchover.preflight(p, None, Gathered(facts, {}, {}))[:2] == [
        "db1: already read-only: the site takes no writes; finish the earlier switchover first",
        "db2: not a replica: it cannot take over without the primary's data"]
    assert switchover.preflight(p, None, Gathered({}, {"db1": "no route", "db2": "refused"}, {}))[:2] == ["db1: unreachable: no route",
                                                                                                           "db2: unreachable: refused"]


def _ops(steps):
    return [(s.host, s.operation) for s in steps]


def test_a_switchover_stopped_part_way_goes_on_from_where_it_stopped_and_does_nothing_twice(tmp_path):
    """A run ended by a host down, a cut or a signal leaves one of the states the order passes through: the same
    parameters go on from there (the hostile suite's db-switchover rows on the lab drive it for real)."""
    p, facts = topology(tmp_path, **{"database.switchover": {}})
    db2 = str(p.host("db2").address)
    # frozen: db1 read-only, its heartbeat event off, db2 still following it
    facts["db1"]["sql"]["variables"]["read_only"] = "ON"
    facts["db1"]["heartbeat"] = {**facts["db1"]["heartbeat"], "event": "SLAVESIDE_DISABLED"}
    g = Gathered(facts, {}, {})
    assert switchover.progress(p, g) == switchover.FROZEN and switchover.preflight(p, None, g) == []
    steps = switchover.plan(p, g)
    assert _ops(steps) == [("db2", "catch up"), ("db2", "promote"), ("db1", "re-point"), ("db3", "re-point"), ("db1", "drop-in"),
                           ("db2", "drop-in")]
    assert "frozen by an earlier run" in steps[0].change
    facts["db1"]["heartbeat"]["event"] = "ENABLED"  # read-only by hand, its heartbeat still on: the freeze is done (again)
    assert _ops(switchover.plan(p, g))[:2] == [("db1", "freeze writes"), ("db2", "catch up")]
    facts["db1"]["heartbeat"]["event"] = "SLAVESIDE_DISABLED"
    # promoted: db2 writable with no source; db1 frozen, following nothing
    facts["db2"]["replica"] = None
    facts["db2"]["sql"]["variables"]["read_only"] = "OFF"
    assert switchover.progress(p, g) == switchover.PROMOTED and switchover.preflight(p, None, g) == []
    assert _ops(switchover.plan(p, g)) == [("db1", "re-point"), ("db3", "re-point"), ("db1", "drop-in"), ("db2", "drop-in")]
    # re-pointed: db1 follows db2; db3 still follows db1 (the run stopped before it)
    facts["db1"]["replica"] = {**facts["db3"]["replica"], "source_host": db2, "sql_delay": 0}
    assert switchover.progress(p, g) == switchover.REPOINTED and switchover.preflight(p, None, g) == []
    steps = switchover.plan(p, g)
    assert _ops(steps) == [("db3", "re-point"), ("db1", "drop-in"), ("db2", "drop-in")]
    assert "MASTER_HOST = '10.77.0.32'" in steps[0].statements[1] and "MASTER_DELAY = 2592000" in steps[0].statements[1]
    # all in place (db3 follows db2 with its delay, the drop-ins say the new roles): nothing to do
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "source_host": db2}
    new = switchover.swapped(p)
    for h in ("db1", "db2"):
        facts[h]["config"] = operations.desired_config(new, new.host(h))
    assert switchover.plan(p, g) == []
    # a candidate promoted by a failover is no switchover's: its old primary, read-only, is not resumed from
    facts["db1"]["replica"] = None
    facts["db2"]["failover_marker"] = "old_primary=db1"
    assert switchover.progress(p, g) == switchover.START
    assert "db2: not a replica: it cannot take over without the primary's data" in switchover.preflight(p, None, g)


class _CutCandidateClient:
    """The administrator's client as a link cut to the candidate leaves it: statements run on the old primary, the
    candidate's wait fails (as on the lab: the hostile suite's db-switchover link-cut row)."""

    def __init__(self, p):
        self.p, self.dialect, self.ran = p, dialect("mariadb"), []

    def host(self, name):
        return self.p.host(name)

    def query(self, host, sql, timeout=None):
        if host.name == "db2":
            raise HostError("db2", "cannot write the client's files into ~/.runbooklib-db over SFTP")
        return [{"position": "0-1-10"}] if sql == self.dialect.position_query() else []

    def execute(self, host, statements):
        self.ran.append((host.name, list(statements)))
        return HostResult(host.name, True)


def test_a_candidate_that_cannot_catch_up_undoes_the_freeze_and_the_record_says_so(tmp_path):
    p, facts = topology(tmp_path, **{"database.switchover": {}})
    client, recorded = _CutCandidateClient(p), []
    out = switchover.apply(p, client, switchover.plan(p, Gathered(facts, {}, {})), on_change=lambda s: recorded.append((s.host, s.change)))
    assert out["ok"] is False and out["aborted"] and "the old primary is writable again, nothing else changed" in out["error"]
    d = dialect("mariadb")
    assert client.ran[-1] == ("db1", d.read_only(False) + d.heartbeat_local(True))
    # the freeze it lists as applied is followed by its undo: a re-run freezing again applies nothing twice
    assert recorded == [("db1", "db1 stops taking writes: heartbeat event off, read-only"),
                        ("db1", "undone: db1 takes writes again, heartbeat event on (db2 did not catch up)")]


def test_rows_lost_are_counted_per_table():
    before = {"shop.orders": (10, "a"), "drill.writes": (5, "b")}
    rows, lost = switchover.lost_rows(before, {"shop.orders": (10, "a"), "drill.writes": (3, "c")})
    assert lost == 2 and [r["verdict"] for r in rows] == ["bad", "ok"]
    assert switchover.lost_rows(before, dict(before))[1] == 0


def test_the_freeze_stops_the_applier_and_marks_the_host_once(tmp_path):
    p, facts = topology(tmp_path, **{"database.recovery": {"find": "DELETE", "since": "2026-11-28T10:00:00",
                                                            "export_tables": ["shop.orders"]}})
    g = Gathered(facts, {}, {})
    steps = recovery.plan_freeze(p, g, "run-1")
    # first the drop-in: from there a restart of the VM keeps the replica still (found by the hostile suite: a VM stopped
    # mid-recovery booted with its applier running, undoing the freeze; after the rewind it would apply the bad transaction)
    assert [(s.host, s.operation, s.change) for s in steps] == [
        ("db3", "freeze", "/etc/mysql/conf.d/zz-runbooklib-recovery.cnf: skip-slave-start (a restart keeps the applier stopped)"),
        ("db3", "freeze", "stop applying (the receiver keeps fetching from the primary)"),
        ("db3", "freeze", "mark db3: a recovery is in progress (05-database leaves it alone)")]
    assert "/etc/mysql/conf.d/zz-runbooklib-recovery.cnf" in steps[0].command and steps[0].undo == "rm -f /etc/mysql/conf.d/zz-runbooklib-recovery.cnf"
    assert "[mysqld]\nskip-slave-start\n" in recovery.recovery_dropin(dialect("mariadb"))
    assert steps[1].statements == ("STOP SLAVE SQL_THREAD",) and "/etc/mysql/runbooklib-recovery-in-progress" in steps[2].command
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "sql_running": "No"}
    facts["db3"]["recovery_marker"] = "frozen"
    facts["db3"]["recovery_dropin"] = recovery.recovery_dropin(dialect("mariadb"))
    assert recovery.plan_freeze(p, g, "run-1") == []
    # the recovery over (the marker removed by the engineer): 05 removes the drop-in, then gives the replica its delay back
    facts["db3"]["recovery_marker"] = None
    steps = operations.replication(p, p.host("db3"), facts["db3"])
    assert [s.change for s in steps] == ["remove /etc/mysql/conf.d/zz-runbooklib-recovery.cnf (the recovery is over: the replica starts at "
                                         "boot again)", "start the replica threads (IO Yes, SQL No)"]
    assert steps[0].command == "rm -f /etc/mysql/conf.d/zz-runbooklib-recovery.cnf"
    facts["db3"]["recovery_marker"] = "frozen"  # while it lasts, 05 leaves the replica and its drop-in alone
    assert [s.blocked is not None for s in operations.replication(p, p.host("db3"), facts["db3"])] == [True]


def test_the_rewind_drops_the_delay_and_stops_before_the_bad_transaction(tmp_path):
    p, facts = topology(tmp_path, **{"database.recovery": {"gtid": "0-1-42", "export_tables": ["shop.orders"]}})
    bad = recovery.Transaction("0-1-42", "mysql-bin.000001", 9000, dt.datetime(2026, 11, 28, 10, 0, 0), 1)
    stop = StopPoint(before="0-1-42", last_good="0-1-41", log_file="mysql-bin.000001", log_pos=9000)
    [step] = recovery.plan_rewind(p, Gathered(facts, {}, {}), stop, bad)
    assert step.statements == ("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE UNTIL master_gtid_pos = '0-1-41'")
    # already stopped there: nothing to do again
    facts["db3"]["replica"] = {**facts["db3"]["replica"], "sql_running": "No", "sql_delay": 0}
    facts["db3"]["sql"]["variables"]["gtid_slave_pos"] = "0-1-41"
    assert recovery.plan_rewind(p, Gathered(facts, {}, {}), stop, bad) == []


def test_the_outcome_is_an_export_on_the_delayed_replica_or_a_promotion(tmp_path):
    p, facts = topology(tmp_path, **{"database.recovery": {"gtid": "0-1-42", "export_tables": ["shop.orders", "shop.customers",
                                                                                                 "crm.notes"]}})
    steps = recovery.plan_outcome(p, Gathered(facts, {}, {}), "run-7")
    assert [s.change for s in steps] == ["dump shop.orders, shop.customers to /var/backups/runbooklib/recovery-run-7-shop.sql",
                                         "dump crm.notes to /var/backups/runbooklib/recovery-run-7-crm.sql"]
    assert "umask 077" in steps[0].command and "mariadb-dump --defaults-extra-file=\"$FILE_admin\" --single-transaction shop orders customers" \
        in steps[0].command
    (tmp_path / "promote").mkdir()
    p, facts = topology(tmp_path / "promote", **{"database.recovery": {"gtid": "0-1-42", "outcome": "promote"}})
    steps = recovery.plan_outcome(p, Gathered(facts, {}, {}), "run-7")
    assert steps[0].statements[:3] == ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF")
    assert steps[1].command == "rm -f /etc/mysql/runbooklib-recovery-in-progress /etc/mysql/conf.d/zz-runbooklib-recovery.cnf"


def _tx(gtid, minute, tables, text):
    return recovery.Transaction(gtid, "mysql-bin.000001", 100 * minute, dt.datetime(2026, 11, 28, 10, minute), 1, set(tables), text)


def test_the_bad_transaction_is_the_first_match_in_the_window_and_heartbeats_never_match(tmp_path):
    p, _ = topology(tmp_path, **{"database.recovery": {"find": "delete from shop.orders", "since": "2026-11-28T10:02:00",
                                                        "export_tables": ["shop.orders"]}})
    txs = [_tx("0-1-1", 1, ["shop.orders"], ["#Q> DELETE FROM shop.orders WHERE id = 1"]),  # before the window
           _tx("0-1-2", 3, ["runbooklib.heartbeat"], ["#Q> REPLACE INTO runbooklib.heartbeat"]),
           _tx("0-1-3", 4, ["shop.orders"], ["### DELETE FROM `shop`.`orders`", "### WHERE", "###   @1=7"]),
           _tx("0-1-4", 5, ["shop.orders"], ["#Q> DELETE FROM shop.orders"])]
    bad, hits = recovery.choose(txs, p.database.recovery)
    assert bad.gtid == "0-1-3" and [t.gtid for t in hits] == ["0-1-3", "0-1-4"]
    assert bad.summary() == "### DELETE FROM `shop`.`orders`"


def test_verdicts():
    assert recovery.verdict("applied", "applied", "applied", []) == "recovered"
    assert recovery.verdict("planned", "planned", None, []) == "planned"
    assert recovery.verdict("applied", None, None, ["too late: ..."]) == "incomplete"
    assert switchover.verdict("applied", {"ok": True}, []) == "switched"
    assert switchover.verdict("applied", {"ok": False, "aborted": True}, ["x"]) == "incomplete"


BINLOGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "database" / "binlog"


def test_a_mariadb_binlog_recorded_on_the_lab_yields_its_transactions_and_the_delete():
    txs = recovery.parse_binlog((BINLOGS / "mariadb-10.11-insert-then-delete.txt").read_text(), "mysql-bin.000001")
    assert [t.gtid for t in txs] == [f"0-180682783-{n}" for n in range(16, 26)]
    assert [t.heartbeat_only for t in txs].count(False) == 3
    delete = txs[8]
    assert (delete.gtid, delete.log_pos, delete.at, delete.tables) == ("0-180682783-24", 7340, dt.datetime(2026, 11, 28, 19, 20, 57),
                                                                       {"shop.orders"})
    assert delete.summary().startswith("DELETE FROM shop.orders WHERE amount > 0 | ### DELETE FROM `shop`.`orders`")
    rec = type("Rec", (), {"gtid": None, "find": "DELETE FROM shop.orders", "since": dt.datetime(2026, 11, 28, 19, 20, 55), "until": None})
    bad, hits = recovery.choose(txs, rec)
    assert bad is delete and hits == [delete]
    rec.find = "shop.orders"  # the good insert comes first: the list shows it, and the engineer narrows the search
    assert recovery.choose(txs, rec)[0].gtid == "0-180682783-23"


def test_a_mysql_binlog_yields_gtids_from_gtid_next_and_skips_anonymous_transactions():
    txs = recovery.parse_binlog((BINLOGS / "mysql-8.4-insert-then-delete.txt").read_text(), "binlog.000007")
    assert [(t.gtid, t.log_pos) for t in txs] == [("3e11fa47-71ca-11e1-9e33-c80aa9429562:42", 197),
                                                  ("3e11fa47-71ca-11e1-9e33-c80aa9429562:43", 487)]
    assert txs[1].mentions("delete from shop.orders") and not txs[0].mentions("DELETE")
    assert txs[1].at == dt.datetime(2026, 11, 28, 10, 0, 5) and txs[1].tables == {"shop.orders"}


def test_the_binlog_is_read_in_utc_within_the_window_with_a_minute_before():
    rec = type("Rec", (), {"gtid": None, "since": dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=3))),
                           "until": dt.datetime(2026, 11, 28, 7, 30)})
    from runbooklib.database.dialects import dialect

    script = recovery.binlog_script(dialect("mariadb"), rec)
    assert "TZ=UTC mariadb-binlog --base64-output=decode-rows -vv --start-datetime='2026-11-28 06:59:00' " \
           "--stop-datetime='2026-11-28 07:30:01'" in script
    assert "SHOW BINARY LOGS" in script and "@@log_bin_basename" in script
