"""The cache facts' parsers on recorded outputs (tests/data/cache/facts/), the replication report, and the Helm values' shape."""

from __future__ import annotations

import yaml
from cachedata import DATA, ROOT, converged, params_from, profile_data, with_facts

from runbooklib.cache import facts, helm, status
from runbooklib.phase.facts import Gathered

RECORDED = DATA / "facts"


def test_info_replication_of_a_replica():
    r = facts.parse_replication((RECORDED / "replication-replica.txt").read_text())
    assert r["answering"] and r["info"]["role"] == "slave" and r["info"]["master_link_status"] == "up"
    assert r["info"]["master_host"] == "10.102.0.52" and r["info"]["slave_repl_offset"] == "1356"


def test_info_replication_of_a_primary_lists_its_replicas():
    r = facts.parse_replication((RECORDED / "replication-primary.txt").read_text())
    assert facts.replicas_of(r["info"]) == [{"ip": "10.102.0.51", "port": "6379", "state": "online", "offset": "1300", "lag": "0"}]


def test_a_wrong_password_is_not_an_answer_even_with_exit_code_0():
    r = facts.parse_replication((RECORDED / "replication-wrong-password.txt").read_text())
    assert not r["answering"] and "WRONGPASS" in r["error"]


def test_a_server_that_is_down():
    r = facts.parse_replication((RECORDED / "replication-down.txt").read_text())
    assert not r["answering"] and "Connection refused" in r["error"]


def test_small_parsers():
    assert facts.parse_server("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1\n") == {"installed": True, "version": "7.0.15"}
    assert facts.parse_server("") == {"installed": False, "version": ""}
    assert facts.parse_last_directive("absent\n") is None
    assert facts.parse_last_directive("include   /etc/redis/runbooklib.conf\n") == "include /etc/redis/runbooklib.conf"
    assert facts.parse_secret_lines("requirepass=same\nmasterauth=differs\n") == {"requirepass": "same", "masterauth": "differs"}
    assert facts.parse_file("absent") is None and facts.parse_file("present YQo=") == "a\n"


def test_the_report_gives_the_lag_in_bytes_and_names_a_broken_link(tmp_path):
    p = params_from(tmp_path, profile_data())
    primary = converged(p, "cache1")
    primary["replication"]["info"]["master_repl_offset"] = "2000"
    replica = with_facts(converged(p, "cache2"), {"replication": {"info": {**converged(p, "cache2")["replication"]["info"],
                                                                           "slave_repl_offset": "1500", "master_link_status": "down"}}})
    rows = status.report(p, Gathered({"cache1": primary, "cache2": replica}, {}))
    assert rows[0]["status"] == "ok" and rows[1]["lag (bytes)"] == 500
    assert status.problems(rows) == ["cache2 link down to the primary"]
    rows = status.report(p, Gathered({"cache1": primary}, {"cache2": "connection refused"}))
    assert rows[1]["status"].startswith("unreachable")


def cluster_params(tmp_path, **cluster):
    data = yaml.safe_load((ROOT / "params" / "lab-small.yaml").read_text())  # a site with a cluster
    cache = {k: v for k, v in profile_data()["cache"].items() if k != "vms"}
    data["cache"] = {**cache, "variant": "cluster", "cluster": {"namespace": "sessions", "size": "16Gi", "replicas": 2, **cluster}}
    data.setdefault("storage", {})["ceph"] = {"storage_class": "ceph-block"}
    return params_from(tmp_path, data)


def test_helm_values_bind_redis_to_the_block_storage_class_without_a_password(tmp_path):
    p = cluster_params(tmp_path)
    v = yaml.safe_load(helm.render(p)["values.yaml"])
    assert v["architecture"] == "replication"
    assert v["auth"] == {"enabled": True, "sentinel": False, "existingSecret": "sessions-redis-auth", "existingSecretPasswordKey": "redis-password"}
    for part in ("master", "replica"):
        assert v[part]["persistence"] == {"enabled": True, "storageClass": "ceph-block", "size": "16Gi", "accessModes": ["ReadWriteOnce"]}
    assert v["replica"]["replicaCount"] == 2 and v["image"]["repository"] == "bitnamilegacy/redis"
    assert "save 900 1 300 10 60 10000\nappendonly no\n" in v["commonConfiguration"]  # cache.cluster.persistence defaults
    assert helm.problems(v, p) == []
    text = helm.render(p)["values.yaml"]
    assert "&id" not in text and "commonConfiguration: |" in text  # written as people write values files
    assert v["global"]["security"]["allowInsecureImages"] is True  # the legacy repository is not the chart's own image
    assert helm.problems({**v, "auth": {"enabled": True, "password": "x"}}, p)  # the check can fail


def test_the_secret_manifest_shows_a_placeholder_and_carries_the_password_only_when_asked(tmp_path):
    p = cluster_params(tmp_path, storage_class="fast-rbd")
    shown = yaml.safe_load(helm.render(p)["secret.yaml"])
    assert shown["kind"] == "Secret" and shown["metadata"] == {"name": "sessions-redis-auth", "namespace": "sessions",
                                                               "labels": {"app.kubernetes.io/managed-by": "runbooklib"}}
    assert shown["data"] == {"redis-password": "<base64 of cache.password>"}
    assert helm.secret_manifest(p, "s3cret")["data"]["redis-password"] == "czNjcmV0"
    assert helm.values(p)["master"]["persistence"]["storageClass"] == "fast-rbd"  # its own class wins over storage.ceph's
    assert "helm upgrade --install sessions oci://registry-1.docker.io/bitnamicharts/redis --version" in helm.render(p)["install"]


def test_the_secret_validates_against_the_kubernetes_schema(tmp_path):
    import pytest

    kv = pytest.importorskip("kubernetes_validate")
    p = cluster_params(tmp_path)
    kv.validate(helm.secret_manifest(p, "s3cret"), "1.33.0", strict=True)


def test_secret_directives_never_leave_the_host_however_they_are_written(tmp_path):
    """The drop-in and the main file's last line are read with their secret values replaced on the host."""
    import base64
    import subprocess

    from runbooklib.cache import facts as cache_facts

    conf = tmp_path / "redis.conf"
    conf.write_text("bind 10.0.0.1\n  requirepass hunter2-a\nRequirePass\thunter2-b\nmasterauth \"hunter2 c\"\n")
    dropin = subprocess.run(["bash", "-c", cache_facts._file(str(conf), redact=True)], capture_output=True, text=True).stdout
    text = base64.b64decode(dropin.split()[1]).decode()
    last = next(f for f in cache_facts.FACTS if f.name == "last_directive").command.replace(cache_facts.MAIN_CONFIG, str(conf))
    tail = subprocess.run(["bash", "-c", last], capture_output=True, text=True).stdout
    assert "hunter2" not in text + tail
    assert text.count("<secret:cache.password>") == 3 and tail.strip() == "masterauth <value not shown>"
