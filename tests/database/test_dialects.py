"""Every flavour's statements and status, as data (``tests/data/database/``): a case is a file.

Rendering cases name an intention, its arguments and the exact statements of *every* flavour, so a
new flavour cannot be added without saying what it writes. Status cases are rows as the client
prints them (MariaDB's recorded on the lab) and the shape the rest of the phase reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbooklib.database.client import option_file, parse_batch
from runbooklib.database.dialects import DIALECTS, Source, StopPoint, dialect, fill_secrets, secret_fields, sql_string
from runbooklib.database.gtid import GtidError, GtidPosition, GtidSet
from runbooklib.errors import SecretError

DATA = Path(__file__).resolve().parents[1] / "data" / "database"
RENDER = sorted((DATA / "dialects").glob("*.yaml"))
STATUS = sorted((DATA / "status").glob("*.yaml"))


def _args(case: dict, flavour: str) -> dict:
    args = dict(case.get("args_by_flavour", {}).get(flavour, case.get("args") or {}))
    if "source" in args:
        args["source"] = Source(**args["source"])
    if "stop" in args:
        args["stop"] = StopPoint(**args["stop"])
    return args


@pytest.mark.parametrize("path", RENDER, ids=lambda p: p.stem)
def test_rendering(path):
    case = yaml.safe_load(path.read_text())
    assert set(case["expect"]) == set(DIALECTS), f"{path.name} must say what every flavour renders"
    for flavour, expected in case["expect"].items():
        got = getattr(dialect(flavour), case["intention"])(**_args(case, flavour))
        assert got == expected, f"{path.name}: {flavour}"


def test_there_are_rendering_cases_for_every_intention_the_phase_uses():
    intentions = {yaml.safe_load(p.read_text())["intention"] for p in RENDER}
    assert {"configure_replica", "stop_applier", "start_applier", "set_delay", "apply_until", "promote", "read_only",
            "create_replication_user", "set_root_password", "heartbeat_local", "wait_for_position", "server_settings",
            "validate_config_command", "initialize_command"} <= intentions


@pytest.mark.parametrize("path", STATUS, ids=lambda p: p.stem)
def test_status(path):
    case = yaml.safe_load(path.read_text())
    flavours = case["flavour"] if isinstance(case["flavour"], list) else [case["flavour"]]
    for flavour in flavours:
        got = dialect(flavour).parse_replica_status(case["row"])
        if case["expect"] is None:
            assert got is None
            continue
        assert got is not None
        assert {k: got[k] for k in case["expect"]} == case["expect"], f"{path.name}: {flavour}"


def test_a_stop_point_the_flavour_cannot_use_is_refused_with_what_it_needs():
    with pytest.raises(ValueError, match="inclusive"):
        dialect("mariadb").apply_until(StopPoint(before="0-1-42"))
    with pytest.raises(ValueError, match="GTID or its binlog file"):
        dialect("mysql-8.4").apply_until(StopPoint(last_good="0-1-41"))


def test_mysql_84_never_writes_the_spellings_it_removed():
    d = dialect("mysql-8.4")
    text = " ".join(d.configure_replica(Source("10.0.0.1", 3306, "repl", 5)) + d.promote() + d.set_delay(0)
                    + [d.stop_applier(), d.start_applier()] + d.apply_until(StopPoint(log_file="b.1", log_pos=4)))
    for removed in ("MASTER", "SLAVE"):
        assert removed not in text


def test_secrets_are_placeholders_filled_as_escaped_literals_only_on_the_way_out():
    statements = dialect("mariadb").create_replication_user("repl", ["10.0.0.2"])
    sql = ";\n".join(statements)
    assert secret_fields(sql) == ["database.replication_password"]
    filled = fill_secrets(sql, {"database.replication_password": "it's a \\ secret"})
    assert "IDENTIFIED BY 'it\\'s a \\\\ secret'" in filled and "<<secret" not in filled
    with pytest.raises(KeyError, match="database.replication_password"):
        fill_secrets(sql, {})
    assert sql_string("a\nb") == "'a\\nb'"


def test_the_option_file_quotes_the_password_and_refuses_a_line_break():
    assert option_file("root", 'p"w\\d') == '[client]\nuser=root\npassword="p\\"w\\\\d"\n'
    with pytest.raises(SecretError, match="line break") as e:
        option_file("root", "two\nlines")
    assert "two" not in str(e.value)


def test_a_replication_password_too_long_for_the_source_password_is_refused_before_anything_runs():
    """MariaDB 10.11 on the lab refused a 154-character one at CHANGE MASTER (ERROR 1470), after 05 had set the root
    password and created the replication user: now refused when the client is made, naming the field, never the value."""
    from runbooklib.database.client import check_source_password
    from runbooklib.database.dialects import dialect

    check_source_password("x" * 96, dialect("mariadb"), "site.yaml")
    with pytest.raises(SecretError, match=r"site.yaml: database.replication_password is 97 characters long; MariaDB takes at most 96") as e:
        check_source_password("s3cret" + "x" * 91, dialect("mariadb"), "site.yaml")
    assert "s3cret" not in str(e.value)
    check_source_password("x" * 32, dialect("mysql-8.4"), "site.yaml")
    with pytest.raises(SecretError, match="MySQL 8.0 takes at most 32"):
        check_source_password("x" * 33, dialect("mysql-8.0"), "site.yaml")


def test_batch_output_with_escapes_and_nulls():
    rows = parse_batch("a\tb\nx\\ty\tNULL\nline\\none\t\\\\\n")
    assert rows == [{"a": "x\ty", "b": "NULL"}, {"a": "line\none", "b": "\\"}]
    assert parse_batch("") == []


GTID = yaml.safe_load((DATA / "gtid.yaml").read_text())


@pytest.mark.parametrize("case", GTID["mysql"], ids=lambda c: c["name"])
def test_mysql_gtid_sets(case):
    d = dialect("mysql-8.4")
    assert d.reached(case["have"], case["want"]) is case["reached"]
    assert d.behind(case["have"], case["want"]) == case["behind"]


@pytest.mark.parametrize("case", GTID["mariadb"], ids=lambda c: c["name"])
def test_mariadb_gtid_positions(case):
    d = dialect("mariadb")
    assert d.reached(case["have"], case["want"]) is case["reached"]
    assert d.behind(case["have"], case["want"]) == case["behind"]


@pytest.mark.parametrize("text", GTID["malformed"]["mysql"])
def test_malformed_mysql_gtid_sets_are_named(text):
    with pytest.raises(GtidError, match="GTID|interval"):
        GtidSet.parse(text)


@pytest.mark.parametrize("text", GTID["malformed"]["mariadb"])
def test_malformed_mariadb_positions_are_named(text):
    with pytest.raises(GtidError, match="MariaDB GTID|twice"):
        GtidPosition.parse(text)


def test_gtid_sets_print_back_merged_and_sorted():
    s = GtidSet.parse("b9b4712a-df64-11e3-b391-60672090eb04:5-7:1-4,3e11fa47-71ca-11e1-9e33-c80aa9429562:tag:3,"
                      "3e11fa47-71ca-11e1-9e33-c80aa9429562:1")
    assert str(s) == "3e11fa47-71ca-11e1-9e33-c80aa9429562:1:tag:3,b9b4712a-df64-11e3-b391-60672090eb04:1-7"
    assert s.count() == 9
