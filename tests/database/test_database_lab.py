"""Runbook 05 on the seed lab's three database VMs (real MariaDB 10.11), headless through the real runner.

Plan changes nothing; apply builds the primary, the real-time replica and a replica delayed 20 s; a
second apply plans nothing; a row reaches the real-time replica at once and the delayed one only after
the delay; the lag is sampled into a figure; a dump (from a real source server on elk1, with the
statements a GTID export carries) is loaded and proved by checksums, and a tampered replica is named;
a stopped replica VM is named; no password reaches the archive.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from dblab import CANARIES, Sql, archive_files, write_db_params

from conftest import manifest, require_lab, runbook, running_lab, wait_for

require_lab("/usr/sbin/mariadbd")
DELAY = 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("dblab"), "rbdb", "10.96.0.0/24", profile="seed") as lab:
        yield lab


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def params(lab):
    return write_db_params(lab, delay_seconds=DELAY)


@pytest.fixture(scope="module")
def sql(params):
    s = Sql(params)
    yield s
    s.close()


def run05(archive, params, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/05-database.ipynb", "--params", str(params), *extra, timeout=600)


def record(stdout: str) -> nbformat.NotebookNode:
    path = next(line.split("record:", 1)[1].strip() for line in stdout.splitlines() if "record:" in line)
    return nbformat.read(path, as_version=4)


def test_plan_changes_nothing_then_apply_builds_the_topology_then_nothing_to_do(lab, archive, params, sql):
    # db2 as a VM whose data directory was never initialised (Debian's package initialises it; an image may not)
    sql.shell("db2", "rm -rf /var/lib/mysql/* && test ! -e /var/lib/mysql/mysql").check()
    plan = run05(archive, params)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and "PLAN mode: nothing was changed" in plan.stderr
    assert sql.shell("db1", "systemctl is-active mariadb").stdout.strip() == "inactive"

    t0 = time.monotonic()
    up = run05(archive, params, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "applied", m["verdict"]
    changed = {(c["host"], c["operation"]) for c in m["changes"]}
    assert {("db1", "heartbeat"), ("db2", "replication"), ("db3", "replication"), ("db1", "server configuration"),
            ("db2", "data directory")} <= changed
    assert not any(c["operation"] == "data directory" and c["host"] != "db2" for c in m["changes"])
    assert not any(c["operation"] == "replication" and c["host"] == "db1" for c in m["changes"])
    print(f"05 --apply on a fresh lab: {time.monotonic() - t0:.1f} s")

    # the servers run as Debian runs them: the mysql user, enabled at boot, the drop-in and the previous kept
    assert sql.shell("db2", "ps -o user= -C mariadbd").stdout.split() == ["mysql"]
    assert sql.shell("db3", "systemctl is-enabled mariadb").stdout.strip() == "enabled"
    assert sql.value("db3", "SELECT @@read_only") == "1" and sql.value("db1", "SELECT @@read_only") == "0"
    assert sql.value("db1", "SELECT @@binlog_format") == "ROW" and sql.value("db1", "SELECT @@gtid_strict_mode") == "1"
    assert int(sql.value("db1", "SELECT @@binlog_expire_logs_seconds")) >= DELAY  # the drop-in beat Debian's expire_logs_days
    status = {r["Master_Host"]: r for r in sql.rows("db3", "SHOW SLAVE STATUS")}
    assert list(status) == [str(sql.host("db1").address)] and status[str(sql.host("db1").address)]["SQL_Delay"] == str(DELAY)
    # the accounts were made without binlog entries: the replicas' own binlogs hold only the primary's GTIDs
    primary_domain_server = sql.value("db1", "SELECT @@server_id")
    for replica in ("db2", "db3"):
        own = sql.value(replica, "SELECT @@gtid_binlog_pos") or ""
        assert all(g.split("-")[1] == primary_domain_server for g in own.split(",") if g), own

    again = run05(archive, params, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(again.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "nothing to do", m["verdict"]


def test_a_row_reaches_the_real_time_replica_at_once_and_the_delayed_one_only_after_the_delay(sql):
    sql.run("db1", "CREATE DATABASE IF NOT EXISTS drill", "CREATE TABLE IF NOT EXISTS drill.marks (id INT PRIMARY KEY, at DATETIME(6))")
    wait_for(lambda: sql.value("db2", "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'drill'") == "1",
             10, "the table on the real-time replica")
    t0 = time.monotonic()
    sql.run("db1", "INSERT INTO drill.marks VALUES (1, UTC_TIMESTAMP(6))")
    wait_for(lambda: sql.value("db2", "SELECT COUNT(*) FROM drill.marks WHERE id = 1") == "1", 5, "the row on db2")
    realtime = time.monotonic() - t0
    time.sleep(DELAY / 2)
    assert sql.value("db3", "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'drill' AND TABLE_NAME = 'marks'") in ("0", "1")
    early = sql.rows("db3", "SELECT id FROM drill.marks WHERE id = 1") if sql.value(
        "db3", "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'drill' AND TABLE_NAME = 'marks'") == "1" else []
    assert early == [], "the delayed replica applied the row before its delay"
    wait_for(lambda: sql.value("db3", "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'drill' "
                                      "AND TABLE_NAME = 'marks'") == "1" and
             sql.value("db3", "SELECT COUNT(*) FROM drill.marks WHERE id = 1") == "1", DELAY + 30, "the row on db3", every=0.5)
    delayed = time.monotonic() - t0
    print(f"row on the real-time replica after {realtime:.2f} s, on the delayed replica after {delayed:.2f} s")
    assert realtime < 5 and delayed >= DELAY - 1


def test_the_record_holds_the_status_the_lag_table_and_the_figure(archive, params):
    r = run05(archive, params)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = record(r.stdout)
    text = "\n".join(json.dumps(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
    assert "Heartbeat lag over 15 s" in text and "image/png" in text
    summary = re.search(r"\| db3 +delayed replica +\d+ +[\d.]+ s +([\d.]+) s +[\d.]+ s +20\.0 s", r.stderr)
    assert summary, r.stderr[-2000:]
    median = float(summary.group(1))
    assert DELAY - 1 <= median <= DELAY + 5, summary


def _make_source(sql: Sql, tmp: Path) -> tuple[Path, Path]:
    """A source server on elk1 (as CloudSQL was): data, a dump of it with a GTID export's header, its checksums."""
    from runbooklib.database import load

    sql.shell("elk1", "systemctl start mariadb").check()
    sql.run("elk1", "CREATE DATABASE IF NOT EXISTS shop", "USE shop",
            "CREATE TABLE IF NOT EXISTS shop.customers (id INT PRIMARY KEY, name VARCHAR(80) NOT NULL, email VARCHAR(120) NULL, "
            "created DATETIME NOT NULL)",
            "CREATE TABLE IF NOT EXISTS shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(10,2), "
            "note TEXT NULL)",
            "DELETE FROM shop.orders", "DELETE FROM shop.customers",
            "INSERT INTO shop.customers SELECT seq, CONCAT('customer ', seq), IF(seq % 7 = 0, NULL, CONCAT('c', seq, '@example.ru')), "
            "'2019-03-01 10:00:00' + INTERVAL seq HOUR FROM seq_1_to_300",
            "INSERT INTO shop.orders (customer_id, amount, note) SELECT 1 + seq % 300, seq * 1.25, IF(seq % 5 = 0, NULL, "
            "CONCAT('tab\\there, quote '' ', seq)) FROM seq_1_to_1200")
    dump = sql.shell("elk1", "mariadb-dump --databases shop --single-transaction").check().stdout
    header = ("SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;\nSET @@SESSION.SQL_LOG_BIN= 0;\n\n"
              "SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n"
              "b9b4712a-df64-11e3-b391-60672090eb04:1-7';\n")
    path = tmp / "cloudsql-export.sql"
    path.write_text(header + dump + "SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;\n")
    sums = sql.client.shell(sql.host("elk1"), '$SQL -N < "$FILE_generator" | $SQL -N',
                            {"generator.sql": load.checksum_generator(["shop"])}).check().stdout
    (tmp / "source-checksums.tsv").write_text(sums)
    return path, tmp / "source-checksums.tsv"


def test_the_initial_load_is_proved_by_checksums_and_a_tampered_replica_is_named(lab, archive, sql):
    dump, sums = _make_source(sql, lab.root)
    params = write_db_params(lab, "db-load.yaml", delay_seconds=DELAY,
                             initial_load={"dump": dump.name, "source_checksums": sums.name, "catch_up_timeout_seconds": 60})
    r = run05(archive, params, "--apply")
    assert r.returncode == 0, r.stderr[-4000:]
    m = manifest(r.stdout)
    assert [c["operation"] for c in m["changes"]] == ["initial load"] and m["verdict"]["verdict"] == "applied", m
    assert "left out so that the load replicates: line 2: SET @@SESSION.SQL_LOG_BIN= 0;" in r.stderr
    table = [line for line in r.stderr.splitlines() if line.strip().startswith("| shop.")]
    assert len(table) == 2 and all(line.rstrip().endswith("ok") for line in table), "\n".join(table)
    assert "1200 rows" in r.stderr and "300 rows" in r.stderr
    for host in ("db1", "db2", "db3"):
        assert sql.value(host, "SELECT COUNT(*) FROM shop.orders") == "1200"

    # a replica that lost a row outside replication is named, with the table
    sql.run("db2", "SET SESSION sql_log_bin = 0", "DELETE FROM shop.orders WHERE id = 17", "SET SESSION sql_log_bin = 1")
    try:
        again = run05(archive, params)
        assert again.returncode == 4, again.stderr[-3000:]
        m = manifest(again.stdout)
        assert m["changes"] == [] and m["verdict"]["verdict"] == "incomplete"
        assert any(p.startswith("shop.orders: rows or checksum on db2 differ from the source") for p in m["verdict"]["problems"]), m
    finally:
        row = sql.rows("db1", "SELECT customer_id, amount, note FROM shop.orders WHERE id = 17")[0]
        note = "NULL" if row["note"] == "NULL" else "'" + row["note"].replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t") + "'"
        sql.run("db2", "SET SESSION sql_log_bin = 0",
                f"INSERT INTO shop.orders VALUES (17, {row['customer_id']}, {row['amount']}, {note})", "SET SESSION sql_log_bin = 1")


def test_a_stopped_replica_vm_is_named_in_the_status(lab, archive, params, sql):
    lab.stop("db3")
    try:
        r = run05(archive, params)
        assert r.returncode == 4, r.stderr[-3000:]
        m = manifest(r.stdout)
        assert m["verdict"]["verdict"] == "incomplete"
        assert any(p.startswith("db3: unreachable") for p in m["verdict"]["problems"]), m["verdict"]
        assert not any(p.startswith(("db1", "db2")) for p in m["verdict"]["problems"]), m["verdict"]
    finally:
        lab.start("db3")
    sql.fleet.close()  # the old connection to db3 died with it
    # enabled at boot: the server comes back with the VM and catches up
    wait_for(lambda: sql.shell("db3", "systemctl is-active mariadb").stdout.strip() == "active", 60, "mariadb on db3 after boot")
    wait_for(lambda: (sql.rows("db3", "SHOW SLAVE STATUS") or [{}])[0].get("Slave_IO_Running") == "Yes", 60, "db3 replicating again")


def run_incident(archive, name, params, *extra):
    return runbook("--archive", str(archive), "run", f"notebooks/incident/{name}.ipynb", "--params", str(params), *extra, timeout=600)


def test_the_recovery_drill_rewinds_a_destructive_statement_and_keeps_every_good_row(lab, archive, sql):
    drill = write_db_params(lab, "db-drill.yaml", delay_seconds=600)  # a delay long enough to react in, as in production
    longer = run05(archive, drill, "--apply")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert [c["change"] for c in manifest(longer.stdout)["changes"]] == [f"delay {DELAY} s -> 600 s"]

    sql.run("db1", *[f"INSERT INTO shop.orders VALUES ({5000 + i}, {i}, {i}.50, 'good row {i}')" for i in range(1, 11)])
    wait_for(lambda: sql.value("db2", "SELECT COUNT(*) FROM shop.orders") == "1210", 10, "the good rows on db2")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 2))
    sql.run("db1", "DELETE FROM shop.orders WHERE amount > 0")  # the mistake: every order gone
    wait_for(lambda: sql.value("db2", "SELECT COUNT(*) FROM shop.orders") == "0", 10, "the mistake on the real-time replica")

    recovery = {"find": "DELETE FROM shop.orders", "since": since,
                "verify": [{"table": "shop.orders", "rows": 1210}, {"table": "shop.orders", "where": "id > 5000", "rows": 10}],
                "outcome": "export", "export_tables": ["shop.orders", "shop.customers"], "export_dir": "/var/backups/runbooklib"}
    params = write_db_params(lab, "db-recovery.yaml", delay_seconds=600, recovery=recovery)
    plan = run_incident(archive, "db-point-in-time-recovery", params)
    assert plan.returncode == 0, plan.stderr[-4000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and manifest(plan.stdout)["changes"] == []
    assert "DELETE FROM shop.orders WHERE amount > 0" in plan.stderr  # the bad transaction, found in plan mode too

    t0 = time.monotonic()
    r = run_incident(archive, "db-point-in-time-recovery", params, "--apply")
    assert r.returncode == 0, r.stderr[-5000:]
    m = manifest(r.stdout)
    assert m["verdict"]["verdict"] == "recovered", m["verdict"]
    assert [c["operation"] for c in m["changes"]] == ["freeze", "freeze", "freeze", "rewind", "export"], m["changes"]
    print(f"recovery drill: {time.monotonic() - t0:.1f} s")

    # every good row is on the recovered replica, the mistake is not; the primary still holds the mistake
    assert sql.value("db3", "SELECT COUNT(*) FROM shop.orders") == "1210"
    assert sql.value("db3", "SELECT COUNT(*) FROM shop.orders WHERE id > 5000") == "10"
    assert sql.value("db1", "SELECT COUNT(*) FROM shop.orders") == "0"
    status = sql.rows("db3", "SHOW SLAVE STATUS")[0]
    assert status["Slave_SQL_Running"] == "No" and status["SQL_Delay"] == "0"
    # a restart of db3 would keep it there: its threads are not started at boot while the recovery lasts
    assert sql.shell("db3", "cat /etc/mysql/conf.d/zz-runbooklib-recovery.cnf").check().stdout.endswith("[mysqld]\nskip-slave-start\n")
    exported = sql.shell("db3", "stat -c '%a %s %n' /var/backups/runbooklib/recovery-*-shop.sql").check().stdout.split()
    assert exported[0] == "600" and int(exported[1]) > 10_000
    assert sql.shell("db3", f"grep -c 'INSERT INTO `orders`' {exported[2]}").stdout.strip() != "0"

    # 05-database leaves the frozen replica alone while the marker is there
    frozen = run05(archive, drill)
    assert "a point-in-time recovery is in progress on db3" in frozen.stderr
    assert manifest(frozen.stdout)["changes"] == []

    # the engineer repairs the primary from the export, removes the marker, and 05 restores the delay
    dump = sql.shell("db3", f"cat {exported[2]}").check().stdout
    sql.client.shell(sql.host("db1"), '$SQL shop < "$FILE_repair"', {"repair.sql": dump}).check()
    assert sql.value("db1", "SELECT COUNT(*) FROM shop.orders") == "1210"
    sql.shell("db3", "rm -f /etc/mysql/runbooklib-recovery-in-progress").check()
    resumed = run05(archive, drill, "--apply")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [c["change"] for c in manifest(resumed.stdout)["changes"]] == [
        "remove /etc/mysql/conf.d/zz-runbooklib-recovery.cnf (the recovery is over: the replica starts at boot again)", "delay 0 s -> 600 s"]
    assert sql.shell("db3", "test -e /etc/mysql/conf.d/zz-runbooklib-recovery.cnf").exit_code == 1


def test_the_switchover_loses_no_committed_row_and_the_delayed_replica_keeps_its_delay(lab, archive, sql):
    import threading

    sql.run("db1", "CREATE TABLE IF NOT EXISTS drill.writes (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL)",
            "CREATE USER IF NOT EXISTS 'app'@'localhost' IDENTIFIED BY 'app-drill'", "GRANT SELECT, INSERT ON drill.* TO 'app'@'localhost'")
    committed, failed, stop = [], [], threading.Event()

    def writer():  # an application: it commits what it can, and knows which rows it committed
        while not stop.is_set():
            r = sql.fleet.run_on(sql.host("db1"), "mariadb -u app -papp-drill -N -e "
                                 "\"INSERT INTO drill.writes (at) VALUES (NOW(6)); SELECT LAST_INSERT_ID()\"")
            (committed if r.ok and r.stdout.strip().isdigit() else failed).append(r.stdout.strip())
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(committed) >= 5, 30, "the application writing")
        params = write_db_params(lab, "db-switch.yaml", delay_seconds=600, switchover={})
        r = run_incident(archive, "db-switchover", params, "--apply")
        time.sleep(1)
    finally:
        stop.set()
        thread.join(30)
    assert r.returncode == 0, r.stderr[-5000:]
    m = manifest(r.stdout)
    assert m["verdict"]["verdict"] == "switched", m["verdict"]
    assert [c["operation"] for c in m["changes"]] == ["freeze writes", "catch up", "promote", "re-point", "re-point", "drop-in", "drop-in"]
    assert "Committed rows lost: 0 (transactions not applied at promotion: 0)" in r.stderr
    assert failed, "the application never saw the old primary refuse a write"

    ids = {row["id"] for row in sql.rows("db2", "SELECT id FROM drill.writes")}
    assert set(committed) <= ids, f"committed rows missing on the new primary: {sorted(set(committed) - ids)[:10]}"
    print(f"switchover: {len(committed)} rows committed by the application, {len(failed)} writes refused, none lost")

    assert sql.rows("db2", "SHOW SLAVE STATUS") == [] and sql.value("db2", "SELECT @@read_only") == "0"
    db2 = str(sql.host("db2").address)
    wait_for(lambda: (sql.rows("db1", "SHOW SLAVE STATUS") or [{}])[0].get("Slave_SQL_Running") == "Yes", 30, "db1 replicating")
    assert sql.rows("db1", "SHOW SLAVE STATUS")[0]["Master_Host"] == db2 and sql.value("db1", "SELECT @@read_only") == "1"
    delayed = sql.rows("db3", "SHOW SLAVE STATUS")[0]
    assert delayed["Master_Host"] == db2 and delayed["SQL_Delay"] == "600" and delayed["Slave_IO_Running"] == "Yes"
    # a row written on the new primary reaches the old one, now its replica
    sql.run("db2", "INSERT INTO drill.marks VALUES (2, UTC_TIMESTAMP(6))")
    wait_for(lambda: sql.value("db1", "SELECT COUNT(*) FROM drill.marks WHERE id = 2") == "1", 15, "a new write on the old primary")

    # 05 refuses the stale parameters, and with the roles swapped it finds nothing to do
    stale = run05(archive, write_db_params(lab, "db-drill.yaml", delay_seconds=600))
    assert "db1 replicates from db2" in stale.stderr and manifest(stale.stdout)["changes"] == []
    updated = run05(archive, write_db_params(lab, "db-after.yaml", delay_seconds=600, primary="db2", replica="db1"), "--apply")
    assert updated.returncode == 0, updated.stderr[-3000:]
    assert manifest(updated.stdout)["changes"] == [] and manifest(updated.stdout)["verdict"]["verdict"] == "nothing to do"


def test_no_password_reaches_the_archive(archive):
    files = archive_files(archive)
    assert len(files) > 10
    needles = []
    for value in CANARIES.values():
        needles += [value.encode(), base64.b64encode(value.encode()).rstrip(b"=")]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path} holds a database password"
