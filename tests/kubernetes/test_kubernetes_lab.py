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


# -- 10-capacity-fold-in on the same cluster: the three ELK VMs join as workers, w5 leaves ------------

def kubectl(lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    kubeconfig = lab.root / "kubernetes" / "kube_config_cluster.yml"
    done = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, input=stdin, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def fold_in_params(lab, **kubernetes) -> Path:
    """The lab's parameters after the fold-in edit (as params/lab-fold-in.yaml is to params/lab.yaml)."""
    data = yaml.safe_load(Path(lab.params_file).read_text())
    data["inventory"]["hosts"] = [dict(h, roles=[*h["roles"], "worker"]) if "elk" in h["roles"] else h
                                  for h in data["inventory"]["hosts"] if h["name"] != "w5"]
    data["kubernetes"].update(kubernetes)
    path = lab.root / "params-fold-in.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run10(lab, archive, params, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/10-capacity-fold-in.ipynb", "--params", str(params), *extra)


def test_fold_in_joins_the_elk_vms_and_a_blocked_drain_removes_nothing(lab, archive):
    baseline = runbook("--archive", str(archive), "run", "notebooks/02-vm-baseline.ipynb", "--params", str(fold_in_params(lab)), "--apply")
    assert baseline.returncode == 0, baseline.stderr[-3000:]  # the ELK VMs get the cluster hosts' baseline
    kubectl(lab, "create", "deployment", "web", "--image=registry.lab.invalid/web:1", "--replicas=6")
    kubectl(lab, "rollout", "status", "deployment/web", "--timeout=60s")
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hand-made", "namespace": "default"},
            "spec": {"nodeName": "w5", "containers": [{"name": "c", "image": "registry.lab.invalid/tool:1"}]}}
    kubectl(lab, "apply", "-f", "-", stdin=json.dumps(bare))

    plan = run10(lab, archive, fold_in_params(lab))  # a blocked step in the plan: the verdict says so
    assert plan.returncode == 4, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "not ready" and manifest(plan.stdout)["changes"] == []
    assert "default/hand-made" in plan.stderr and "no controller manages it" in plan.stderr

    blocked = run10(lab, archive, fold_in_params(lab), "--apply")
    assert blocked.returncode == 4, blocked.stderr[-3000:]
    m = manifest(blocked.stdout)
    assert m["verdict"]["verdict"] == "incomplete"
    assert [c["operation"] for c in m["changes"]] == ["cluster.yml (join)", "rke up --update-only"]  # the joins, and nothing of w5
    assert any("default/hand-made" in p and "no controller manages it" in p for p in m["verdict"]["problems"]), m["verdict"]
    nodes = kubectl(lab, "get", "nodes", "--no-headers").stdout
    roles = {line.split()[0]: (line.split()[1], line.split()[2]) for line in nodes.splitlines()}
    assert {n: roles[n] for n in ("elk1", "elk2", "elk3", "w5")} == {
        "elk1": ("Ready", "worker"), "elk2": ("Ready", "worker"), "elk3": ("Ready", "worker"), "w5": ("Ready", "worker")}


def test_a_disruption_budget_stops_the_drain_at_its_timeout_naming_the_pods(lab, archive):
    kubectl(lab, "delete", "pod", "hand-made", "--wait=false")
    kubectl(lab, "create", "poddisruptionbudget", "web", "--selector=app=web", "--max-unavailable=0")
    on_w5 = kubectl(lab, "get", "pods", "-l", "app=web", "--field-selector=spec.nodeName=w5", "-o", "name").stdout.split()
    assert on_w5, "the scheduler put none of web's six pods on w5; the drain would have nothing to evict"
    stopped = run10(lab, archive, fold_in_params(lab, drain_timeout_seconds=10), "--apply")
    assert stopped.returncode == 4, stopped.stderr[-3000:]
    m = manifest(stopped.stdout)
    assert [c["operation"] for c in m["changes"]] == []
    problem = next(p for p in m["verdict"]["problems"] if p.startswith("w5: drain stopped, nothing removed"))
    assert all(pod.removeprefix("pod/") in problem for pod in on_w5) and "PodDisruptionBudget" in problem, problem
    assert "SchedulingDisabled" in kubectl(lab, "get", "node", "w5", "--no-headers").stdout  # cordoned, still there


def test_the_drain_then_removes_w5_and_the_capacity_figure_is_archived(lab, archive):
    kubectl(lab, "delete", "poddisruptionbudget", "web")
    done = run10(lab, archive, fold_in_params(lab), "--apply")
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [
        ("w5", "drain"), ("cluster lab", "cluster.yml (leave)"), ("cluster lab", "rke up --update-only")]
    nodes = kubectl(lab, "get", "nodes", "--no-headers").stdout
    assert sorted(line.split()[0] for line in nodes.splitlines()) == ["cp1", "cp2", "cp3", "elk1", "elk2", "elk3", "w1", "w2", "w3", "w4"]
    placed = kubectl(lab, "get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{'\\n'}{end}")
    pods = [line.split() for line in placed.stdout.splitlines()]
    assert len(pods) == 6 and all(node != "w5" and phase == "Running" for node, phase in pods), pods
    # the figure (before and after, per node) is in the archived notebook, as a PNG
    record = Path(next(line.split("record:", 1)[1].strip() for line in done.stdout.splitlines() if "record:" in line))
    cells = json.loads(record.read_text())["cells"]
    figures = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) == 1
    assert "TOTAL (schedulable workers)" in done.stderr and "7 node(s)" in done.stderr

    again = run10(lab, archive, fold_in_params(lab), "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == [] and "Membership: 0 join, 0 leave, 10 stay" in again.stderr


def test_registry_access_on_rke1_is_a_pull_secret_attached_to_the_default_account(lab, archive):
    done = runbook("--archive", str(archive), "run", "notebooks/04-registry-access.ipynb", "--params", str(fold_in_params(lab)), "--apply")
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "done" and [c["operation"] for c in m["changes"]] == ["pull secret", "service account"]
    secret = json.loads(kubectl(lab, "get", "secret", "gcr-pull", "-o", "json").stdout)
    account = json.loads(kubectl(lab, "get", "serviceaccount", "default", "-o", "json").stdout)
    assert secret["type"] == "kubernetes.io/dockerconfigjson" and account["imagePullSecrets"] == [{"name": "gcr-pull"}]
    key = (lab.root / "secrets" / "registry-key.json").read_text().strip()
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config["auths"]["europe-docker.pkg.dev"]["password"] == key
    assert all(key not in p.read_text(errors="replace") for p in archive.rglob("*") if p.is_file())
