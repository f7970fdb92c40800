"""Runbook 11 on the small lab (RKE2): a cluster brought up at v1.35.4 is upgraded to v1.36.3, stopped by a drain, resumed.

The cluster is brought up by the runbooks themselves (02, then 03 with the v1.35.4 release's artifact
folder the lab writes); runbook 11 then runs headless through the real runner with v1.36.3. The
control plane and etcd are real (two releases built from their Go modules); the nodes are KWOK's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab, wait_for
from runbooklab.kubernetes import parts

OLD = "v1.35.4"
NEW = parts.default_version("kubernetes")  # v1.36.3
KUBECTL = str(parts.host_path("kubernetes", "kubectl"))
require_lab(KUBECTL, str(parts.host_path("kubernetes", "kube-apiserver", OLD)), str(parts.host_path("kubernetes", "kube-apiserver")),
            str(parts.host_path("kwok", "kwok")))
CORDONED = "runbooklib/cordoned-for-upgrade"

BARE = """apiVersion: v1
kind: Pod
metadata: {name: bare, namespace: default}
spec:
  nodeName: w1
  containers: [{name: main, image: registry.lab.internal/bare:1}]
"""
WEB = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.lab.internal/web:1}]}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    assert NEW != OLD
    with running_lab(tmp_path_factory.mktemp("upgrade"), "rbupg", "10.93.0.0/24", profile="small") as lab:
        yield lab


def params(lab, name: str, version: str, artifacts: str) -> Path:
    """The lab's parameters at another release: written beside them, so their relative paths hold."""
    data = yaml.safe_load(lab.params_file.read_text())
    data["kubernetes"].update(version=version, artifacts=artifacts)
    path = lab.root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(archive: Path, notebook: str, params_file: Path, *extra: str):
    return runbook("--archive", str(archive), "run", f"notebooks/{notebook}.ipynb", "--params", str(params_file), *extra, timeout=900)


def kubectl(lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([KUBECTL, "--kubeconfig", str(lab.root / "kubernetes" / "rke2.yaml"), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def nodes(lab) -> dict[str, dict]:
    items = json.loads(kubectl(lab, "get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n for n in items}


def changes(m: dict) -> list[tuple[str, str]]:
    return [(c["host"], c["operation"]) for c in m["changes"]]


def test_upgrade_one_minor_stops_at_a_blocked_drain_resumes_then_plans_nothing(lab, tmp_path):
    archive = tmp_path / "archive"
    old = params(lab, "params-old.yaml", OLD, f"rke2-artifacts/{OLD}")
    new = params(lab, "params-new.yaml", NEW, "rke2-artifacts")
    assert (lab.root / "rke2-artifacts" / OLD / "install.sh").exists()  # the lab writes one folder per release

    for notebook in ("02-vm-baseline", "03-kubernetes-cluster"):
        done = run(archive, notebook, old, "--apply")
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(kubectl(lab, "version", "-o", "json").stdout)["serverVersion"]["gitVersion"] == OLD
    assert {n: i["status"]["nodeInfo"]["kubeletVersion"].split("+")[0] for n, i in nodes(lab).items()} == {"cp1": OLD, "w1": OLD}

    planned = run(archive, "11-upgrade", new)
    assert planned.returncode == 0, planned.stderr[-3000:]
    m = manifest(planned.stdout)
    assert m["verdict"]["verdict"] == "planned" and m["changes"] == []
    assert "PLAN mode: nothing was changed" in planned.stderr

    kubectl(lab, "apply", "-f", "-", stdin=BARE + "---\n" + WEB)  # a pod no controller manages blocks the drain of w1
    wait_for(lambda: "Running" in kubectl(lab, "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.phase}").stdout,
             60, "the web pod running on w1")

    stopped = run(archive, "11-upgrade", new, "--apply")
    assert stopped.returncode == 4, stopped.stderr[-3000:]
    m = manifest(stopped.stdout)
    assert m["verdict"]["verdict"] == "incomplete"
    assert changes(m) == [("cp1", "etcd snapshot"), ("cp1", "rke2 artifacts"), ("cp1", "rke2 install"), ("cp1", "rke2 restart")]
    problems = m["verdict"]["problems"]
    assert any("the drain of w1 stopped" in p and "default/bare: no controller manages it" in p for p in problems), problems
    assert any(p.startswith("Stopped at w1") and "run this runbook again" in p for p in problems), problems
    now = nodes(lab)
    assert now["cp1"]["status"]["nodeInfo"]["kubeletVersion"].startswith(NEW)
    assert now["w1"]["status"]["nodeInfo"]["kubeletVersion"].startswith(OLD)
    assert now["w1"]["spec"].get("unschedulable") is True and now["w1"]["metadata"]["annotations"][CORDONED] == NEW

    kubectl(lab, "delete", "pod", "bare", "--wait=false")
    resumed = run(archive, "11-upgrade", new, "--apply")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = manifest(resumed.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert changes(m) == [("cp1", "etcd snapshot"), ("w1", "cordon and drain"), ("w1", "rke2 artifacts"), ("w1", "rke2 install"),
                          ("w1", "rke2 restart"), ("w1", "uncordon")]  # cp1 is left as it is: it runs the target already
    assert "w1: evicted default/web-" in resumed.stderr

    assert json.loads(kubectl(lab, "version", "-o", "json").stdout)["serverVersion"]["gitVersion"] == NEW
    now = nodes(lab)
    assert {n: i["status"]["nodeInfo"]["kubeletVersion"].split("+")[0] for n, i in now.items()} == {"cp1": NEW, "w1": NEW}
    assert not now["w1"]["spec"].get("unschedulable") and CORDONED not in now["w1"]["metadata"].get("annotations", {})
    wait_for(lambda: kubectl(lab, "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.nodeName}").stdout == "w1",
             60, "the web pod back on w1")

    listed = lab.exec_in("cp1", "rke2 etcd-snapshot ls").stdout.split()
    snapshots = [w for w in listed if w.startswith(f"pre-upgrade-{NEW}-cp1-")]
    assert len(snapshots) == 2, listed  # one before each run that changed something, before its first change

    again = run(archive, "11-upgrade", new, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(again.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "nothing to do", m["verdict"]
    bring_up = run(archive, "03-kubernetes-cluster", new, "--apply")
    assert bring_up.returncode == 0, bring_up.stderr[-3000:]
    m = manifest(bring_up.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "done"  # the bring-up agrees: installed and running as planned
