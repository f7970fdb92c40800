"""The lab's rke stand-in given a new ``kubernetes_version`` on a running cluster: an upgrade, as ``rke up`` does one.

The control plane restarts with the new release's real binaries one node at a time, and every Node
reports the new release (KWOK keeps the status it is given: the stand-in sets the versions a new
kubelet would report). A small lab made an RKE1 site (Docker stand-in, rke, cluster.yml rendered by
the product) keeps this quick. The stand-in does not judge the path (runbook 11 does): it is given the
two releases the lab builds, v1.32.2 and v1.35.4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import require_lab, running_lab
from runbooklab.kubernetes import parts, provision
from runbooklib.params import parse_params

OLD, NEW = "v1.32.2", "v1.35.4"
require_lab(*(str(parts.host_path("kubernetes", b, v)) for b in ("kube-apiserver", "kubectl") for v in (OLD, NEW)),
            str(parts.host_path("kwok", "kwok")))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("rkeupgrade"), "rbrku", "10.94.0.0/24", profile="small") as lab:
        data = yaml.safe_load(lab.params_file.read_text())
        data["kubernetes"].update(distribution="rke1", version=OLD, ignore_docker_version=True)
        data.pop("registry", None)  # the small lab's registry settings are RKE2's (registries.yaml): not this test's business
        path = lab.root / "params-rke1.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        provision(lab, parse_params(path.read_text(), str(path), source=path), [])  # what `lab up` does for an RKE1 site
        yield lab


def rke(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runbooklab.kubernetes.rke", *args, "--config", str(lab.root / "cluster.yml")],
                          capture_output=True, text=True, env=dict(os.environ, RUNBOOK_LAB_DIR=str(lab.root)), timeout=300)


def kubectl(lab, version: str, *args: str) -> str:
    done = subprocess.run([str(parts.host_path("kubernetes", "kubectl", version)), "--kubeconfig", str(lab.root / "kube_config_cluster.yml"),
                           *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_new_kubernetes_version_restarts_the_control_plane_node_by_node_and_every_node_reports_it(lab):
    up = rke(lab, "up")
    assert up.returncode == 0, up.stderr[-3000:]
    assert json.loads(kubectl(lab, OLD, "version", "-o", "json"))["serverVersion"]["gitVersion"] == OLD
    path = lab.root / "cluster.yml"
    config = yaml.safe_load(path.read_text())
    assert config["upgrade_strategy"]["max_unavailable_controlplane"] == "1"  # rendered by the product, accepted by the stand-in
    config["kubernetes_version"] = f"{NEW}-rancher1-1"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    upgraded = rke(lab, "up")
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert f"Upgrading the control plane from {OLD} to {NEW}, one node at a time" in upgraded.stderr
    assert "[controlplane] cp1: rke-kube-apiserver restarted" in upgraded.stderr
    assert json.loads(kubectl(lab, NEW, "version", "-o", "json"))["serverVersion"]["gitVersion"] == NEW
    nodes = json.loads(kubectl(lab, NEW, "get", "nodes", "-o", "json"))["items"]
    assert {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == \
        {"cp1": f"{NEW}+kwok-lab-simulation", "w1": f"{NEW}+kwok-lab-simulation"}
    unit = lab.exec_in("cp1", "cat /etc/systemd/system/rke-kube-apiserver.service").stdout
    assert f"kubernetes-{NEW}/bin/kube-apiserver" in unit and OLD not in unit

    again = rke(lab, "up")
    assert again.returncode == 0 and "Upgrading" not in again.stderr and "restarted" not in again.stderr
