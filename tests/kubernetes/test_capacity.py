"""Capacity fold-in and drain on canned API objects (no cluster needed): quantities, membership, plans, drain decisions."""

from __future__ import annotations

import pytest
import yaml
from kubernetes.client import (
    V1Container,
    V1EmptyDirVolumeSource,
    V1Node,
    V1NodeAddress,
    V1NodeCondition,
    V1NodeSpec,
    V1NodeStatus,
    V1NodeSystemInfo,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
    V1Volume,
)

from conftest import resolvable_lab_data, write_params
from runbooklib.errors import RunbookError
from runbooklib.kubernetes import capacity, drain, state
from runbooklib.kubernetes.rke1 import read_cluster_yml, render_cluster_yml
from runbooklib.params import load_params

SEED_CLUSTER = ["cp1", "cp2", "cp3", "w1", "w2", "w3", "w4", "w5"]


def params_for(tmp_path, distribution="rke1", edit=None):
    data = resolvable_lab_data(tmp_path)
    data["kubernetes"]["state_dir"] = "state"
    data["kubernetes"]["distribution"] = distribution
    if edit:
        edit(data)
    return load_params(write_params(tmp_path, data))


def folded(data):
    """params/lab.yaml's fold-in edit: the ELK VMs become workers, w5 leaves."""
    data["inventory"]["hosts"] = [dict(h, roles=[*h["roles"], "worker"]) if "elk" in h["roles"] else h
                                  for h in data["inventory"]["hosts"] if h["name"] != "w5"]


def info(name, roles=("worker",), address="10.77.0.25", cpu=2.0, mem=4.0, ready=True, cordoned=False):
    return capacity.NodeInfo(name, address, tuple(roles), ready, cordoned, cpu, mem, 110, "v1.32.2")


def running(names=SEED_CLUSTER):
    return [info(n, ("etcd", "controlplane") if n.startswith("cp") else ("worker",), address=f"10.77.0.{i + 10}") for i, n in enumerate(names)]


@pytest.mark.parametrize("text, value", [("2", 2), ("1500m", 1.5), ("4Gi", 4 * 2**30), ("3982852Ki", 3982852 * 1024),
                                         ("1e3", 1000), ("2k", 2000), ("0.5", 0.5), (None, 0)])
def test_quantities_read_as_kubernetes_writes_them(text, value):
    assert capacity.quantity(text) == pytest.approx(value)


def test_a_quantity_that_is_not_one_is_an_error():
    with pytest.raises(ValueError, match="'4 GB' is not a Kubernetes quantity"):
        capacity.quantity("4 GB")


def test_node_info_reads_roles_allocatable_address_and_cordon():
    n = V1Node(metadata=V1ObjectMeta(name="elk1", labels={"node-role.kubernetes.io/worker": "true"}),
               spec=V1NodeSpec(unschedulable=True),
               status=V1NodeStatus(allocatable={"cpu": "3500m", "memory": "8Gi", "pods": "110"},
                                   addresses=[V1NodeAddress(type="Hostname", address="elk1"), V1NodeAddress(type="InternalIP", address="10.77.0.51")],
                                   conditions=[V1NodeCondition(type="Ready", status="True")],
                                   node_info=V1NodeSystemInfo(kubelet_version="v1.32.2", architecture="amd64", boot_id="", container_runtime_version="",
                                                              kernel_version="", kube_proxy_version="", machine_id="", operating_system="linux",
                                                              os_image="", system_uuid="")))
    got = capacity.node_info(n, "rke1")
    assert (got.name, got.address, got.roles, got.ready, got.unschedulable, got.cpu, got.memory_gib, got.pods, got.kubelet) == (
        "elk1", "10.77.0.51", ("worker",), True, True, 3.5, 8.0, 110, "v1.32.2")
    assert got.row()["schedulable"] == "no (cordoned)"


def test_membership_of_the_fold_in_three_join_one_leaves(tmp_path):
    p = params_for(tmp_path, edit=folded)
    m = capacity.membership(p, running())
    assert (m.add, [n.name for n in m.remove], m.keep, m.refused) == (
        ["elk1", "elk2", "elk3"], ["w5"], ["cp1", "cp2", "cp3", "w1", "w2", "w3", "w4"], [])
    assert m.rows(p)[0] == {"node": "elk1", "change": "join as worker", "roles": "elk,worker"}


def test_a_matching_cluster_changes_nothing(tmp_path):
    p = params_for(tmp_path)
    m = capacity.membership(p, running())
    assert (m.add, m.remove, m.refused) == ([], [], [])
    assert capacity.plan(p, m, {}).steps == []


def test_joining_or_leaving_control_plane_nodes_is_refused_with_why(tmp_path):
    def grow_control_plane(data):
        data["inventory"]["hosts"] = [dict(h, roles=["etcd", "controlplane"]) if h["name"].startswith("elk") else h
                                      for h in data["inventory"]["hosts"] if h["name"] != "cp3"]
    p = params_for(tmp_path, edit=grow_control_plane)
    m = capacity.membership(p, running())
    assert len(m.refused) == 4
    assert any(r.startswith("elk1 would join with role etcd/controlplane") and "03-kubernetes-cluster" in r for r in m.refused)
    assert any(r.startswith("cp3 (etcd/controlplane) is not in the parameters") for r in m.refused)
    (step,) = capacity.plan(p, m, {}).steps
    assert step.command is None and "cp3" in step.blocked


def test_rke1_plan_joins_first_drains_then_removes_with_two_update_only_runs(tmp_path):
    seed = params_for(tmp_path / "seed")
    p = params_for(tmp_path, edit=folded)
    d = state.state_dir(p, create=True)
    (d / state.CLUSTER_YML).write_text(render_cluster_yml(seed, p.ssh.key.path(p.source_dir)))
    m = capacity.membership(p, running())
    fold = capacity.plan(p, m, {"w5": []})
    assert [(s.host, s.operation) for s in fold.steps] == [
        ("cluster lab", "cluster.yml (join)"), ("cluster lab", "rke up --update-only"), ("w5", "drain"),
        ("cluster lab", "cluster.yml (leave)"), ("cluster lab", "rke up --update-only")]
    assert all(s.command for s in fold.steps)
    assert "up --update-only --config" in fold.steps[1].command
    joined = read_cluster_yml(fold.files["cluster.yml (join)"])
    assert [n.name for n in joined.nodes] == [*SEED_CLUSTER[:-1], "elk1", "elk2", "elk3", "w5"]  # w5 kept until drained
    assert fold.files["cluster.yml (join)"].splitlines()[0] == render_cluster_yml(p).splitlines()[0]
    left = read_cluster_yml(fold.files["cluster.yml (leave)"])
    assert "w5" not in [n.name for n in left.nodes] and fold.files["cluster.yml (leave)"] == render_cluster_yml(p)
    assert "+  hostname_override: elk1" in fold.steps[0].diff and "-  hostname_override: w5" in fold.steps[3].diff


def test_rke1_a_joining_host_not_ready_holds_the_whole_join_and_a_blocking_pod_holds_the_drain(tmp_path):
    seed = params_for(tmp_path / "seed")
    p = params_for(tmp_path, edit=folded)
    (state.state_dir(p, create=True) / state.CLUSTER_YML).write_text(render_cluster_yml(seed, p.ssh.key.path(p.source_dir)))
    blocker = {"pod": "default/hand-made", "reason": "no controller manages it", "fix": "delete it yourself"}
    fold = capacity.plan(p, capacity.membership(p, running()), {"w5": [blocker]}, {"elk2": "not ready: swap"})
    by_op = {s.operation: s for s in fold.steps}
    assert by_op["join"].command is None and "elk2: not ready: swap" in by_op["join"].blocked and "rke up needs every node" in by_op["join"].blocked
    assert by_op["drain"].command is None and "default/hand-made: no controller manages it (delete it yourself)" == by_op["drain"].blocked
    assert "cluster.yml (join)" not in by_op


def test_rke1_without_the_current_cluster_yml_the_leaving_nodes_cannot_be_kept(tmp_path):
    p = params_for(tmp_path, edit=folded)
    with pytest.raises(RunbookError, match=r"cluster.yml: missing; .* leaving nodes w5"):
        capacity.plan(p, capacity.membership(p, running()), {})


def test_rke2_plan_joins_with_the_bring_up_planner_and_removes_by_uninstall_and_delete(tmp_path):
    p = params_for(tmp_path, "rke2", edit=folded)
    asked = []

    def install_steps(names):
        asked.append(names)
        return [capacity.Step(n, "rke2 install", "install", "sh install.sh") for n in names]
    fold = capacity.plan(p, capacity.membership(p, running()), {"w5": []}, {"elk3": "unreachable: timed out"}, install_steps)
    assert asked == [["elk1", "elk2"]]
    assert [(s.host, s.operation, s.command is None) for s in fold.steps] == [
        ("elk3", "join", True), ("elk1", "rke2 install", False), ("elk2", "rke2 install", False),
        ("w5", "drain", False), ("w5", "rke2 uninstall", False), ("w5", "delete node", False)]
    assert fold.steps[4].command == capacity.RKE2_UNINSTALL and fold.files == {}


def test_a_removed_node_is_reached_at_the_address_the_api_knows(tmp_path):
    p = params_for(tmp_path, "rke2", edit=folded)
    host = capacity.removed_host(p, info("w5", address="10.77.0.25"))
    assert (host.name, str(host.address), host.location.country) == ("w5", "10.77.0.25", "RU")
    with pytest.raises(RunbookError, match="w5: the Node has no InternalIP address"):
        capacity.removed_host(p, info("w5", address=""))


def test_capacity_rows_total_the_schedulable_workers():
    nodes = [info("cp1", ("etcd", "controlplane")), info("w1", cpu=4, mem=8), info("w2", cordoned=True), info("w3", ready=False),
             info("elk1", cpu=1.5, mem=2.5)]
    total = capacity.capacity_rows(nodes)[-1]
    assert (total["roles"], total["CPU (cores)"], total["memory (GiB)"], total["pods"]) == ("2 node(s)", 5.5, 10.5, 220)


def test_the_capacity_figure_has_before_and_after_bars_per_node():
    before = [info("w1"), info("w5")]
    after = [info("w1"), info("elk1", cpu=4, mem=16)]
    fig = capacity.capacity_figure(before, after)
    cpu, mem = fig.axes
    assert [t.get_text() for t in cpu.get_xticklabels()] == ["elk1", "w1", "w5"]
    assert [b.get_height() for b in cpu.patches] == [0, 2, 2, 4, 2, 0]  # before: elk1 none; after: w5 none
    assert cpu.get_title() == "CPU (cores): 4 -> 6 (all nodes)" and mem.get_title() == "memory (GiB): 8 -> 20 (all nodes)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["before", "after"]


# -- drain decisions -------------------------------------------------------------------------------

def pod(name, owner=None, phase="Running", empty_dir=False, mirror=False):
    refs = [V1OwnerReference(api_version="apps/v1", kind=owner[0], name=owner[1], uid="u", controller=True)] if owner else None
    return V1Pod(metadata=V1ObjectMeta(name=name, namespace="default", owner_references=refs,
                                       annotations={drain.MIRROR: "x"} if mirror else None),
                 spec=V1PodSpec(containers=[V1Container(name="c")],
                                volumes=[V1Volume(name="scratch", empty_dir=V1EmptyDirVolumeSource())] if empty_dir else None),
                 status=V1PodStatus(phase=phase))


@pytest.mark.parametrize("the_pod, action, reason", [
    (pod("web-1", ("ReplicaSet", "web-1a")), "evict", "managed by ReplicaSet web-1a"),
    (pod("fluentd-x", ("DaemonSet", "fluentd")), "leave", "managed by DaemonSet fluentd"),
    (pod("kube-proxy-w5", mirror=True), "leave", "a static pod"),
    (pod("hand-made"), "block", "no controller manages it"),
    (pod("job-done", phase="Succeeded"), "evict", "finished (Succeeded)"),
    (pod("cache-0", ("StatefulSet", "cache"), empty_dir=True), "block", "emptyDir volume(s) scratch"),
])
def test_a_drain_decides_as_kubectl_drain_does(the_pod, action, reason):
    got, why, fix = drain.classify(the_pod)
    assert got == action and why.startswith(reason)
    assert bool(fix) == (action == "block")


def test_emptydir_data_may_be_given_up_by_the_setting():
    assert drain.classify(pod("cache-0", ("StatefulSet", "cache"), empty_dir=True), delete_emptydir_data=True)[0] == "evict"


def test_the_lab_fold_in_parameters_are_lab_yaml_with_only_the_fold_in_edit():
    from conftest import ROOT

    lab = yaml.safe_load((ROOT / "params" / "lab.yaml").read_text())
    after = yaml.safe_load((ROOT / "params" / "lab-fold-in.yaml").read_text())
    folded(lab)
    assert after == lab
