"""12-logging and 13-log-retention on the lab: Fluentd's DaemonSet placed by the real Kubernetes
controllers on every node, and the template, the proof and the refused ISM policy on a real OpenSearch
node (2.19, from Maven Central's jars, without the ISM plugin that is not published there).

A lab of its own: one control-plane node, two workers and elk1 (the old ELK VM the lab starts
OpenSearch on). The engine password is a canary from the environment: it must reach the cluster's
Secret, and appear nowhere in the archive.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab

require_lab()
ROOT = Path(__file__).resolve().parents[2]
CANARY = "cAnArY-l0gg1ng-Pw-7f3a9e"


def profile(directory: Path) -> Path:
    data = yaml.safe_load((ROOT / "params" / "lab.yaml").read_text())
    data["environment"]["name"] = "lab-logging"
    data["inventory"]["hosts"] = [h for h in data["inventory"]["hosts"] if h["name"] in ("cp1", "w1", "w2", "elk1")]
    for section in ("database", "edge", "storage", "cache", "registry"):
        data.pop(section, None)
    data["logging"]["password"] = "env:RB_TEST_LOGGING_PASSWORD"
    data["logging"]["samples"] = str(ROOT / "params" / "samples" / "app-logs.jsonl")
    path = directory / "logging-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from runbooklab.opensearch import lib_dir

    if lib_dir() is None:
        pytest.fail("OpenSearch's jars are not in the cache: `make setup` fetches them (python3 -m runbooklab.opensearch --fetch)")
    root = tmp_path_factory.mktemp("logginglab")
    with running_lab(root, "rblog", "10.104.0.0/24", profile=str(profile(root))) as lab:
        archive = str(root / "archive")
        for nb in ("02-vm-baseline", "03-kubernetes-cluster"):
            done = runbook("--archive", archive, "run", f"notebooks/{nb}.ipynb", "--params", str(lab.params_file), "--apply",
                           env={**os.environ, "RB_TEST_LOGGING_PASSWORD": CANARY}, timeout=900)  # every reference must resolve
            assert done.returncode == 0, done.stderr[-3000:]
        yield lab


def run(lab, archive, nb, *extra):
    return runbook("--archive", str(archive), "run", f"notebooks/{nb}.ipynb", "--params", str(lab.params_file), *extra,
                   env={**os.environ, "RB_TEST_LOGGING_PASSWORD": CANARY}, timeout=900)


def no_canary(archive: Path) -> None:
    for f in archive.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert CANARY.encode() not in data and base64.b64encode(CANARY.encode()) not in data, f


def test_fluentd_lands_on_every_node_with_its_drop_in_and_the_password_only_in_the_clusters_secret(lab, tmp_path):
    archive = tmp_path / "archive"
    plan = run(lab, archive, "12-logging")
    assert plan.returncode == 0, plan.stderr[-3000:]
    m = manifest(plan.stdout)
    ops = ["namespace", "service account", "cluster role", "cluster role binding", "parser drop-in", "credentials", "daemonset"]
    assert m["verdict"]["verdict"] == "planned" and [s["operation"] for p in m["plans"] for s in p["steps"]] == ops
    # the lab's simulated nodes report kwok://: the parameters' docker decides, and says why
    assert "container runtime: docker (logging.container_runtime (docker); 3 node(s) report a runtime Fluentd's image does not know" in plan.stderr
    assert "A drop-in written for containerd on these docker nodes would be refused: key_name message" in plan.stderr
    assert "parsed: 7 · unmatched: 1 · missing: 0 · dropped: 1 · lossy casts: 4" in plan.stderr
    assert "Read from `message` instead: 0 of 9 line(s) parsed." in plan.stderr

    applied = run(lab, archive, "12-logging", "--apply")
    assert applied.returncode == 0, applied.stderr[-3000:]
    m = manifest(applied.stdout)
    assert [c["operation"] for c in m["changes"]] == ops and m["verdict"]["verdict"] == "applied"
    assert "DaemonSet fluentd: 3 of 3 ready" in applied.stderr
    for node in ("cp1", "w1", "w2"):  # the tainted control plane too: the DaemonSet tolerates it
        assert any(line.strip().startswith(f"| {node} ") and "running and ready" in line for line in applied.stderr.splitlines()), node

    again = run(lab, archive, "12-logging", "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == [] and "Nothing to change" in again.stderr

    kubectl = [str(lab.root / "bin" / "kubectl"), "--kubeconfig", str(lab.root / "kubernetes" / "kube_config_cluster.yml"), "-n", "logging"]
    secret = json.loads(subprocess.run([*kubectl, "get", "secret", "fluentd-engine-credentials", "-o", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert base64.b64decode(secret["data"]["password"]).decode() == CANARY  # resolved at apply time, into the cluster only
    conf = json.loads(subprocess.run([*kubectl, "get", "configmap", "fluentd-conf-d", "-o", "json"], capture_output=True, text=True,
                                     check=True).stdout)["data"]["runbooklib-json.conf"]
    assert "key_name log" in conf and "types elapsed_time:float,status_code:integer,bytes_sent:integer" in conf
    no_canary(archive)
    assert CANARY not in plan.stderr + applied.stderr + again.stderr


def test_the_template_and_the_proof_on_a_real_opensearch_and_no_ism_said_plainly(lab, tmp_path):
    archive = tmp_path / "archive"
    first = run(lab, archive, "13-log-retention", "--apply")
    assert first.returncode == 0, first.stderr[-3000:]
    m = manifest(first.stdout)
    # no ISM plugin on the lab's node (not on Maven Central): the lab's parameters say retention is not required
    assert m["verdict"]["verdict"] == "applied; RETENTION NOT IN FORCE"
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [("elk1", "index template")]
    assert "RETENTION NOT IN FORCE: the engine at http://" in first.stderr and "has no index-management (ISM) plugin" in first.stderr
    assert "opensearch 2.19.1 (cluster lab-logging)" in first.stderr and '"ism_template": [' in first.stderr
    lines = first.stderr.splitlines()
    for query, expected in (("status_code >= 500", "2, 4, 6, 8"), ("elapsed_time > 1.0", "1, 2, 4, 6, 8"), ("bytes_sent > 1000", "2, 3, 9")):
        row = next(line for line in lines if line.strip().startswith(f"| {query}"))
        assert f" {expected} " in row and " ok " in row, row
    assert "Without the casts, 3 of 3 queries return other lines than the typed values say." in first.stderr
    assert any("template on a new index" in line and " ok " in line for line in lines)

    again = run(lab, archive, "13-log-retention", "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["changes"] == [] and manifest(again.stdout)["verdict"]["verdict"] == "nothing to do; RETENTION NOT IN FORCE"

    # where retention is required (the default), the same engine makes the run not ready, naming the missing plugin
    required = yaml.safe_load(lab.params_file.read_text())
    required["logging"]["retention_required"] = True
    strict = lab.params_file.with_name("retention-required.yaml")  # beside it: its references are relative to the lab
    strict.write_text(yaml.safe_dump(required, sort_keys=False))
    refused = runbook("--archive", str(archive), "run", "notebooks/13-log-retention.ipynb", "--params", str(strict), "--apply",
                      env={**os.environ, "RB_TEST_LOGGING_PASSWORD": CANARY}, timeout=900)
    assert refused.returncode == 4, refused.stderr[-3000:]
    assert manifest(refused.stdout)["verdict"]["verdict"] == "not ready" and "until then no index is ever made read-only" in refused.stderr
    no_canary(archive)
