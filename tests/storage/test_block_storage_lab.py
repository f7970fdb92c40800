"""07-block-storage on the lab: Rook's real manifests applied to the lab's real Kubernetes API.

A lab of its own: one control-plane node and three workers (the storage nodes), RKE1 at the seed's
Kubernetes v1.32.2 (Rook 1.18 supports v1.29 to v1.34). No Ceph daemon runs in the lab: the runbook's
verification says so, and checks what the API holds and how it is wired.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab

require_lab()
ROOT = Path(__file__).resolve().parents[2]


def profile(directory: Path) -> Path:
    data = yaml.safe_load((ROOT / "params" / "lab.yaml").read_text())
    data["environment"]["name"] = "lab-storage"
    data["inventory"]["hosts"] = [h for h in data["inventory"]["hosts"] if h["name"] in ("cp1", "w1", "w2", "w3")]
    for section in ("database", "edge", "logging"):
        data.pop(section, None)
    data["storage"].pop("gluster", None)
    path = directory / "storage-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from runbooklab.rook import module_dir

    if module_dir("v1.18.8") is None:
        pytest.fail("Rook v1.18.8 is not in Go's module cache: `make setup` fetches it (python3 -m runbooklab.rook --fetch)")
    root = tmp_path_factory.mktemp("storagelab")
    with running_lab(root, "rbsto", "10.103.0.0/24", profile=str(profile(root))) as lab:
        archive = str(root / "archive")
        for nb in ("02-vm-baseline", "03-kubernetes-cluster"):
            done = runbook("--archive", archive, "run", f"notebooks/{nb}.ipynb", "--params", str(lab.params_file), "--apply", timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
        yield lab


def run07(lab, archive, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/07-block-storage.ipynb", "--params", str(lab.params_file), *extra,
                   timeout=900)


def test_prerequisites_report_the_vms_as_they_are_then_plan_apply_verify_and_converge(lab, tmp_path):
    archive = tmp_path / "archive"
    plan = run07(lab, archive)
    assert plan.returncode == 0, plan.stderr[-3000:]
    m = manifest(plan.stdout)
    assert m["verdict"]["verdict"] == "planned" and m["changes"] == []
    steps = [s["operation"] for p in m["plans"] for s in p["steps"]]
    assert steps == ["rook crds", "rook common", "rook operator", "ceph cluster", "block pool", "storage class"]
    # the lab's VMs as they are: no raw disk, no rbd module loaded; the Kubernetes release fits Rook 1.18
    sdb = [line for line in plan.stderr.splitlines() if "w1:/dev/sdb" in line]
    assert sdb and "fail" in sdb[0] and "not a block device here" in sdb[0]
    assert "Kubernetes v1.32.2; Rook v1.18 supports v1.29 to v1.34" in plan.stderr

    applied = run07(lab, archive, "--apply")
    assert applied.returncode == 0, applied.stderr[-3000:]
    m = manifest(applied.stdout)
    assert [c["operation"] for c in m["changes"]] == steps
    assert "NO CEPH DAEMON RUNS on this site" in applied.stderr
    assert "not checked: no Ceph daemon runs on this site" in applied.stderr
    for check in ("CRD established", "operator deployment", "CephCluster storage", "CephBlockPool replication", "StorageClass wiring"):
        assert any(line.strip().startswith(f"| {check}") and " ok " in line for line in applied.stderr.splitlines()), check

    again = run07(lab, archive, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == [] and "Nothing to change" in again.stderr

    # what the real API holds, read with the real kubectl
    kubectl = [str(lab.root / "bin" / "kubectl"), "--kubeconfig", str(lab.root / "kubernetes" / "kube_config_cluster.yml")]
    import subprocess

    pool = json.loads(subprocess.run([*kubectl, "-n", "rook-ceph", "get", "cephblockpool", "replicapool", "-o", "json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert pool["spec"]["replicated"]["size"] == 3 and pool["spec"]["failureDomain"] == "host"
    sc = json.loads(subprocess.run([*kubectl, "get", "storageclass", "ceph-block", "-o", "json"], capture_output=True, text=True,
                                   check=True).stdout)
    assert sc["provisioner"] == "rook-ceph.rbd.csi.ceph.com" and sc["parameters"]["pool"] == "replicapool"
