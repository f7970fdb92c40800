"""The incident runbook on the seed lab (RKE1, three real etcd 3.6 members), headless through the real runner.

The cluster is brought up as on a site (02 --apply, 03 --apply). Then the etcd runbook plans (nothing
changes), and with the drill asked and --apply takes a snapshot, verifies it, copies it off, and runs
the restore drill: the canary namespace deleted after its snapshot comes back from the real etcd.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import LAB_PARAMS, manifest, require_lab, runbook, running_lab
from runbooklab.kubernetes import parts

VERSION = yaml.safe_load(LAB_PARAMS.read_text())["kubernetes"]["version"]
KUBECTL = str(parts.host_path("kubernetes", "kubectl", VERSION))
require_lab(KUBECTL, str(parts.host_path("kubernetes", "kube-apiserver", VERSION)), str(parts.host_path("etcd", "etcdutl")))
NOTEBOOK = "notebooks/incident/etcd-snapshot-restore.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("etcdrestore"), "rbetc", "10.94.0.0/24", profile="seed") as lab:
        archive = lab.root / "archive"
        for nb in ("02-vm-baseline", "03-kubernetes-cluster"):
            done = runbook("--archive", str(archive), "run", f"notebooks/{nb}.ipynb", "--params", str(lab.params_file), "--apply")
            assert done.returncode == 0, done.stderr[-3000:]
        yield lab


def drill_params(lab) -> Path:
    """The lab's parameters with the drill asked for (beside them: the relative paths stay right)."""
    data = yaml.safe_load(Path(lab.params_file).read_text())
    data["kubernetes"]["etcd_backup"]["drill"] = True
    path = lab.root / "params-drill.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def kubectl(lab, *args):
    return subprocess.run([KUBECTL, "--kubeconfig", str(lab.root / "kubernetes" / "kube_config_cluster.yml"), *args],
                          capture_output=True, text=True, timeout=60)


def test_plan_changes_nothing_then_the_drill_brings_a_deleted_namespace_back(lab, tmp_path):
    archive = tmp_path / "archive"
    params = drill_params(lab)
    snapshots = "ls /opt/rke/etcd-snapshots 2>/dev/null"
    before = {vm: lab.exec_in(vm, snapshots).stdout for vm in ("cp1", "cp2", "cp3")}

    plan = runbook("--archive", str(archive), "run", NOTEBOOK, "--params", str(params))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and manifest(plan.stdout)["changes"] == []
    assert "PLAN mode: nothing was changed" in plan.stderr and "Recurring etcd snapshots" in plan.stderr
    assert {vm: lab.exec_in(vm, snapshots).stdout for vm in before} == before
    assert not (lab.root / "etcd-backups").exists()
    assert "runbook-restore-drill" not in kubectl(lab, "get", "namespaces", "-o", "name").stdout

    done = runbook("--archive", str(archive), "run", NOTEBOOK, "--params", str(params), "--apply", timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [c["operation"] for c in m["changes"]] == ["etcd snapshot", "etcd snapshot copy", "drill canary", "etcd snapshot",
                                                      "etcd snapshot copy", "drill loss", "etcd restore"]

    # the deleted namespace is back, from the real etcd, with its ConfigMap
    canary = next(c["change"].split()[2] for c in m["changes"] if c["operation"] == "drill canary")
    assert canary.startswith("runbook-restore-drill-")
    cm = json.loads(kubectl(lab, "-n", canary, "get", "configmap", "canary", "-o", "json").stdout)
    assert cm["data"]["purpose"] == "etcd restore drill" and cm["data"]["run"] == m["run_id"]
    assert "canary namespace back" in done.stderr and "canary ConfigMap back" in done.stderr

    # every snapshot is on every etcd node as RKE keeps it, and its copy off the nodes has the first node's SHA-256
    copies = sorted((lab.root / "etcd-backups" / "lab").glob("*.zip"))
    assert [p.name.split("-")[0] for p in copies] == ["drill", "runbook"]
    assert (lab.root / "etcd-backups").stat().st_mode & 0o777 == 0o700
    for copy in copies:
        node_sum = lab.exec_in("cp1", f"sha256sum /opt/rke/etcd-snapshots/{copy.name}").stdout.split()[0]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == node_sum
        assert copy.stat().st_mode & 0o777 == 0o600
        assert json.loads(copy.with_name(copy.name + ".json").read_text())["sha256"] == node_sum
        name = copy.name.removesuffix(".zip")
        with zipfile.ZipFile(copy) as z:
            assert [i.filename for i in z.infolist()] == [f"/backup/{name}", f"/etc/kubernetes/{name}.rkestate"]
        for vm in ("cp2", "cp3"):
            assert lab.exec_in(vm, f"test -f /opt/rke/etcd-snapshots/{copy.name}").returncode == 0

    # the archive verifies and holds no key of the cluster (the snapshots' state file carries them all)
    assert runbook("--archive", str(archive), "verify").returncode == 0
    state = json.loads((lab.root / "kubernetes" / "cluster.rkestate").read_text())
    keys = [base64.b64decode(b64).decode().splitlines()[1] for name, b64 in state["certificatesBundle"].items()
            if name.endswith("-key.pem")]
    leaks = [p.name for p in archive.rglob("*") if p.is_file() and any(k in p.read_bytes().decode(errors="replace") for k in keys)]
    assert keys and leaks == []
    assert not [p for p in archive.rglob("*.zip")]
