"""The initial load without a server: what a dump holds, what is left out so that it replicates, and how checksums compare."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from conftest import lab_data, set_path, write_params
from runbooklib.database import load
from runbooklib.errors import RunbookError
from runbooklib.params import load_params

DUMPS = Path(__file__).resolve().parents[1] / "data" / "database" / "dumps"


def params_with(tmp_path, dump: str, **extra):
    shutil.copy(DUMPS / dump, tmp_path / dump)
    data = lab_data()
    set_path(data, "database.initial_load", {"dump": dump, **extra})
    return load_params(write_params(tmp_path, data))


def test_a_gtid_export_names_its_database_and_the_statements_that_would_keep_it_out_of_the_binlog(tmp_path):
    dump = load.inspect(params_with(tmp_path, "cloudsql-export.sql"))
    assert dump.databases == ["shop"] and dump.names_databases
    assert dump.left_out == ["line 10: SET @@SESSION.SQL_LOG_BIN= 0;",
                             "line 16: " + "SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,"[:80],
                             "line 17: b9b4712a-df64-11e3-b391-60672090eb04:1-7';",
                             "line 34: SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;"]
    out = load.write_loadable(dump, tmp_path / "loadable.sql")
    text = out.read_text()
    assert "SQL_LOG_BIN=" not in text.replace(" ", "") and "GTID_PURGED" not in text and "b9b4712a" not in text
    assert "INSERT INTO `customers` VALUES (1,'Anna'),(2,'Boris');" in text and "CREATE DATABASE" in text
    assert out.stat().st_mode & 0o777 == 0o600  # it holds personal data


def test_a_gzipped_dump_reads_the_same(tmp_path):
    with open(DUMPS / "cloudsql-export.sql", "rb") as src, gzip.open(tmp_path / "export.sql.gz", "wb") as dst:
        dst.write(src.read())
    data = lab_data()
    set_path(data, "database.initial_load", {"dump": "export.sql.gz"})
    dump = load.inspect(load_params(write_params(tmp_path, data)))
    assert dump.databases == ["shop"] and len(dump.left_out) == 4


def test_a_dump_without_databases_needs_one_named(tmp_path):
    with pytest.raises(RunbookError, match="names no database.*initial_load.database"):
        load.inspect(params_with(tmp_path, "single-database.sql"))
    dump = load.inspect(params_with(tmp_path, "single-database.sql", database="notes"))
    assert dump.databases == ["notes"] and not dump.names_databases and dump.left_out == []
    text = load.write_loadable(dump, tmp_path / "x.sql", "notes").read_text()
    assert text.startswith("CREATE DATABASE IF NOT EXISTS `notes`;\nUSE `notes`;\n")


def test_a_missing_dump_is_named(tmp_path):
    data = lab_data()
    set_path(data, "database.initial_load", {"dump": "nowhere.sql"})
    with pytest.raises(RunbookError, match="initial_load.dump: .*nowhere.sql is not a file"):
        load.inspect(load_params(write_params(tmp_path, data)))


def test_the_load_is_planned_once(tmp_path):
    p = params_with(tmp_path, "cloudsql-export.sql")
    dump = load.inspect(p)
    facts = {"db1": {"loads": []}}
    [step] = load.plan(p, facts, dump)
    assert step.host == "db1" and "cloudsql-export.sql" in step.change and "4 statement(s) left out" in step.change
    assert load.plan(p, {"db1": {"loads": [dump.sha256]}}, dump) == []
    assert load.plan(p, {"db1": {"loads": None}}, dump) != []  # unknown: planned (the load records itself)


def test_the_checksum_generator_covers_base_tables_of_the_named_schemas_with_null_markers():
    sql = load.checksum_generator(["shop", "o'dd"])
    assert "c.TABLE_SCHEMA IN ('shop', 'o\\'dd')" in sql and "TABLE_TYPE = 'BASE TABLE'" in sql
    assert "ISNULL(" in sql and "BIT_XOR(CAST(CRC32(CONCAT_WS(''#''" in sql and "group_concat_max_len" in sql


def test_compare_names_the_table_and_the_server_that_differ(tmp_path):
    p = load_params(write_params(tmp_path, lab_data()))
    source = {"shop.orders": (1200, "123"), "shop.customers": (300, "9")}
    by_host = {"db1": dict(source), "db2": {"shop.orders": (1199, "77"), "shop.customers": (300, "9")}}
    rows, problems = load.compare(p, by_host, source, {"db2": "applied", "db3": "pending: applies the load about tomorrow"})
    assert [r["match"] for r in rows] == ["ok", "MISMATCH: db2"]
    assert rows[1]["db3"].startswith("pending")
    assert problems == ["shop.orders: rows or checksum on db2 differ from the source (1200 rows, 123 there; db2: 1199 rows, 77)"]
    rows, problems = load.compare(p, {"db1": {"shop.orders": (1, "1")}}, None, {})
    assert problems == [] and "source" not in rows[0]


def test_parse_checksums_ignores_noise():
    assert load.parse_checksums("shop.a\t3\t42\nWarning: x\nshop.b\t0\t0\n") == {"shop.a": (3, "42"), "shop.b": (0, "0")}
