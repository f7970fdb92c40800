"""Rendering as data: a parameter file in, cluster.yml or RKE2's configs out (tests/data/kubernetes/render/*.yaml).

Each case names a committed parameter file (``params``), the changes to make to it (``set``, paths
as in tests/data/params_cases.yaml), the format (``rke1`` or ``rke2``) and the exact text expected;
an RKE2 case also gives the install order. Every case is read back too: the round trip gives the
spec again (for RKE2, but for what its configs cannot carry). Adding a case is adding a file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, set_path
from runbooklib.kubernetes import rke1, rke2
from runbooklib.kubernetes.spec import ClusterFileError, ClusterSpec, spec_from_params
from runbooklib.params import Params, parse_params

DATA = ROOT / "tests" / "data" / "kubernetes" / "render"
CASES = sorted(DATA.glob("*.yaml"))


def case_data(case: dict) -> dict:
    data = yaml.safe_load((ROOT / case["params"]).read_text())
    for path, value in (case.get("set") or {}).items():
        set_path(data, path, value)
    return data


def case_params(case: dict, validate: bool = True) -> Params:
    """The case's parameter file, shown as its repository path (so rendered headers do not depend on the checkout).

    ``validate=False`` skips the cross-field rules (not the types): lint must judge what they would refuse too.
    """
    data = case_data(case)
    if validate:
        return parse_params(yaml.safe_dump(data, sort_keys=False), case["params"], source=Path(case["params"]))
    params = Params.model_validate(data)
    params._source = Path(case["params"])
    return params


def rendered(case: dict):
    params = case_params(case)
    if case["format"] == "rke1":
        return rke1.render_cluster_yml(params, case["ssh_key_path"])
    return rke2.render_rke2_configs(spec_from_params(params))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_render_case(path):
    case = yaml.safe_load(path.read_text())
    assert rendered(case) == case["expect"]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_round_trip(path):
    case = yaml.safe_load(path.read_text())
    spec = spec_from_params(case_params(case))
    if case["format"] == "rke1":
        assert rke1.read_cluster_yml(rke1.render_cluster_yml(spec, "/keys/id")) == spec
        return
    back = rke2.read_rke2_configs(rke2.render_rke2_configs(spec), name=spec.name, version=spec.version)
    # a config carries no SSH user or port (rke2.NOT_CARRIED): the reader gives its defaults
    assert back == dataclasses.replace(spec, nodes=tuple(dataclasses.replace(n, user="root", port=22) for n in spec.nodes))


@pytest.mark.parametrize("path", [p for p in CASES if yaml.safe_load(p.read_text())["format"] == "rke2"], ids=lambda p: p.stem)
def test_rke2_install_order_and_kinds(path):
    case = yaml.safe_load(path.read_text())
    spec = spec_from_params(case_params(case))
    assert rke2.install_order(spec) == case["install_order"]
    assert {n.name: rke2.node_kind(spec, n) for n in spec.nodes} == case["kinds"]


def test_rke1_round_trip_of_the_other_distribution_changes_only_that():
    spec = spec_from_params(case_params({"params": "params/lab-small.yaml"}))
    assert spec.distribution == "rke2"
    assert rke1.read_cluster_yml(rke1.render_cluster_yml(spec, "/keys/id")) == dataclasses.replace(spec, distribution="rke1")


def test_the_seed_slip_cannot_be_rendered():
    """Both components get the one service range: the founding story's cluster.yml set it on kube-api only."""
    text = rke1.render_cluster_yml(case_params({"params": "params/lab.yaml"}), "/keys/id")
    services = yaml.safe_load(text)["services"]
    assert services["kube-api"]["service_cluster_ip_range"] == services["kube-controller"]["service_cluster_ip_range"] == "10.43.0.0/21"


def test_a_spec_needs_the_ssh_key_given():
    spec = spec_from_params(case_params({"params": "params/lab.yaml"}))
    with pytest.raises(ValueError, match="cluster lab: pass ssh_key_path"):
        rke1.render_cluster_yml(spec)


def test_rke2_configs_never_hold_a_token_and_only_joining_nodes_read_one():
    spec = spec_from_params(case_params({"params": "params/lab.yaml"}))
    configs = {name: yaml.safe_load(text) for name, text in rke2.render_rke2_configs(spec).items()}
    assert all("token" not in c for c in configs.values())
    first = rke2.first_server(spec).name
    assert "token-file" not in configs[first] and "server" not in configs[first]  # it creates the token
    assert {c["token-file"] for name, c in configs.items() if name != first} == {rke2.TOKEN_FILE}


def test_spec_needs_a_kubernetes_section():
    data = case_data({"params": "params/lab.yaml"})
    del data["kubernetes"]
    params = parse_params(yaml.safe_dump(data), "params/lab.yaml", source=Path("params/lab.yaml"))
    with pytest.raises(ClusterFileError, match=r"params/lab.yaml: kubernetes: no kubernetes section"):
        spec_from_params(params)


def test_tls_san_leaves_out_the_control_plane_addresses():
    case = {"params": "params/lab.yaml", "set": {"kubernetes.tls_san": ["api.lab.internal", "10.77.0.11", "api.lab.internal", "10.77.0.21"]}}
    assert spec_from_params(case_params(case)).tls_san == ("api.lab.internal", "10.77.0.21")


# -- reading what a person wrote: errors name the file and the field ------------------------------

READ_ERRORS = [
    ("nodes: [{role: [worker]}]", "cluster.yml: nodes[0].address: no address"),
    ("nodes: [{address: 10.0.0.1, port: ssh}]", "cluster.yml: nodes[0].port: 'ssh' is not a port number"),
    ("nodes: [{address: 10.0.0.1, taints: [{key: a, value: b, effect: Never}]}]", "cluster.yml: nodes[0].taints[0]: 'a=b:Never' is not a taint"),
    ("services: {kube-api: {service_cluster_ip_range: 10.43.0.1/16}}", "cluster.yml: services.kube-api.service_cluster_ip_range: '10.43.0.1/16' is not an IPv4 network"),
    ("services: {kubelet: {cluster_dns_server: dns}}", "cluster.yml: services.kubelet.cluster_dns_server: 'dns' is not an IPv4 address"),
    ("services: {etcd: {snapshot: false}}", "cluster.yml: services.etcd.snapshot: false turns off recurring etcd snapshots"),
    ("services: {etcd: {creation: 30m}}", "cluster.yml: services.etcd.creation: '30m' is not a whole number of hours"),
    ("services: {etcd: {retention: three days}}", "cluster.yml: services.etcd.retention: 'three days' is not a duration"),
    ("services: [kube-api]", "cluster.yml: services: expected a mapping, found list"),
    ("nodes: {address: 10.0.0.1}", "cluster.yml: nodes: expected a list, found dict"),
    ("nodes: [unclosed", "cluster.yml: line 1: not valid YAML"),
]


@pytest.mark.parametrize("text,message", READ_ERRORS, ids=[m.split(": ")[1] for _, m in READ_ERRORS])
def test_cluster_yml_read_errors(text, message):
    with pytest.raises(ClusterFileError) as info:
        rke1.read_cluster_yml(text, "cluster.yml")
    assert str(info.value).startswith(message), str(info.value)


def test_cluster_yml_defaults_are_rke_defaults():
    spec = rke1.read_cluster_yml("nodes: [{address: 10.0.0.1, role: [worker, etcd]}]")
    assert spec == ClusterSpec(name="local", distribution="rke1", version="", nodes=spec.nodes, etcd_snapshot_interval_hours=12,
                               etcd_snapshot_retention=6, drain_timeout_seconds=120)  # RKE's node_drain_input.timeout
    assert spec.nodes[0].name == "10.0.0.1" and spec.nodes[0].roles == ("etcd", "worker")


def test_backup_config_wins_over_creation_and_retention():
    spec = rke1.read_cluster_yml("services: {etcd: {creation: 6h, retention: 24h, backup_config: {interval_hours: 8, retention: 9}}}")
    assert (spec.etcd_snapshot_interval_hours, spec.etcd_snapshot_retention) == (8, 9)


def test_rke2_servers_must_agree():
    spec = spec_from_params(case_params({"params": "params/lab.yaml"}))
    configs = rke2.render_rke2_configs(spec)
    configs["cp2"] = configs["cp2"].replace("service-cidr: 10.43.0.0/21", "service-cidr: 10.43.0.0/16")
    with pytest.raises(ClusterFileError, match=r"cp2 /etc/rancher/rke2/config.yaml: service-cidr: '10.43.0.0/16' differs from "
                                               r"'10.43.0.0/21' on cp1"):
        rke2.read_rke2_configs(configs)
