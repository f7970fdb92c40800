"""08-session-cache, in-cluster variant, headless through the real runner: it renders the values and the Secret, touches no host,
and the record shows the values and a placeholder, never the password."""

from __future__ import annotations

import os
import secrets

import yaml
from cachedata import profile_data

from conftest import manifest, resolvable_lab_data, runbook


def test_the_cluster_variant_renders_values_and_a_secret_placeholder(tmp_path):
    canary = "rq-cluster-canary-" + secrets.token_hex(8)
    data = resolvable_lab_data(tmp_path)  # the seed lab's site, every reference resolvable; nothing connects
    cache = {k: v for k, v in profile_data()["cache"].items() if k != "vms"}
    data["cache"] = {**cache, "variant": "cluster", "password": "env:RB_TEST_CACHE_CLUSTER_PASSWORD",
                     "cluster": {"size": "4Gi", "replicas": 2}}
    data["storage"]["ceph"] = {"storage_class": "ceph-block"}
    params = tmp_path / "cluster.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    archive = tmp_path / "archive"
    done = runbook("--archive", str(archive), "run", "notebooks/08-session-cache.ipynb", "--params", str(params), "--apply",
                   env={**os.environ, "RB_TEST_CACHE_CLUSTER_PASSWORD": canary}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "rendered" and m["changes"] == []
    assert "architecture: replication" in done.stderr and "storageClass: ceph-block" in done.stderr
    assert "existingSecret: sessions-redis-auth" in done.stderr and "<base64 of cache.password>" in done.stderr
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert files and not any(canary in p.read_bytes().decode(errors="replace") for p in files)
