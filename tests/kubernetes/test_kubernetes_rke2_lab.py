"""Runbook 03 on the small lab (RKE2, the default distribution): the air-gapped install, verification, the token canary."""

from __future__ import annotations

import pytest

from conftest import manifest, require_lab, runbook, running_lab
from runbooklab.kubernetes import parts

require_lab(str(parts.host_path("kubernetes", "kube-apiserver")), str(parts.host_path("kwok", "kwok")))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("rke2runbook"), "rbkr2", "10.88.0.0/24", profile="small") as lab:
        yield lab



def run03(lab, archive):
    return runbook("--archive", str(archive), "run", "notebooks/03-kubernetes-cluster.ipynb", "--params", str(lab.params_file), "--apply")


def operations(m: dict) -> dict[str, list[str]]:
    by_host: dict[str, list[str]] = {}
    for c in m["changes"]:
        by_host.setdefault(c["host"], []).append(c["operation"])
    return by_host


def test_rke2_bring_up_with_a_worker_down_then_converges_and_never_archives_the_token(lab, tmp_path):
    archive = tmp_path / "archive"
    baseline = runbook("--archive", str(archive), "run", "notebooks/02-vm-baseline.ipynb", "--params", str(lab.params_file), "--apply")
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    lab.stop("w1")  # the worker is down when the cluster is brought up: it fails alone
    try:
        partial = run03(lab, archive)
        assert partial.returncode == 4, partial.stderr[-3000:]
        m = manifest(partial.stdout)
        assert m["verdict"]["verdict"] == "incomplete"
        assert operations(m) == {"cp1": ["rke2 artifacts", "rke2 install", "rke2 config", "rke2 service"]}
        assert any(p.startswith("w1: unreachable") for p in m["verdict"]["problems"]), m["verdict"]["problems"]
    finally:
        lab.start("w1")
    up = run03(lab, archive)  # the re-run converges: w1 joins, cp1 is left as it is
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert operations(m) == {"w1": ["rke2 artifacts", "rke2 install", "rke2 config", "join token", "rke2 service"]}
    assert (lab.root / "kubernetes" / "rke2.yaml").stat().st_mode & 0o777 == 0o600

    again = run03(lab, archive)
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == []  # installed, configured, running: nothing to do

    token = lab.exec_in("cp1", "cat /var/lib/rancher/rke2/server/node-token").stdout.strip()
    secret = token.rsplit(":", 1)[1]
    assert token.startswith("K10") and len(secret) >= 16
    leaks = [p.name for p in archive.rglob("*") if p.is_file() and secret in p.read_bytes().decode(errors="replace")]
    assert leaks == []
    assert all(secret not in out.stdout + out.stderr for out in (partial, up, again))  # nor in what the runner printed
    assert lab.exec_in("w1", "stat -c %a /etc/rancher/rke2/join-token").stdout.strip() == "600"


def test_rke2_fold_in_an_agent_joins_and_another_is_drained_uninstalled_and_deleted(lab, tmp_path):
    import json
    import subprocess

    import yaml

    archive = tmp_path / "archive"
    kubectl = [str(parts.host_path("kubernetes", "kubectl")), "--kubeconfig", str(lab.root / "kubernetes" / "rke2.yaml")]
    data = yaml.safe_load(lab.params_file.read_text())  # the edit: db1 joins as a worker, w1 leaves
    data["inventory"]["hosts"] = [dict(h, roles=["database", "worker"]) if h["name"] == "db1" else h
                                  for h in data["inventory"]["hosts"] if h["name"] != "w1"]
    params = lab.root / "params-fold-in.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run([*kubectl, "create", "deployment", "web", "--image=registry.lab.invalid/web:1", "--replicas=2"], check=True)
    subprocess.run([*kubectl, "rollout", "status", "deployment/web", "--timeout=60s"], check=True, capture_output=True)

    baseline = runbook("--archive", str(archive), "run", "notebooks/02-vm-baseline.ipynb", "--params", str(params), "--apply")
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    done = runbook("--archive", str(archive), "run", "notebooks/10-capacity-fold-in.ipynb", "--params", str(params), "--apply")
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert operations(m) == {"db1": ["rke2 artifacts", "rke2 install", "rke2 config", "join token", "rke2 service"],
                             "w1": ["drain", "rke2 uninstall", "delete node"]}
    nodes = json.loads(subprocess.run([*kubectl, "get", "nodes", "-o", "json"], capture_output=True, text=True, check=True).stdout)
    assert sorted(n["metadata"]["name"] for n in nodes["items"]) == ["cp1", "db1"]
    pods = json.loads(subprocess.run([*kubectl, "get", "pods", "-l", "app=web", "-o", "json"], capture_output=True, text=True, check=True).stdout)
    assert len(pods["items"]) == 2 and all(p["spec"]["nodeName"] != "w1" for p in pods["items"])
    gone = lab.exec_in("w1", "test -e /usr/local/bin/rke2 || test -e /etc/rancher/rke2/config.yaml; echo $?")
    assert gone.stdout.strip() == "1"  # RKE2's uninstaller removed the binary and its configuration

    again = runbook("--archive", str(archive), "run", "notebooks/10-capacity-fold-in.ipynb", "--params", str(params), "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == []
