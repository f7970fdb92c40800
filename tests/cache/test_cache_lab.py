"""Runbook 08 and the Redis failover drill on two lab VMs (real Debian redis-server 7.0, started by the lab's systemctl
through Debian's own unit), headless through the real runner.

Plan changes nothing; apply builds the primary and the replica; a session written on the primary is
read on the replica; a second apply plans nothing; the replica survives a service restart and a VM
stop/start (sessions written meanwhile arrive); the failover drill promotes the replica with the
primary's VM down, re-points the old primary when it is back, and after the parameter file's swap 08
plans nothing; the password (a random canary with a quote in it) is nowhere in the archive.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from cachedata import PROFILE

from conftest import manifest, require_lab, runbook, running_lab, wait_for
from runbooklib.cache.client import RedisClient
from runbooklib.params import load_params
from runbooklib.ssh import Fleet

require_lab("/usr/bin/redis-server", "/usr/bin/redis-cli")
CANARY = 'rq-canary-"' + secrets.token_hex(10)
os.environ["RB_TEST_CACHE_PASSWORD"] = CANARY


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("cachelab"), "rbcach", "10.101.0.0/24", profile=str(PROFILE)) as lab:
        yield lab


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def params(lab):
    return lab.params_file


def variant(lab, name: str, **cache) -> Path:
    """The lab's parameter file with cache changes (beside it, so its relative references resolve)."""
    data = yaml.safe_load(lab.params_file.read_text())
    for key, value in cache.items():
        if value is None:
            data["cache"].pop(key, None)
        elif isinstance(value, dict) and isinstance(data["cache"].get(key), dict):
            data["cache"][key].update(value)
        else:
            data["cache"][key] = value
    path = lab.root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Redis:
    """redis-cli on the lab's cache VMs from the test, through the product's own client."""

    def __init__(self, params_file: Path):
        self.params = load_params(params_file)
        self.fleet = Fleet.from_params(self.params, progress=None)
        self.client = RedisClient(self.fleet, self.params.secret("cache.password"))

    def cli(self, host: str, *args: str) -> str:
        return self.client.cli(self.params.host(host), *args).stdout.strip()

    def shell(self, host: str, script: str):
        return self.client.shell(self.params.host(host), script)

    def info(self, host: str) -> dict[str, str]:
        r = self.client.cli(self.params.host(host), "INFO", "replication")
        return dict(line.split(":", 1) for line in r.stdout.replace("\r", "").splitlines() if ":" in line) if r.ok else {}

    def linked(self, replica: str, primary: str) -> bool:
        i = self.info(replica)
        return i.get("role") == "slave" and i.get("master_link_status") == "up" and i.get("master_host") == str(self.params.host(primary).address)

    def point_endpoint(self, at: str, hosts=("cache1", "cache2")) -> None:
        """The client endpoint's name resolved to ``at`` on the cache VMs (/etc/hosts: the lab's DNS record)."""
        address = self.params.host(at).address
        for host in hosts:
            self.shell(host, f"sed -i '/sessions.lab.internal/d' /etc/hosts && echo '{address} sessions.lab.internal' >> /etc/hosts").check()

    def close(self) -> None:
        self.fleet.close()


@pytest.fixture(scope="module")
def redis(params):
    r = Redis(params)
    yield r
    r.close()


def run(archive, notebook: str, params: Path, *extra: str):
    t0 = time.monotonic()
    done = runbook("--archive", str(archive), "run", f"notebooks/{notebook}.ipynb", "--params", str(params), *extra, timeout=600)
    print(f"{notebook} {' '.join(extra) or '(plan)'}: {time.monotonic() - t0:.1f} s")
    return done


def test_plan_changes_nothing_then_apply_builds_the_pair_then_nothing_to_do(lab, archive, params, redis):
    plan = run(archive, "08-session-cache", params)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and "PLAN mode: nothing was changed" in plan.stderr
    assert redis.shell("cache1", "systemctl is-active redis-server").stdout.strip() == "inactive"
    assert "<secret:cache.password>" in plan.stderr  # the diff shows the placeholder

    redis.point_endpoint("cache1")
    up = run(archive, "08-session-cache", params, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "applied", m["verdict"]
    changed = {(c["host"], c["operation"]) for c in m["changes"]}
    assert {("cache1", "server configuration"), ("cache1", "drop-in included"), ("cache1", "service running"),
            ("cache2", "server configuration"), ("cache2", "service running")} <= changed
    assert "A session written on the primary, read on the replica" in up.stderr
    assert "A session written through sessions.lab.internal:6379, as an application would" in up.stderr

    # Debian's way: the redis user, enabled at boot, the drop-in private to redis, the main file's last line includes it
    assert redis.shell("cache1", "ps -o user= -C redis-server").stdout.split() == ["redis"]
    assert redis.shell("cache2", "systemctl is-enabled redis-server").stdout.strip() == "enabled"
    assert redis.shell("cache1", "stat -c '%a %U' /etc/redis/runbooklib.conf").stdout.split() == ["640", "redis"]
    assert redis.shell("cache1", "grep -vE '^\\s*(#|$)' /etc/redis/redis.conf | tail -1").stdout.strip() == "include /etc/redis/runbooklib.conf"
    # the runs' password files are gone (only this command's own two are there)
    assert redis.shell("cache1", 'ls ~/.runbooklib-cache | grep -v "^$(basename "$FILE_auth" | cut -d- -f1)-" | wc -l').stdout.strip() == "0"
    # bound to the host's address, a password required, the replica read-only
    assert "NOAUTH" in redis.shell("cache2", f"redis-cli -h {redis.params.host('cache1').address} PING 2>&1").stdout
    wait_for(lambda: redis.linked("cache2", "cache1"), 30, "cache2 replicating from cache1")
    assert redis.cli("cache1", "SET", "session:t1", '{"user":1}', "EX", "600") == "OK"
    wait_for(lambda: redis.cli("cache2", "GET", "session:t1") == '{"user":1}', 10, "the session on the replica")
    assert 0 < int(redis.cli("cache2", "TTL", "session:t1")) <= 600
    assert redis.cli("cache2", "SET", "x", "1").startswith("READONLY")

    again = run(archive, "08-session-cache", params, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m2 = manifest(again.stdout)
    assert m2["verdict"]["verdict"] == "nothing to do" and m2["changes"] == []


def test_the_replica_survives_a_restart_and_its_vm_stopping(lab, archive, params, redis):
    before = redis.shell("cache2", "pgrep -u redis redis-server").stdout
    assert before.strip().isdigit()
    assert redis.shell("cache2", "systemctl restart redis-server").ok
    wait_for(lambda: redis.linked("cache2", "cache1"), 30, "replication after the replica's restart")
    assert redis.shell("cache2", "pgrep -u redis redis-server").stdout != before

    assert lab.stop("cache2")
    assert redis.cli("cache1", "SET", "session:while-down", "written while cache2 was down", "EX", "3600") == "OK"
    assert lab.start("cache2")
    redis.fleet.close()  # the old connection went with the VM
    wait_for(lambda: redis.linked("cache2", "cache1"), 60, "replication after the replica's VM came back (enabled at boot)")
    wait_for(lambda: redis.cli("cache2", "GET", "session:while-down") == "written while cache2 was down", 10, "the missed session")

    again = run(archive, "08-session-cache", params, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest(again.stdout)["verdict"]["verdict"] == "nothing to do"


def test_turning_the_append_only_file_on_keeps_the_sessions(lab, archive, params, redis):
    # Redis restarted with appendonly yes and no AOF starts empty; 08 turns AOF on at run time first
    no_aof = variant(lab, "no-aof.yaml", vms={"persistence": {"rdb": True, "save": ["900 1"], "aof": False}})
    off = run(archive, "08-session-cache", no_aof, "--apply")
    assert off.returncode == 0 and manifest(off.stdout)["verdict"]["verdict"] == "applied", off.stderr[-3000:]
    assert "aof_enabled:0" in redis.cli("cache1", "INFO", "persistence").replace("\r", "")
    assert redis.cli("cache1", "SET", "session:aof-check", "survives", "EX", "3600") == "OK"
    on = run(archive, "08-session-cache", params, "--apply")
    assert on.returncode == 0, on.stderr[-3000:]
    assert redis.cli("cache1", "GET", "session:aof-check") == "survives"
    assert "aof_enabled:1" in redis.cli("cache1", "INFO", "persistence").replace("\r", "")
    m = manifest(on.stdout)
    assert m["verdict"]["verdict"] == "applied" and ("cache1", "append-only file") in {(c["host"], c["operation"]) for c in m["changes"]}
    wait_for(lambda: redis.cli("cache2", "GET", "session:aof-check") == "survives", 30, "the session on the replica")


def test_failover_drill(lab, archive, params, redis):
    drill = variant(lab, "failover.yaml", failover={})
    swapped = variant(lab, "swapped.yaml", vms={"primary": "cache2", "replica": "cache1"})
    assert redis.cli("cache1", "SET", "session:before-failover", "kept", "EX", "3600") == "OK"
    wait_for(lambda: redis.cli("cache2", "GET", "session:before-failover") == "kept", 10, "the session on the replica")

    assert lab.stop("cache1")  # the primary's VM is lost
    redis.fleet.close()
    promote = run(archive, "incident/redis-failover", drill, "--apply")
    assert promote.returncode == 4, promote.stderr[-3000:]  # promoted, but the clients still reach the lost host
    m = manifest(promote.stdout)
    assert m["verdict"]["verdict"] == "incomplete", m["verdict"]
    assert any("reaches cache1:6379, not the primary cache2" in pr and "re-point the clients" in pr for pr in m["verdict"]["problems"])
    assert {(c["host"], c["operation"]) for c in m["changes"]} == {("cache2", "promoted")}
    assert redis.info("cache2")["role"] == "master" and redis.cli("cache2", "GET", "session:before-failover") == "kept"
    assert redis.cli("cache2", "SET", "session:after-failover", "new", "EX", "3600") == "OK"
    assert "sessions.lab.internal -> " + str(redis.params.host("cache2").address) in promote.stderr  # what to change
    redis.point_endpoint("cache2", hosts=("cache2",))  # the DNS record changed

    assert lab.start("cache1")  # it comes back as a primary (its drop-in still says so): re-pointed by the re-run
    redis.fleet.close()
    redis.point_endpoint("cache2", hosts=("cache1",))
    repoint = run(archive, "incident/redis-failover", drill, "--apply")
    assert repoint.returncode == 0, repoint.stderr[-3000:]
    m = manifest(repoint.stdout)
    assert m["verdict"]["verdict"] == "applied" and {c["host"] for c in m["changes"]} == {"cache1"}
    wait_for(lambda: redis.linked("cache1", "cache2"), 30, "the old primary replicating from the new one")
    wait_for(lambda: redis.cli("cache1", "GET", "session:after-failover") == "new", 10, "the new primary's session on the old one")

    blocked = run(archive, "08-session-cache", params)  # the parameter file not swapped yet: refused, nothing flipped back
    assert blocked.returncode == 0 and "BLOCKED: cache1 is cache.vms.primary but replicates from" in blocked.stderr
    after = run(archive, "08-session-cache", swapped, "--apply")
    assert after.returncode == 0, after.stderr[-3000:]
    m = manifest(after.stdout)
    assert m["verdict"]["verdict"] == "nothing to do" and m["changes"] == []


def encoded(value: str) -> list[str]:
    raw = value.encode()
    return [value, json.dumps(value)[1:-1], repr(value)[1:-1], urllib.parse.quote(value), raw.hex(),
            base64.b64encode(raw).decode().rstrip("="), value.replace('"', '\\"'), value.split('"', 1)[1]]


def test_the_password_is_nowhere_in_the_archive(archive):
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert len(files) > 10  # every run above left its record
    for path in files:
        text = path.read_bytes().decode(errors="replace")
        for form in encoded(CANARY):
            assert form not in text, f"{path.name} holds the password ({form[:6]}...)"
