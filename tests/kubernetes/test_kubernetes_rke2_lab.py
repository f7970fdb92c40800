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
