"""The upgrade planner: paths on a table of version pairs, the skew rules on a table of states, and the plans per distribution.

The tables are data (tests/data/kubernetes/upgrade/): a case is an entry. The plans are made from a
running cluster given as data (``read_running`` replaced: the lab test reads a real one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, set_path
from runbooklib.kubernetes import bringup, install_rke2, rke1, state, upgrade
from runbooklib.kubernetes.upgrade import NodeVersion, PathStep, Release, Running, UpgradeError, Version
from runbooklib.params import parse_params

DATA = ROOT / "tests" / "data" / "kubernetes" / "upgrade"
PATHS = yaml.safe_load((DATA / "paths.yaml").read_text())
SKEW = yaml.safe_load((DATA / "skew.yaml").read_text())
KINDS = {"cp": dict(control_plane=True, server=True, worker=False), "etcd": dict(control_plane=False, server=True, worker=False),
         "w": dict(control_plane=False, server=False, worker=True)}
V = Version.parse


def nodes_of(case: dict) -> list[NodeVersion]:
    return [NodeVersion(name, V(version), **KINDS[kind]) for name, (version, kind) in case["nodes"].items()]


def path_of(case: dict) -> list[PathStep]:
    via = [Release(V(v), f"kubernetes.upgrade_path[{i}]") for i, v in enumerate(case.get("via", []))]
    return upgrade.path(nodes_of(case), Release(V(case["target"]), "kubernetes.version"), via, case.get("batch", 1))


@pytest.mark.parametrize("case", PATHS, ids=[c["name"] for c in PATHS])
def test_path(case):
    if "error" in case:
        with pytest.raises(UpgradeError) as e:
            path_of(case)
        assert case["error"] in str(e.value)
        return
    steps = path_of(case)
    assert [[str(s.release.version), list(s.servers), [list(b) for b in s.batches]] for s in steps] == case["expect"]
    assert upgrade.simulate(nodes_of(case), steps) == []  # every state on the way is within the policy, no minor skipped


@pytest.mark.parametrize("case", SKEW, ids=[c["name"] for c in SKEW])
def test_skew(case):
    as_versions = lambda d: {k: V(v) for k, v in (d or {}).items()}  # noqa: E731
    rows = upgrade.skew(as_versions(case["apiservers"]), as_versions(case["kubelets"]),
                        as_versions(case["controllers"]) if "controllers" in case else None,
                        V(case["kubectl"]) if case.get("kubectl") else None)
    failed = [r["component"] for r in rows if r["status"] != "ok"]
    assert failed == case["fail"]
    assert [r["status"] for r in rows if r["status"] != "ok"] == ["warn" if c == "kubectl" else "fail" for c in failed]
    assert all(r["fix"] for r in rows if r["status"] == "fail") and not any(r["fix"] for r in rows if r["status"] == "ok")


def test_versions_are_read_with_their_build_suffixes_and_compared_as_numbers():
    assert [str(V(t)) for t in ("v1.35.4+rke2r1", "v1.36.3+kwok-lab-simulation", "v1.32.2-rancher1-1", "1.30.14")] == \
        ["v1.35.4", "v1.36.3", "v1.32.2", "v1.30.14"]
    assert V("v1.9.0") < V("v1.10.0") and V("v1.35.4").line == "v1.35"
    with pytest.raises(ValueError, match="write it like v1.35.4"):
        V("1.35")


def test_simulate_refuses_workers_before_the_control_plane_and_a_skipped_minor():
    nodes = [NodeVersion("cp1", V("v1.35.4"), True, True, False), NodeVersion("w1", V("v1.35.4"))]
    target = Release(V("v1.36.3"), "kubernetes.version")
    workers_first = [PathStep(target, (), (("w1",),)), PathStep(target, ("cp1",), ())]
    assert upgrade.simulate(nodes, workers_first) == [
        "after w1 to v1.36.3: kubelet not newer than kube-apiserver: kubelet w1: v1.36.3 is newer than the kube-apiserver at v1.35.4; "
        "upgrade the control plane to v1.36 first; a kubelet is upgraded after the API servers"]
    skipping = [PathStep(Release(V("v1.37.0"), "kubernetes.version"), ("cp1",), (("w1",),))]
    assert upgrade.simulate(nodes, skipping)[0] == "cp1 would go from v1.35.4 to v1.37.0, skipping v1.36"


# -- plans, from a running cluster given as data ---------------------------------------------------

def params_for(tmp_path: Path, base: str = "params/lab-small.yaml", **sets):
    data = yaml.safe_load((ROOT / base).read_text())
    data["kubernetes"].update(state_dir="kubernetes-state", rke="rke")  # the test's own folder, rke on PATH
    for key, value in sets.items():
        set_path(data, key.replace("__", "."), value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    params = parse_params(path.read_text(), str(path), source=path)
    state.state_dir(params, create=True)
    state.kubeconfig_path(params).write_text("# the API is replaced in these tests\n")
    return params


def artifacts(folder: Path, release: str) -> str:
    """An artifact folder of a release (its tarball made unique by the release), as RKE2's release page gives it."""
    folder.mkdir(parents=True)
    data = f"rke2 {release}".encode()
    (folder / install_rke2.TARBALL).write_bytes(data)
    (folder / install_rke2.SUMS).write_text(f"{hashlib.sha256(data).hexdigest()}  {install_rke2.TARBALL}\n")
    (folder / install_rke2.INSTALLER).write_text("#!/bin/sh\n")
    return str(folder)


def running(monkeypatch, *nodes: NodeVersion, api: str | None = None, **extra) -> None:
    api_version = V(api) if api else max(n.version for n in nodes if n.control_plane)
    monkeypatch.setattr(upgrade, "read_running", lambda params, kubeconfig: Running(api_version, list(nodes), **extra))


CP1 = dict(control_plane=True, server=True, worker=False)
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def test_rke2_plan_snapshot_first_then_the_control_plane_then_each_worker_drained_and_uncordoned(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__version="v1.36.3", kubernetes__artifacts=artifacts(tmp_path / "a136", "v1.36.3"),
                        kubernetes__upgrade_path=[{"version": "v1.35.4", "artifacts": artifacts(tmp_path / "a135", "v1.35.4")}])
    running(monkeypatch, NodeVersion("cp1", V("v1.34.2+rke2r1"), **CP1), NodeVersion("w1", V("v1.34.2+rke2r1")))
    plan = upgrade.plan(params, state.kubeconfig_path(params), now=NOW)
    assert plan.blockers == []
    assert [r["release"] for r in plan.path_table("rke2")] == ["v1.35.4", "v1.36.3"]
    assert [(s.host, s.operation) for s in plan.steps] == [("cp1", "etcd snapshot")] + [
        *[("cp1", op) for op in ("rke2 artifacts", "rke2 install", "rke2 restart")],
        *[("w1", op) for op in ("cordon and drain", "rke2 artifacts", "rke2 install", "rke2 restart", "uncordon")]] * 2
    assert plan.steps[0].command == "rke2 etcd-snapshot save --name pre-upgrade-v1.36.3"
    installs = [s for s in plan.steps if s.operation == "rke2 install"]
    sums = [hashlib.sha256(f"rke2 {v}".encode()).hexdigest() for v in ("v1.35.4", "v1.36.3")]
    assert [s.command.endswith(f"echo {sha} > {install_rke2.INSTALLED}") for s, sha in zip(installs, [sums[0], sums[0], sums[1], sums[1]])] \
        == [True] * 4
    assert "INSTALL_RKE2_TYPE=agent" in installs[1].command and "INSTALL_RKE2_TYPE" not in installs[0].command
    assert [g.kind for g in plan.groups] == ["snapshot", "node", "batch", "node", "batch"]


def test_rke2_plan_blocks_without_an_intermediate_release_artifacts_or_with_one_tarball_for_two(tmp_path, monkeypatch):
    same = artifacts(tmp_path / "same", "v1.36.3")
    params = params_for(tmp_path, kubernetes__artifacts=same, kubernetes__upgrade_path=["v1.35.4"])
    running(monkeypatch, NodeVersion("cp1", V("v1.34.2"), **CP1), NodeVersion("w1", V("v1.34.2")))
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert plan.groups == [] and [s.command for s in plan.steps] == [None] and plan.blockers == [
        "kubernetes.upgrade_path[0].artifacts is not set: RKE2 v1.35.4 is installed from its air-gapped artifact folder "
        "(rke2.linux-amd64.tar.gz, sha256sum-amd64.txt, install.sh of that release); write kubernetes.upgrade_path[0] as "
        "{version: v1.35.4, artifacts: <folder>}"]
    (tmp_path / "b").mkdir()
    params = params_for(tmp_path / "b", kubernetes__artifacts=same, kubernetes__upgrade_path=[{"version": "v1.35.4", "artifacts": same}])
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert plan.blockers == ["kubernetes.artifacts holds the same tarball as the folder named for v1.35.4: one of the two is not "
                             "v1.36.3's; copy each release's files into its own folder"]


def test_a_cluster_not_ready_unknown_or_out_of_the_skew_policy_is_not_upgraded(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__artifacts=artifacts(tmp_path / "a", "v1.36.3"))
    running(monkeypatch, NodeVersion("cp1", V("v1.35.4"), **CP1), NodeVersion("w1", V("v1.36.3"), ready=False),
            NodeVersion("stray", V("v1.35.4")), unknown=["stray"])
    blockers = upgrade.plan(params, state.kubeconfig_path(params)).blockers
    assert [b.split(":")[0] for b in blockers] == ["stray", "w1", "version skew now (kubernetes.io/releases/version-skew-policy)"]
    assert "kubelet w1: v1.36.3 is newer than the kube-apiserver at v1.35.4" in blockers[2]


def test_a_downgrade_blocks_the_plan_and_a_cluster_at_the_target_plans_nothing(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__version="v1.35.4", kubernetes__artifacts=artifacts(tmp_path / "a", "v1.35.4"))
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.36.3")))
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert plan.groups == [] and "Kubernetes is not downgraded" in plan.steps[0].blocked
    running(monkeypatch, NodeVersion("cp1", V("v1.35.4"), **CP1), NodeVersion("w1", V("v1.35.4")))
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert plan.blockers == [] and plan.steps == [] and plan.path == []
    assert upgrade.verdict(plan, "empty", None, []) == ("nothing to do", [])


def test_a_node_left_cordoned_by_a_stopped_run_is_uncordoned_and_one_cordoned_by_someone_else_stays(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__artifacts=artifacts(tmp_path / "a", "v1.36.3"))
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.36.3"), unschedulable=True,
                                                                                   cordoned_for="v1.36.3"))
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert [(s.host, s.operation) for s in plan.steps] == [("w1", "uncordon")]  # no snapshot: nothing is upgraded
    running(monkeypatch, NodeVersion("cp1", V("v1.35.4"), **CP1), NodeVersion("w1", V("v1.35.4"), unschedulable=True))
    steps = upgrade.plan(params, state.kubeconfig_path(params)).steps
    w1 = [s for s in steps if s.host == "w1"]
    assert [s.operation for s in w1] == ["cordon and drain", "rke2 artifacts", "rke2 install", "rke2 restart"]
    assert w1[0].change.endswith("(already cordoned: it stays cordoned)")


def test_rke1_plan_writes_cluster_yml_with_each_release_and_runs_rke_up_after_a_snapshot(tmp_path, monkeypatch):
    params = params_for(tmp_path, base="params/lab.yaml", kubernetes__upgrade_path=["v1.31.14"], kubernetes__upgrade_worker_batch=2)
    d = state.state_dir(params)
    (d / state.CLUSTER_YML).write_text(rke1.render_cluster_yml(params, version="v1.30.14"))
    (d / state.RKESTATE).write_text("{}")
    cps = [NodeVersion(f"cp{i}", V("v1.30.14-rancher1-1"), **CP1) for i in (1, 2, 3)]
    running(monkeypatch, *cps, *(NodeVersion(f"w{i}", V("v1.30.14")) for i in range(1, 6)))
    plan = upgrade.plan(params, state.kubeconfig_path(params), now=NOW)
    assert plan.blockers == []
    assert [s.operation for s in plan.steps] == ["etcd snapshot", "cluster.yml", "rke up", "cluster.yml", "rke up"]
    assert plan.steps[0].command == f"rke etcd snapshot-save --config {d / 'cluster.yml'} --name pre-upgrade-v1.32.2-20261128T120000Z"
    first, second = plan.steps[1].diff, plan.steps[3].diff
    assert "-kubernetes_version: v1.30.14-rancher1-1\n+kubernetes_version: v1.31.14-rancher1-1\n" in first
    assert "-kubernetes_version: v1.31.14-rancher1-1\n+kubernetes_version: v1.32.2-rancher1-1\n" in second
    assert "workers 2 at a time" in plan.steps[2].change
    assert plan.path_table("rke1")[1]["workers, in batches"] == "w1, w2 | w3, w4 | w5"
    (d / state.RKESTATE).unlink()
    assert upgrade.plan(params, state.kubeconfig_path(params)).blockers[0].startswith("INCIDENT: ")


def test_the_bring_up_refuses_a_new_release_on_a_running_cluster(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__artifacts=artifacts(tmp_path / "a", "v1.36.3"))
    running(monkeypatch, NodeVersion("cp1", V("v1.35.4"), **CP1), NodeVersion("w1", V("v1.35.4")))
    steps = bringup.plan(params, None, lambda: True)
    assert [(s.operation, s.command) for s in steps] == [("bring-up", None)]
    assert steps[0].blocked.startswith("the cluster runs v1.35.4 and kubernetes.version is v1.36.3: changing the release is an upgrade")
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.36.3")))
    assert upgrade.version_change(params) is None


def test_verdicts():
    plan = upgrade.UpgradePlan(V("v1.36.3"))
    assert upgrade.verdict(plan, "planned", None, []) == ("planned", [])
    assert upgrade.verdict(plan, "applied", upgrade.UpgradeResult(), []) == ("done", [])
    stopped = upgrade.UpgradeResult(error="w1: the drain stopped", resume="Stopped at w1 ...")
    assert upgrade.verdict(plan, "applied", stopped, []) == ("incomplete", ["w1: the drain stopped", "Stopped at w1 ..."])
    assert upgrade.verdict(upgrade.UpgradePlan(V("v1.36.3"), blockers=["x"]), "empty", None, []) == ("not ready", ["x"])


@pytest.mark.parametrize("version", ["v1.35.4", "v1.36.3"])
def test_the_lab_releases_are_ones_rke2_ships(tmp_path, version):
    from runbooklib.kubernetes import lint

    findings = lint.lint(params_for(tmp_path, kubernetes__version=version))
    assert [f for f in findings if f.rule == "version-not-shipped"] == []
    assert [f.rule for f in lint.lint(params_for(tmp_path, kubernetes__version="v1.30.14"))] == ["version-not-shipped", "etcd-quorum"]


def test_a_node_cordoned_for_this_release_by_a_stopped_run_is_drained_again_not_cordoned_again(tmp_path, monkeypatch):
    params = params_for(tmp_path, kubernetes__artifacts=artifacts(tmp_path / "a", "v1.36.3"))
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.35.4")))
    fresh = next(s for s in upgrade.plan(params, state.kubeconfig_path(params)).steps if s.operation == "cordon and drain")
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.35.4"), unschedulable=True, cordoned_for="v1.36.3"))
    steps = upgrade.plan(params, state.kubeconfig_path(params)).steps
    resumed = next(s for s in steps if s.operation == "cordon and drain")
    assert fresh.change == "cordon w1 and evict its pods (timeout 300 s)"
    assert resumed.change == "drain w1 again: cordoned for v1.36.3 by a run that stopped (it stays cordoned), evict what is left on it (timeout 300 s)"
    assert [s.operation for s in steps if s.host == "w1"][-1] == "uncordon"  # it was this runbook's cordon: undone once upgraded


def test_the_upgrade_logs_in_to_every_node_it_upgrades_before_anything_changes(tmp_path, monkeypatch):
    """A node whose host does not answer over SSH (stopped, cut off, a changed host key) is named before the snapshot and before
    any node is cordoned: nothing is changed. Real SSH to a loopback port where nothing listens."""
    import socket

    from conftest import lab_key_material
    from runbooklib.ssh import Fleet

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made = lab_key_material(tmp_path / "keys")
    params = params_for(tmp_path, kubernetes__artifacts=artifacts(tmp_path / "a", "v1.36.3"), ssh__key=f"file:{made['key']}",
                        ssh__known_hosts=str(made["known_hosts"]), ssh__connect_timeout=2,
                        inventory__hosts=[{"name": name, "address": f"127.0.0.{i}", "ssh_port": port, "roles": roles,
                                           "location": {"country": "RU", "site": "lab"}}  # db1 and edge1: never dialled (not upgraded)
                                          for i, (name, roles) in enumerate([("cp1", ["etcd", "controlplane"]), ("w1", ["worker"]),
                                                                             ("db1", ["database"]), ("edge1", ["edge"])], 1)])
    running(monkeypatch, NodeVersion("cp1", V("v1.36.3"), **CP1), NodeVersion("w1", V("v1.35.4")))
    plan = upgrade.plan(params, state.kubeconfig_path(params))
    assert [s.host for s in plan.steps][:2] == ["cp1", "w1"]
    recorded = []
    with Fleet.from_params(params, progress=None) as fleet:
        result = upgrade.apply(params, fleet, plan, state.kubeconfig_path(params), on_change=recorded.append, on_line=lambda line: None)
    assert recorded == [] and result.snapshot == ""
    assert result.error.startswith("nothing was changed: cp1: connection refused at 127.0.0.1") and "; w1: connection refused at 127.0.0.2" in result.error
    assert result.resume.startswith("Stopped at cp1, w1 (group 1 of ")
    verdict, problems = upgrade.verdict(plan, "applied", result, [])
    assert verdict == "incomplete" and problems[0] == result.error
