"""The incident runbook on the small lab (RKE2): the drill, then an incident's restore, both RKE2's cluster reset from a
snapshot on real etcd."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab
from runbooklab.kubernetes import parts

require_lab(str(parts.host_path("kubernetes", "kube-apiserver")), str(parts.host_path("kwok", "kwok")), str(parts.host_path("etcd", "etcdutl")))
NOTEBOOK = "notebooks/incident/etcd-snapshot-restore.ipynb"
DB = "/var/lib/rancher/rke2/server/db"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("etcdrestore2"), "rbet2", "10.95.0.0/24", profile="small") as lab:
        archive = lab.root / "archive"
        for nb in ("02-vm-baseline", "03-kubernetes-cluster"):
            done = runbook("--archive", str(archive), "run", f"notebooks/{nb}.ipynb", "--params", str(lab.params_file), "--apply")
            assert done.returncode == 0, done.stderr[-3000:]
        yield lab


def with_backup(lab, name: str, **settings) -> Path:
    data = yaml.safe_load(Path(lab.params_file).read_text())
    data["kubernetes"]["etcd_backup"].update(settings)
    params = lab.root / name
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


def kubectl(lab, *args):
    return subprocess.run([str(parts.host_path("kubernetes", "kubectl")), "--kubeconfig", str(lab.root / "kubernetes" / "rke2.yaml"),
                           *args], capture_output=True, text=True, timeout=60)


def test_the_drill_then_an_incidents_restore_with_rke2s_cluster_reset(lab, tmp_path):
    archive = str(tmp_path / "archive")
    done = runbook("--archive", archive, "run", NOTEBOOK, "--params", str(with_backup(lab, "drill.yaml", drill=True)), "--apply",
                   timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [(c["host"], c["operation"]) for c in m["changes"]][-3:] == [("cp1", "rke2 stop"), ("cp1", "etcd restore"), ("cp1", "rke2 start")]
    canary = next(c["change"].split()[2] for c in m["changes"] if c["operation"] == "drill canary")
    assert json.loads(kubectl(lab, "-n", canary, "get", "configmap", "canary", "-o", "json").stdout)["data"]["run"] == m["run_id"]

    # RKE2's traces of a reset: the old data kept aside, the reset flag removed by the normal start that followed
    assert lab.exec_in("cp1", f"ls -d {DB}/etcd-old-*").stdout.strip()
    assert lab.exec_in("cp1", f"test -e {DB}/reset-flag").returncode == 1
    copies = sorted((lab.root / "etcd-backups" / "lab-small").glob("*-cp1-*"))
    assert [p.name.split("-")[0] for p in copies if not p.name.endswith(".json")] == ["drill", "runbook"]
    for copy in (p for p in copies if not p.name.endswith(".json")):
        node_sum = lab.exec_in("cp1", f"sha256sum {DB}/snapshots/{copy.name}").stdout.split()[0]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == node_sum

    # an incident: back to the snapshot taken before the drill's canary existed
    before = next(p.name for p in copies if p.name.startswith("runbook-") and not p.name.endswith(".json"))
    done = runbook("--archive", archive, "run", NOTEBOOK, "--params", str(with_backup(lab, "incident.yaml", restore=before)), "--apply",
                   timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [c["operation"] for c in m["changes"]] == ["etcd snapshot", "etcd snapshot copy", "rke2 stop", "etcd restore", "rke2 start"]
    restore = next(c["change"] for c in m["changes"] if c["operation"] == "etcd restore")
    assert f"snapshot {before} (revision " in restore
    assert "NotFound" in kubectl(lab, "get", "namespace", canary).stderr  # the canary was made after that snapshot
