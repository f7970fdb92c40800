"""Cache operations as data (tests/data/cache/operations/*.yaml): a host's facts in, exactly these steps out.

Also: a converged pair plans nothing, a primary that replicates blocks the plan, the failover drill's
plan, the drop-in's shape, and that no command line or diff carries the password.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from cachedata import DATA, converged, params_from, profile_data, with_facts

from runbooklib.cache import failover
from runbooklib.cache import operations as ops
from runbooklib.cache.client import RedisClient, fill_secret, secret_lines
from runbooklib.secrets import Secret
from runbooklib.ssh import HostResult

CASES = sorted((DATA / "operations").glob("*.yaml"))
PASSWORD = 'canary "quoted" \\ 7f3a9c'


@pytest.fixture
def p(tmp_path):
    return params_from(tmp_path, profile_data())


def described(step) -> dict:
    out = {"operation": step.operation, "change": step.change, "command": step.command, "undo": step.undo}
    if step.blocked:
        out["blocked"] = step.blocked
    return out


@pytest.mark.parametrize("path", CASES, ids=lambda path: path.stem)
def test_operation_case(p, path: Path):
    case = yaml.safe_load(path.read_text())
    f = with_facts(converged(p, case["host"]), case.get("facts"))
    got = [described(s) for s in ops.plan(p, {case["host"]: f})]
    assert [(g["operation"], g["change"]) for g in got] == [(e["operation"], e["change"]) for e in case["expect"]], path.name
    for g, e in zip(got, case["expect"]):
        assert {k: g.get(k) for k in e} == e, f"{path.name}: {e['operation']}"


@pytest.mark.parametrize("host", ["cache1", "cache2"])
def test_a_converged_host_plans_nothing(p, host):
    assert ops.plan(p, {host: converged(p, host)}) == []


def test_a_primary_that_replicates_blocks_the_whole_plan(p):
    facts = {"cache1": converged(p, "cache1", primary="cache2"), "cache2": converged(p, "cache2", primary="cache2")}
    steps = ops.plan(p, facts)
    assert [(s.host, s.operation, s.command) for s in steps] == [("cache1", "topology", None), ("cache2", "topology", None)]
    assert all("swap cache.vms.primary and cache.vms.replica" in s.blocked for s in steps)


def test_the_drop_in_says_what_the_parameters_say(p):
    primary, replica = ops.desired_config(p, p.host("cache1")), ops.desired_config(p, p.host("cache2"))
    for text, host in ((primary, "cache1"), (replica, "cache2")):
        lines = text.splitlines()
        assert f"bind {p.host(host).address} 127.0.0.1" in lines and "protected-mode yes" in lines and "port 6379" in lines
        assert "requirepass <secret:cache.password>" in lines and "masterauth <secret:cache.password>" in lines
        assert "save 900 1 300 10" in lines and "appendonly yes" in lines and "maxmemory 64mb" in lines
    assert "replicaof 10.77.0.51 6379" in replica.splitlines() and "replicaof" not in primary


def test_no_persistence_writes_an_empty_save(tmp_path):
    data = profile_data()
    data["cache"]["vms"]["persistence"] = {"rdb": False, "aof": False}
    q = params_from(tmp_path, data)
    lines = ops.desired_config(q, q.host("cache1")).splitlines()
    assert 'save ""' in lines and "appendonly no" in lines


def test_the_password_is_quoted_as_redis_reads_it_and_only_put_in_on_the_host(p):
    text = fill_secret(ops.desired_config(p, p.host("cache2")), PASSWORD)
    assert 'requirepass "canary \\"quoted\\" \\\\ 7f3a9c"' in text.splitlines()
    assert text.count("canary") == 2 and "<secret:" not in text
    assert secret_lines(PASSWORD) in text


def test_the_write_is_loaded_by_redis_server_before_it_is_kept():
    command = ops.validated_write("/etc/redis/runbooklib.conf")
    assert command.index("cp -a") < command.index("install -m 0640 -o redis -g redis") < command.index("redis-server")
    assert "--port 0" in command and '--pidfile ""' in command and "--replicaof no one" in command  # listens nowhere, touches no data
    assert "grep -q \"Configuration loaded\"" in command
    assert command.rstrip().endswith("mv -f /etc/redis/runbooklib.conf.runbook-prev.tmp /etc/redis/runbooklib.conf.runbook-prev; fi")


def test_plans_and_diffs_carry_placeholders_never_the_password(p):
    fresh = with_facts(converged(p, "cache2"), {"dropin": None, "dropin_secrets": {"requirepass": "absent", "masterauth": "absent"}})
    steps = ops.plan(p, {"cache2": fresh})
    text = " ".join(f"{s.change} {s.command} {s.undo} {s.diff}" for s in steps)
    assert "<secret:cache.password>" in text and "canary" not in text


class FakeFleet:
    """Records what would go over SSH: command lines and uploaded files."""

    def __init__(self, hosts):
        self.hosts, self.commands, self.files = hosts, [], {}

    def connection(self, host):
        fleet = self

        class Sftp:
            def normalize(self, path):
                return "/root"

            def stat(self, path):
                return True

            def chmod(self, path, mode):
                pass

            def open(self, path, mode):
                class File:
                    def __enter__(self):
                        return self

                    def __exit__(self, *a):
                        pass

                    def chmod(self, m):
                        assert m == 0o600

                    def write(self, text):
                        fleet.files[path] = text
                return File()

        class Conn:
            def sftp(self):
                return Sftp()
        return Conn()

    @contextlib.contextmanager
    def sftp(self, host, what):
        yield self.connection(host).sftp()

    def run_on(self, host, command, timeout=None, idle=None):
        self.commands.append(command)
        return HostResult(host.name, True, stdout="OK\n", exit_code=0)

    def each(self, fn, hosts=None, desc=""):
        return {h.name: fn(h) for h in (hosts or self.hosts)}


def test_no_command_line_carries_the_password(p):
    fleet = FakeFleet(p.hosts)
    client = RedisClient(fleet, Secret(PASSWORD, "cache.password"))
    fresh = with_facts(converged(p, "cache1"), {"dropin": None, "service": {"active": "inactive", "enabled": "disabled"}})
    steps = ops.plan(p, {"cache1": fresh})
    run = ops.executor(client)
    for s in steps:
        assert run(p.host("cache1"), s).ok
    client.cli(p.host("cache1"), "SET", "session:x", "{}", "EX", "60")
    assert fleet.commands and not any("canary" in c for c in fleet.commands)
    assert 'REDISCLI_AUTH="$(cat "$FILE_auth")" redis-cli' in fleet.commands[0]
    assert any(v == PASSWORD for v in fleet.files.values())  # the password goes only into files of mode 600
    dropins = [v for k, v in fleet.files.items() if k.endswith("-dropin")]
    assert dropins and all(secret_lines(PASSWORD) in d for d in dropins)


# -- the failover drill --------------------------------------------------------------------------

def test_failover_with_the_old_primary_lost_promotes_the_replica_only(p):
    steps = failover.plan(p, {"cache2": converged(p, "cache2")})
    assert [(s.host, s.operation) for s in steps] == [("cache2", "promoted"), ("cache2", "promoted")]
    assert "replicaof" not in steps[0].diff.split("+++")[1].replace("-replicaof", "")  # the new drop-in has no replicaof
    assert steps[1].command == '[ "$(rcli REPLICAOF NO ONE)" = OK ]'


def test_failover_re_points_the_old_primary_when_it_is_back(p):
    promoted = converged(p, "cache2", primary="cache2")
    back = with_facts(converged(p, "cache1"), {"replication": {"info": {"role": "master", "connected_slaves": "0"}}})
    steps = failover.plan(p, {"cache1": back, "cache2": promoted})
    assert [(s.host, s.operation) for s in steps] == [("cache1", "old primary re-pointed")] * 2
    assert "replicaof 10.77.0.52 6379" in ops.desired_config(p, p.host("cache1"), primary="cache2")
    assert steps[1].command == '[ "$(rcli REPLICAOF 10.77.0.52 6379)" = OK ]'


def test_after_the_failover_and_the_swap_nothing_is_planned(tmp_path, p):
    facts = {h: converged(p, h, primary="cache2") for h in ("cache1", "cache2")}
    assert failover.plan(p, facts) == []
    data = profile_data()
    data["cache"]["vms"].update(primary="cache2", replica="cache1")
    swapped = params_from(tmp_path, data, "swapped.yaml")
    assert ops.plan(swapped, facts) == []


def test_a_promoted_candidate_that_does_not_answer_is_blocked(p):
    down = with_facts(converged(p, "cache2"), {"replication": {"answering": False, "error": "Connection refused", "info": {}}})
    steps = failover.plan(p, {"cache2": down})
    assert len(steps) == 1 and steps[0].command is None and "start it first" in steps[0].blocked


def test_a_replica_promoted_by_the_failover_blocks_the_plan_until_the_parameters_are_swapped(p):
    # after incident/redis-failover, before the parameter swap, with the old primary still down: cache2 serves as
    # the primary by its own drop-in; planning it as the replica would make it a read-only replica of a dead host
    promoted = converged(p, "cache2", primary="cache2")
    steps = ops.plan(p, {"cache2": promoted})
    assert [(s.host, s.operation, s.command) for s in steps] == [("cache2", "topology", None)]
    assert "runs as the primary, by its own drop-in" in steps[0].blocked
    # a replica someone promoted by hand (its drop-in still says replica) is only re-pointed
    by_hand = with_facts(converged(p, "cache2"), {"replication": {"answering": True, "error": "", "info": {"role": "master"}}})
    assert [s.operation for s in ops.plan(p, {"cache2": by_hand})] == ["replication"]
