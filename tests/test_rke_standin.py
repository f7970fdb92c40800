"""The lab's RKE1 stand-in without a lab: the order in which it starts a control-plane node's units."""

from __future__ import annotations

import pytest

from runbooklab.kubernetes import cluster
from runbooklib.ssh import HostResult


class Fleet:
    """Records what would run on the node (every command succeeds, or fails for the unit in ``failing``)."""

    def __init__(self, log: list[str], failing: str = ""):
        self.log, self.failing = log, failing

    def run_on(self, host, command: str) -> HostResult:
        unit = command.rsplit(" ", 2)[-2].rstrip(";") if "systemctl" in command else ""
        self.log.append(f"start {unit}")
        ok = not (self.failing and self.failing in command)
        return HostResult("cp1", ok, exit_code=0 if ok else 1, stderr="" if ok else "exited with code 1")


def plan() -> cluster.NodeChanges:
    return cluster.NodeChanges([(u, ()) for u in ("rke-kube-apiserver", "rke-kube-controller-manager", "rke-kube-scheduler")], set())


def test_the_control_planes_api_is_health_checked_before_its_controller_manager_starts():
    """As RKE's runKubeAPI: kube-apiserver started, then its healthcheck, then the controller manager and the scheduler."""
    log: list[str] = []
    node = cluster.NodeSpec("cp1", "10.0.0.11", ["controlplane"])
    done = cluster.start_units(Fleet(log), None, node, plan(), "controlplane", lambda: log.append("healthy"))
    assert log == ["start rke-kube-apiserver", "healthy", "start rke-kube-controller-manager", "start rke-kube-scheduler"]
    assert done == ["rke-kube-apiserver running", "rke-kube-controller-manager running", "rke-kube-scheduler running"]


def test_an_api_that_never_gets_healthy_stops_the_node_before_its_controller_manager():
    log: list[str] = []

    def unhealthy():
        log.append("healthy?")
        raise cluster.ClusterError("kube-apiserver did not report ready within 120 s")

    with pytest.raises(cluster.ClusterError, match="did not report ready"):
        cluster.start_units(Fleet(log), None, cluster.NodeSpec("cp1", "10.0.0.11", ["controlplane"]), plan(), "controlplane", unhealthy)
    assert log == ["start rke-kube-apiserver", "healthy?"]


def test_an_apiserver_that_does_not_start_is_named_and_nothing_after_it_runs():
    log: list[str] = []
    with pytest.raises(cluster.ClusterError, match="cp1: rke-kube-apiserver did not start"):
        cluster.start_units(Fleet(log, failing="rke-kube-apiserver"), None, cluster.NodeSpec("cp1", "10.0.0.11", ["controlplane"]), plan(),
                            "controlplane", lambda: log.append("healthy"))
    assert log == ["start rke-kube-apiserver"]
