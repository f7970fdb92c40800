"""14-data-residency: every store and flow judged against the data country, on the data and on the lab.

On the seed lab (about a minute): the report passes; a log shipper pointed outside the country fails it,
naming the flow; a replica's host declared in another country is refused before anything runs, naming the
field (the same judgement the report makes, shown here on the data).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import lab_data, require_lab, runbook, running_lab, set_path, write_params
from runbooklib.params import Params
from runbooklib.residency import assess
from runbooklib.residency.facts import parse_bricks, parse_nameservers

# what the seed lab answers (see the lab test below): resolvers on the bridge, replicas replicating from db1
LIVE = {"hosts": {h: {"nameservers": ["10.77.0.1"]} for h in ("cp1", "w1", "db1", "edge1")},
        "unreachable": {},
        "database": {"db1": {"source_host": "", "log_bin": "ON"}, "db2": {"source_host": "10.77.0.31", "log_bin": "ON"},
                     "db3": {"source_host": "10.77.0.31", "log_bin": "ON"}},
        "gluster": {"bricks": ["10.77.0.41:/bricks/cdn", "10.77.0.42:/bricks/cdn"]}}


def params_of(data: dict) -> Params:
    """Parameters as the model reads them, without the cross-field rules (which refuse some of these cases)."""
    p = Params.model_validate(data)
    p._source = Path(tempfile.gettempdir()) / "residency-test" / "params.yaml"  # relative paths resolve there (nothing is made)
    return p


def failed(items) -> dict[str, str]:
    return {f"{i.kind} {i.what} {i.where}": i.evidence for i in items if i.status == "fail"}


def test_the_lab_parameters_pass_with_every_place_declared():
    items = assess.assess(params_of(lab_data()), LIVE)
    assert failed(items) == {}
    kinds = {(i.kind, i.what) for i in items}
    for expected in [("store", "database primary"), ("store", "database replica"), ("store", "database delayed replica"),
                     ("flow", "database replication source"), ("store", "block storage node (Ceph OSD)"),
                     ("store", "CDN volume brick"), ("store", "etcd member and its local snapshots"),
                     ("flow", "etcd snapshot copies"), ("store", "log indices (OpenSearch)"), ("flow", "log shipping"),
                     ("store", "run archive"), ("flow", "registry pulls"), ("flow", "DNS queries")]:
        assert expected in kinds, expected
    assert assess.verdict(items) == ("compliant", [])
    replication = [i for i in items if i.what == "database replication source"]
    assert all("live: db" in i.evidence and "replicates from 10.77.0.31" in i.evidence for i in replication)
    # the registry is outside the country, and passes only because image pulls carry no personal data
    reg = [i for i in items if i.what == "registry pulls"]
    assert {i.country for i in reg} == {"EU", "US"} and not any(i.personal_data for i in reg)


def test_a_replica_declared_in_another_country_fails():
    data = lab_data()
    set_path(data, "inventory.hosts[9].location.country", "DE")  # db2, the real-time replica
    items = assess.assess(params_of(data), LIVE)
    verdict, problems = assess.verdict(items)
    assert verdict == "not compliant"
    assert "store database replica db2" in failed(items)
    assert "outside RU" in failed(items)["store database replica db2"]
    # the replica replicates from db1: that flow's source is in RU and still passes
    assert not any(k.startswith("flow database replication source db2") for k in failed(items))


def test_a_log_shipper_outside_fails_and_an_undeclared_one_too():
    data = lab_data()
    set_path(data, "logging.endpoint", "https://logs.example.de:9200")
    undeclared = failed(assess.assess(params_of(data), LIVE))
    assert any(k.startswith("flow log shipping") and "no declared location" in v for k, v in undeclared.items()), undeclared
    data["residency"]["endpoints"].append({"name": "frankfurt-logs", "addresses": ["logs.example.de"], "country": "DE"})
    outside = failed(assess.assess(params_of(data), LIVE))
    assert outside["flow log shipping cluster nodes -> frankfurt-logs"].startswith("in DE, outside RU")
    assert "store log indices (OpenSearch) logs.example.de" in outside


def test_live_facts_name_what_the_parameters_do_not():
    live = copy.deepcopy(LIVE)
    live["hosts"]["w1"]["nameservers"] = ["8.8.8.8"]  # a host resolving through a resolver nobody declared
    live["database"]["db3"]["source_host"] = "10.9.9.9"  # a replica pulling from somewhere unknown
    live["unreachable"] = {"db2": "connection refused"}
    got = failed(assess.assess(params_of(lab_data()), live))
    assert "flow DNS queries w1 -> 8.8.8.8" in got
    assert "flow database replication source db3 <- 10.9.9.9" in got
    assert got["store database replica db2"].startswith("cannot judge: connection refused")
    # a host with no store on it (a worker) that did not answer is not judged either: its DNS flows are unknown
    live["unreachable"]["w4"] = "host key does not match"
    got = failed(assess.assess(params_of(lab_data()), live))
    assert got["flow DNS queries w4"].startswith("cannot judge: host key does not match")
    assert "flow DNS queries db2" not in got  # said once per host: db2 fails as a store already


def test_no_declared_archive_location_fails():
    data = lab_data()
    del data["residency"]
    got = failed(assess.assess(params_of(data), LIVE))
    assert "no declared location" in got["store run archive runbook host"]
    assert any(k.startswith("flow registry pulls") for k in got)  # registries undeclared: not guessed either


def test_the_residency_section_is_validated(tmp_path):
    data = lab_data()
    data["residency"]["endpoints"].append({"name": "bad", "addresses": ["not an address!"], "country": "RU"})
    r = runbook("check", str(write_params(tmp_path, data)))
    assert r.returncode == 2
    assert "residency.endpoints[3].addresses[0]: 'not an address!' is neither an IP address nor a DNS name" in r.stderr
    data = lab_data()
    data["residency"]["endpoints"].append({"name": "dup", "addresses": ["10.77.0.31"], "country": "RU"})
    data["residency"]["endpoints"].append({"name": "dup2", "addresses": ["gcr.io"], "country": "RU"})
    r = runbook("check", str(write_params(tmp_path, data)))
    assert r.returncode == 2
    assert "residency.endpoints[3].addresses[0]: 10.77.0.31 is inventory host db1" in r.stderr
    assert "residency.endpoints[4].addresses[0]: gcr.io is also declared for endpoint google-registry" in r.stderr


def test_fact_parsers():
    assert parse_nameservers("# lab\nnameserver 10.77.0.1\nsearch lab\nnameserver 10.0.0.2\n") == ["10.77.0.1", "10.0.0.2"]
    info = ("Volume Name: cdn\nType: Replicate\nBricks:\nBrick1: 10.77.0.41:/bricks/cdn\nBrick2: 10.77.0.42:/bricks/cdn\n"
            "Brick3: 10.77.0.31:/bricks/cdn-arbiter (arbiter)\nOptions Reconfigured:\n")
    assert parse_bricks(info) == ["10.77.0.41:/bricks/cdn", "10.77.0.42:/bricks/cdn", "10.77.0.31:/bricks/cdn-arbiter"]
    assert parse_bricks("Volume cdn does not exist") == []


# -- on the lab ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_lab()
    with running_lab(tmp_path_factory.mktemp("residency"), "rbres", "10.105.0.0/24", profile="seed") as lab:
        yield lab


def _last_manifest(archive_root) -> dict:
    return json.loads(max(archive_root.rglob("*.manifest.json"), key=lambda p: p.stat().st_mtime).read_text())


def test_on_the_lab_passes_then_fails_for_a_log_shipper_outside(lab, archive_root, tmp_path):
    nb = "notebooks/14-data-residency.ipynb"
    ok = runbook("run", nb, "--params", str(lab.params_file), timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    m = _last_manifest(archive_root)
    assert m["verdict"]["verdict"] == "compliant" and m["mode"] == "plan" and m["changes"] == []
    text = (archive_root / m["files"]["notebook"]["path"]).read_text()
    assert "DNS queries" in text and "live: /etc/resolv.conf" in text  # the lab's VMs resolve through the bridge
    assert "Data residency" in text  # the one-page summary is in the archived run

    data = yaml.safe_load(lab.params_file.read_text())
    data["logging"]["endpoint"] = "https://logs.example.de:9200"
    data["residency"]["endpoints"].append({"name": "frankfurt-logs", "addresses": ["logs.example.de"], "country": "DE"})
    outside = lab.params_file.with_name("outside.yaml")
    outside.write_text(yaml.safe_dump(data, sort_keys=False))
    bad = runbook("run", nb, "--params", str(outside), timeout=600)
    assert bad.returncode == 4, bad.stdout + bad.stderr[-3000:]
    m = _last_manifest(archive_root)
    assert m["verdict"]["verdict"] == "not compliant"
    assert any(p.startswith("flow log shipping at cluster nodes -> frankfurt-logs: in DE, outside RU") for p in m["verdict"]["problems"])

    # a replica's host declared in another country: refused before anything remote, naming the field
    data = yaml.safe_load(lab.params_file.read_text())
    i = next(n for n, h in enumerate(data["inventory"]["hosts"]) if h["name"] == "db2")
    data["inventory"]["hosts"][i]["location"]["country"] = "DE"
    abroad = lab.params_file.with_name("abroad.yaml")
    abroad.write_text(yaml.safe_dump(data, sort_keys=False))
    refused = runbook("run", nb, "--params", str(abroad))
    assert refused.returncode == 2
    assert f"inventory.hosts[{i}].location.country: db2 has role database" in refused.stderr and "requires RU" in refused.stderr
