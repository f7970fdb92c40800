"""Runbook 03 on the seed lab (RKE1), headless through the real runner: plan, bring-up, verify, converge, canary.

The VM baseline (02) runs first, as on a real site: the cluster runbook refuses hosts that are not ready.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import LAB_PARAMS, manifest, require_lab, runbook, running_lab
from runbooklab.kubernetes import parts

VERSION = yaml.safe_load(LAB_PARAMS.read_text())["kubernetes"]["version"]
KUBECTL = str(parts.host_path("kubernetes", "kubectl", VERSION))
require_lab(KUBECTL, str(parts.host_path("kubernetes", "kube-apiserver", VERSION)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("k8srunbook"), "rbkrb", "10.87.0.0/24", profile="seed") as lab:
        yield lab


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


def run03(lab, archive, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/03-kubernetes-cluster.ipynb", "--params", str(lab.params_file), *extra)



def test_not_ready_hosts_block_then_plan_then_bring_up_then_nothing_to_do(lab, archive):
    blocked = run03(lab, archive)
    assert blocked.returncode == 4, blocked.stderr[-3000:]  # the VM baseline has not run: hosts not ready
    m = manifest(blocked.stdout)
    assert m["verdict"]["verdict"] == "not ready" and any("run 02-vm-baseline" in p for p in m["verdict"]["problems"])
    baseline = runbook("--archive", str(archive), "run", "notebooks/02-vm-baseline.ipynb", "--params", str(lab.params_file), "--apply")
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    plan = run03(lab, archive)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "PLAN mode: nothing was changed" in plan.stderr and manifest(plan.stdout)["verdict"]["verdict"] == "planned"
    state = lab.root / "kubernetes"
    assert not (state / "cluster.rkestate").exists()

    up = run03(lab, archive, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [c["operation"] for c in m["changes"]] == ["cluster.yml", "rke up"]
    assert (state.stat().st_mode & 0o777) == 0o700 and (state / "cluster.rkestate").exists()

    kubeconfig = state / "kube_config_cluster.yml"
    nodes = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "get", "nodes", "--no-headers"], capture_output=True, text=True)
    roles = {line.split()[0]: line.split()[2] for line in nodes.stdout.splitlines()}
    assert roles == {"cp1": "controlplane,etcd", "cp2": "controlplane,etcd", "cp3": "controlplane,etcd",
                     **{f"w{i}": "worker" for i in range(1, 6)}}

    again = run03(lab, archive, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(again.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "done"  # a converged cluster plans nothing


def test_the_archive_shows_the_kubeconfig_path_and_ca_fingerprint_never_its_keys(lab, archive):
    kubeconfig = lab.root / "kubernetes" / "kube_config_cluster.yml"
    config = yaml.safe_load(kubeconfig.read_text())
    user = config["users"][0]["user"]
    canaries = [user["client-key-data"], base64.b64decode(user["client-key-data"]).decode().splitlines()[1]]
    state = json.loads((lab.root / "kubernetes" / "cluster.rkestate").read_text())
    canaries += [base64.b64decode(b64).decode().splitlines()[1] for name, b64 in state["certificatesBundle"].items() if name.endswith("-key.pem")]
    found = []
    for path in Path(archive).rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode(errors="replace")
            found += [f"{path.name}: {c[:12]}..." for c in canaries if c in data]
    assert found == []
    texts = "".join(p.read_text(errors="replace") for p in Path(archive).rglob("*.ipynb"))
    assert str(kubeconfig) in texts and "CA fingerprint (SHA-256)" in texts


def test_a_changed_service_range_is_refused_before_anything_runs(lab, archive, tmp_path):
    data = yaml.safe_load(Path(lab.params_file).read_text())
    data["kubernetes"]["service_cidr"] = "10.44.0.0/21"
    data["kubernetes"]["cluster_dns"] = "10.44.0.10"
    changed = lab.root / "params-changed.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    before = (lab.root / "kubernetes" / "cluster.yml").read_text()
    done = runbook("--archive", str(archive), "run", "notebooks/03-kubernetes-cluster.ipynb", "--params", str(changed), "--apply")
    assert done.returncode == 4, done.stderr[-3000:]
    problems = manifest(done.stdout)["verdict"]["problems"]
    assert any(p.startswith("lint cluster-range-changed:") for p in problems), problems
    assert (lab.root / "kubernetes" / "cluster.yml").read_text() == before
    os.remove(changed)
