"""Fact parsers on recorded outputs (tests/data/facts/<fact>.yaml: one list of cases per fact)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbooklib.params import load_params
from runbooklib.vm import facts

from conftest import LAB_PARAMS

DATA = Path(__file__).parent / "data" / "facts"
CASES = [(path.stem, case) for path in sorted(DATA.glob("*.yaml")) for case in yaml.safe_load(path.read_text())]


@pytest.mark.parametrize("fact,case", CASES, ids=[f"{f}: {c['name']}" for f, c in CASES])
def test_parser_on_recorded_output(fact, case):
    assert facts.FACTS_BY_NAME[fact].process(case["stdout"]) == case["expect"]


def test_every_fact_has_recorded_cases():
    assert {f for f, _ in CASES} == set(facts.FACTS_BY_NAME)


def test_host_script_marks_each_fact_and_names_the_other_nodes():
    params = load_params(LAB_PARAMS)
    script = facts.host_script(params, params.host("cp1"))
    assert script.count(facts.MARK + " ") == len(facts.FACTS)
    assert "getent hosts cp2 cp3 w1" in script and "getent hosts cp1" not in script
    assert "getent passwd deploy" in script


def test_parse_host_output_splits_sections_and_survives_a_broken_parser(monkeypatch):
    out = (f"{facts.MARK} kernel\n6.1.0-28-amd64\n{facts.MARK}-rc 0\n"
           f"{facts.MARK} cpus\n4\n{facts.MARK}-rc 0\n")
    assert facts.parse_host_output(out) == {"kernel": "6.1.0-28-amd64", "cpus": 4}
    broken = facts.Fact("cpus", "", "nproc", lambda text: 1 / 0)
    monkeypatch.setitem(facts.FACTS_BY_NAME, "cpus", broken)
    parsed = facts.parse_host_output(out)
    assert parsed["kernel"] == "6.1.0-28-amd64" and "ZeroDivisionError" in parsed["cpus"]["error"]
