"""Database facts as data: recorded outputs per fact (tests/data/database/facts/<fact>.yaml) and what the parser makes of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbooklib.database import facts as dbf
from runbooklib.database.dialects import dialect
from runbooklib.phase.facts import host_script, parse_host_output

DATA = Path(__file__).resolve().parents[1] / "data" / "database" / "facts"
FACTS = {f.name: f for f in dbf.facts(dialect("mariadb"), "/var/lib/mysql", "repl")}
CASES = [(path.stem, case) for path in sorted(DATA.glob("*.yaml")) for case in yaml.safe_load(path.read_text())]


@pytest.mark.parametrize(("fact", "case"), CASES, ids=[f"{f}: {c['name']}" for f, c in CASES])
def test_fact_parser(fact, case):
    assert FACTS[fact].process(case["stdout"]) == case["expect"]


def test_every_fact_has_recorded_cases():
    assert {f for f, _ in CASES} == set(FACTS)


def test_a_server_that_does_not_answer_is_a_fact_with_the_clients_words():
    sql = FACTS["sql"].process("ERROR 2002 (HY000): Can't connect to local server through socket '/run/mysqld/mysqld.sock' (2)\n"
                               "--rc--\nrc:1\n")
    assert sql["answering"] is False and "Can't connect" in sql["error"] and sql["variables"] == {}


def test_one_round_trip_holds_every_fact_and_a_cut_output_leaves_defaults_with_a_reason():
    chosen = tuple(FACTS.values())
    script = host_script(chosen)
    assert script.count("@@RBFACT ") == len(chosen) and "$SQL -e" in script
    values, errors = parse_host_output(chosen, "@@RBFACT server\nmariadbd  Ver 10.11.19\n@@RBFACT-rc 0\n")
    assert values["server"]["installed"] and set(errors) == set(FACTS) - {"server"}
    assert values["sql"] == {"answering": False, "error": "not read", "variables": {}}


@pytest.mark.parametrize("flavour", ["mysql-5.7", "mysql-8.0", "mysql-8.4", "mariadb"])
def test_each_flavour_reads_its_own_status_statement_and_binaries(flavour):
    d = dialect(flavour)
    table = {f.name: f for f in dbf.facts(d, "/srv/db", "repl")}
    assert d.status_statement in table["replica"].command
    assert d.server in table["server"].command and d.service in table["service"].command
    assert "/srv/db/mysql" in table["datadir_initialised"].command and d.config_file in table["config"].command
