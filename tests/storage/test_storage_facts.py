"""CDN storage facts as data: recorded outputs per fact (tests/data/storage/facts/<fact>.yaml) and what the parser makes of them;
the verification's readings (tests/data/storage/verify/): volume status and heal info."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbooklib.phase.facts import host_script, parse_host_output
from runbooklib.storage import facts as sf
from runbooklib.storage import verify

DATA = Path(__file__).resolve().parents[1] / "data" / "storage"
FACTS = {f.name: f for f in sf.facts("cdn", "/bricks/cdn", "/cdn-data")}
CASES = [(path.stem, case) for path in sorted((DATA / "facts").glob("*.yaml")) for case in yaml.safe_load(path.read_text())]
STATUS = yaml.safe_load((DATA / "verify" / "volume_status.yaml").read_text())
HEAL = yaml.safe_load((DATA / "verify" / "heal_info.yaml").read_text())


@pytest.mark.parametrize(("fact", "case"), CASES, ids=[f"{f}: {c['name']}" for f, c in CASES])
def test_fact_parser(fact, case):
    assert FACTS[fact].process(case["stdout"]) == case["expect"]


def test_every_fact_has_recorded_cases():
    assert {f for f, _ in CASES} == set(FACTS)


@pytest.mark.parametrize("case", STATUS, ids=[c["name"] for c in STATUS])
def test_volume_status(case):
    assert sf.parse_volume_status(case["stdout"]) == case["expect"]


@pytest.mark.parametrize("case", HEAL, ids=[c["name"] for c in HEAL])
def test_heal_info(case):
    bricks = sf.parse_heal_info(case["stdout"])
    assert bricks == case["expect"]
    assert verify.heal_clean(bricks) is case["clean"]


def test_one_round_trip_holds_every_fact_and_the_paths_are_quoted():
    chosen = tuple(FACTS.values())
    script = host_script(chosen)
    assert script.count("@@RBFACT ") == len(chosen) and "gluster volume info cdn" in script and "--mountpoint /cdn-data" in script
    values, errors = parse_host_output(chosen, "@@RBFACT service\nactive\nenabled\n@@RBFACT-rc 0\n")
    assert values["service"] == {"active": "active", "enabled": "enabled"} and set(errors) == set(FACTS) - {"service"}
    assert values["brick_folder"] == {"parent_exists": False, "on_root": False, "filesystem": ""}
    with pytest.raises(ValueError):  # a brick folder fact without its device line is not read as "not on root"
        sf.parse_brick_folder("parent yes\n")
