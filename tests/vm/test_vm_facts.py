"""VM fact parsers on recorded outputs (tests/data/vm/facts/<fact>.yaml: one list of cases per fact)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import LAB_PARAMS
from runbooklib.params import load_params
from runbooklib.phase.facts import MARK, Fact, host_script, parse_host_output
from runbooklib.vm import facts

DATA = Path(__file__).parents[1] / "data" / "vm" / "facts"
CASES = [(path.stem, case) for path in sorted(DATA.glob("*.yaml")) for case in yaml.safe_load(path.read_text())]


@pytest.mark.parametrize("fact,case", CASES, ids=[f"{f}: {c['name']}" for f, c in CASES])
def test_parser_on_recorded_output(fact, case):
    assert facts.FACTS_BY_NAME[fact].process(case["stdout"]) == case["expect"]


def test_every_fact_has_recorded_cases():
    assert {f for f, _ in CASES} == set(facts.FACTS_BY_NAME)


@pytest.mark.parametrize("fact", facts.FACTS, ids=lambda f: f.name)
def test_every_default_has_the_shape_of_a_parsed_value(fact):
    """A failed parser leaves the default: checks then read the same keys as on a parsed value."""
    parsed = fact.process(next(c["stdout"] for f, c in CASES if f == fact.name))
    default = fact.empty()
    if isinstance(parsed, dict) and fact.name not in ("resolution", "sshd", "managed_files"):
        assert set(default) == set(parsed)
    else:
        assert default is None or isinstance(default, type(parsed))


def test_host_script_marks_each_fact_and_names_the_other_nodes():
    params = load_params(LAB_PARAMS)
    fs = facts.fact_set(params)
    script = host_script(fs.facts, fs.context(params.host("cp1")))
    assert script.count(MARK + " ") == len(facts.FACTS)
    assert "getent hosts cp2 cp3 w1" in script and "getent hosts cp1" not in script
    assert "getent passwd deploy" in script


def test_parse_host_output_splits_sections_and_survives_a_broken_parser():
    out = f"{MARK} kernel\n6.1.0-28-amd64\n{MARK}-rc 0\n{MARK} cpus\n4\n{MARK}-rc 0\n"
    chosen = (facts.FACTS_BY_NAME["kernel"], facts.FACTS_BY_NAME["cpus"])
    assert parse_host_output(chosen, out) == ({"kernel": "6.1.0-28-amd64", "cpus": 4}, {})
    broken = Fact("cpus", "", "nproc", lambda text: 1 / 0, default=None)
    values, errors = parse_host_output((chosen[0], broken), out)
    assert values == {"kernel": "6.1.0-28-amd64", "cpus": None}
    assert "ZeroDivisionError" in errors["cpus"]


def test_a_fact_cut_short_is_reported_not_guessed():
    out = f"{MARK} kernel\n6.1.0-28-amd64\n{MARK}-rc 0\n{MARK} swap\n"  # the connection died inside swap
    values, errors = parse_host_output((facts.FACTS_BY_NAME["kernel"], facts.FACTS_BY_NAME["swap"]), out)
    assert values["swap"] == {"active": [], "fstab": []} and "cut short" in errors["swap"]


def test_a_fact_whose_output_lacks_a_final_newline_is_still_whole():
    """A file printed by cat without its last newline puts the end marker on the same line: the fact is complete."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx deploy@lab"
    out = (f"{MARK} deploy_user\ndeploy:x:1001:1001::/home/deploy:/bin/bash\n--groups--\ndeploy docker\n--keys--\n{key}{MARK}-rc 0\n"
           f"{MARK} kernel\n6.1.0-28-amd64\n{MARK}-rc 0\n")
    values, errors = parse_host_output((facts.FACTS_BY_NAME["deploy_user"], facts.FACTS_BY_NAME["kernel"]), out)
    assert errors == {}
    assert values["deploy_user"]["authorized_keys"] == [key] and values["kernel"] == "6.1.0-28-amd64"


def test_the_facts_command_imports_no_notebook_machinery(tmp_path):
    """`runbook facts` starts fast: papermill, nbconvert, matplotlib stay out of its imports (fabric too, until a connection opens)."""
    import subprocess
    import sys

    from conftest import ROOT, lab_data, write_params

    params = write_params(tmp_path, lab_data())  # its key file is missing: the command stops after its imports
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "runbooklib.cli", "facts", "--params", str(params), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "ssh.key" in done.stderr, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"runbooklib.ssh", "paramiko", "runbooklib.vm.facts"} <= imported
    heavy = {m for m in imported if m.split(".")[0] in ("papermill", "nbconvert", "matplotlib", "fabric", "nbformat", "ipykernel")}
    assert heavy == set()
