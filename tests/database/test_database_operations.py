"""Database operations as data: a host's facts in, exactly these steps out (tests/data/database/operations/*.yaml).

Each case names a host of the lab parameters (its role comes from the database section) and the facts
that differ from a converged host; ``expect`` lists the planned steps: operation and change always,
and the statements, command or blocked reason where the case gives them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import lab_data, set_path, write_params
from runbooklib.database import operations as ops
from runbooklib.database.dialects import ReplicaStatus, dialect
from runbooklib.params import load_params

DATA = Path(__file__).resolve().parents[1] / "data" / "database" / "operations"
CASES = sorted(DATA.glob("*.yaml"))


def params_for(tmp_path, case: dict | None = None):
    data = lab_data()
    for path, value in ((case or {}).get("params") or {}).items():
        set_path(data, path, value)
    return load_params(write_params(tmp_path, data))


def converged(p, host: str) -> dict:
    """Facts of a database host as 05-database leaves it."""
    h = p.host(host)
    role = ops.role(p, h)
    d = dialect(p.database.flavour)
    primary = p.host(p.database.primary)
    replica = None
    if role != "primary":
        replica = ReplicaStatus(io_running="Yes", sql_running="Yes", source_host=str(primary.address), source_port=p.database.port,
                                source_user=p.database.replication_user, seconds_behind=0,
                                sql_delay=p.database.delay_seconds if role == "delayed replica" else 0, remaining_delay=None,
                                gtid_mode="Slave_Pos" if d.flavour == "mariadb" else "1", retrieved="", executed="", io_error="",
                                sql_error="", source_log_file="mysql-bin.000001", read_pos=4, exec_log_file="mysql-bin.000001",
                                exec_pos=4, sql_state="", until="None")
    return {
        "server": {"installed": True, "version": f"{d.server} Ver 1"},
        "service": {"active": "active", "enabled": "enabled"},
        "datadir_initialised": True,
        "config": ops.desired_config(p, h),
        "sql": {"answering": True, "error": "", "variables": {"read_only": "OFF" if role == "primary" else "ON"}},
        "replica": replica,
        "root_password_set": True,
        "replication_users": {a: True for a in ops.account_hosts(p)},
        "heartbeat": {"event": "ENABLED" if role == "primary" else "SLAVESIDE_DISABLED", "lag_seconds": 0.5, "newest": ""},
        "loads": [],
        "recovery_marker": None,
        "failover_marker": None,
    }


def case_facts(p, case: dict) -> dict:
    f = converged(p, case["host"])
    for key, value in (case.get("facts") or {}).items():
        if isinstance(value, dict) and isinstance(f.get(key), dict):
            f[key] = {**f[key], **value}
        else:
            f[key] = copy.deepcopy(value)
    return f


def described(step) -> dict:
    out = {"operation": step.operation, "change": step.change, "command": step.command, "undo": step.undo}
    if isinstance(step, ops.SqlStep):
        out["statements"] = list(step.statements)
    if step.blocked:
        out["blocked"] = step.blocked
    return out


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_operation_case(tmp_path, path):
    case = yaml.safe_load(path.read_text())
    p = params_for(tmp_path, case)
    steps = ops.plan(p, {case["host"]: case_facts(p, case)})
    got = [described(s) for s in steps]
    assert [(g["operation"], g["change"]) for g in got] == [(e["operation"], e["change"]) for e in case["expect"]], path.name
    for g, e in zip(got, case["expect"]):
        assert {k: g.get(k) for k in e} == e, f"{path.name}: {e['operation']}"


@pytest.mark.parametrize("host", ["db1", "db2", "db3"])
def test_a_converged_host_plans_nothing(tmp_path, host):
    p = params_for(tmp_path)
    assert ops.plan(p, {host: converged(p, host)}) == []


def test_a_primary_that_replicates_blocks_the_whole_plan(tmp_path):
    p = params_for(tmp_path)
    facts = {h: converged(p, h) for h in ("db1", "db2", "db3")}
    facts["db1"]["replica"] = {**facts["db2"]["replica"], "source_host": str(p.host("db2").address)}
    facts["db1"]["sql"]["variables"]["read_only"] = "ON"  # after a switchover db1 is read-only: nothing may flip it
    steps = ops.plan(p, facts)
    assert [(s.host, s.operation, s.command) for s in steps] == [("db1", "topology", None)]
    assert "replicates from db2" in steps[0].blocked and "database.primary" in steps[0].blocked


def test_server_ids_follow_the_address_not_the_role(tmp_path):
    p = params_for(tmp_path)
    ids = {h: ops.server_id(p.host(h)) for h in ("db1", "db2", "db3")}
    assert len(set(ids.values())) == 3 and all(0 < i < 2**32 for i in ids.values())
    (tmp_path / "s").mkdir()
    swapped = params_for(tmp_path / "s", {"params": {"database.primary": "db2", "database.replica": "db1"}})
    assert {h: ops.server_id(swapped.host(h)) for h in ids} == ids
    assert f"server_id = {ids['db1']}\n" in ops.desired_config(swapped, swapped.host("db1"))
    assert "read_only = ON" in ops.desired_config(swapped, swapped.host("db1"))


def test_the_config_write_is_checked_by_the_server_and_keeps_the_previous_file():
    command = ops.validated_write(dialect("mariadb"), "/etc/mysql/mariadb.conf.d/x.cnf", "[mysqld]\n")
    assert "mariadbd --help --verbose > /dev/null" in command
    assert command.index("cp -a") < command.index("base64 -d") < command.index("mariadbd --help")
    assert "mv -f /etc/mysql/mariadb.conf.d/x.cnf.runbook-prev.tmp /etc/mysql/mariadb.conf.d/x.cnf" in command  # put back if refused
    assert command.rstrip().endswith("mv -f /etc/mysql/mariadb.conf.d/x.cnf.runbook-prev.tmp /etc/mysql/mariadb.conf.d/x.cnf.runbook-prev; fi")


def test_plans_show_every_statement_with_placeholders_never_a_password(tmp_path):
    p = params_for(tmp_path)
    f = converged(p, "db3")
    f.update(replica=None, root_password_set=None, replication_users=None)
    steps = ops.plan(p, {"db3": f})
    rows = ops.sql_rows(steps)
    text = " ".join(r["statement"] for r in rows) + " ".join(s.change + (s.undo or "") for s in steps)
    assert "<<secret database.replication_password>>" in text and "<<secret database.root_password>>" in text
    assert "lab-replication-password" not in text and "lab-root-password" not in text


def test_the_verdict_counts_the_load_as_a_change():
    assert ops.verdict("empty", "applied", []) == "applied"
    assert ops.verdict("empty", "empty", []) == "nothing to do"
    assert ops.verdict("planned", None, []) == "planned"
    assert ops.verdict("applied", None, ["db3: unreachable"]) == "incomplete"
