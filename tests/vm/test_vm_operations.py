"""Baseline operations as data: given a host's facts, exactly these steps (tests/data/vm/operations/*.yaml).

Each case names a host of the lab parameters and the facts that differ from a converged host;
``expect`` lists the planned steps: operation, change, command and undo. Adding a case is adding a file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from test_vm_checks import ready_facts

from conftest import lab_data, set_path, write_params
from runbooklib.params import load_params
from runbooklib.phase import steps as phase_steps
from runbooklib.vm import operations

DATA = Path(__file__).parents[1] / "data" / "vm" / "operations"
CASES = sorted(DATA.glob("*.yaml"))


@pytest.fixture
def params(tmp_path):
    data = lab_data()
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    return load_params(write_params(tmp_path, data))


def converged(params, host):
    """Facts as the baseline leaves a host: its own files in place, the cluster block in /etc/hosts."""
    f = ready_facts(host, params)
    f["managed_files"] = {**operations.desired_files(params),
                          "/etc/hosts": "127.0.0.1 localhost\n" + operations.hosts_block(params),
                          "/etc/hostname": host + "\n"}
    return f


def case_facts(params, case: dict) -> dict:
    f = converged(params, case["host"])
    for key, value in (case.get("facts") or {}).items():
        if key == "managed_files":
            f["managed_files"] = {**f["managed_files"], **value}
        else:
            f[key] = value
    return f


def planned(params, case: dict) -> list[dict]:
    steps = phase_steps.plan(operations.OPERATIONS, params, {case["host"]: case_facts(params, case)})
    return [{"operation": s.operation, "change": s.change, "command": s.command, "undo": s.undo,
             **({"blocked": s.blocked} if s.blocked else {})} for s in steps]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_operation_case(params, path):
    case = yaml.safe_load(path.read_text())
    assert planned(params, case) == case["expect"]


def test_a_converged_host_plans_nothing(params):
    for host in ("w1", "db1", "cp1"):
        assert phase_steps.plan(operations.OPERATIONS, params, {host: converged(params, host)}) == []


def test_every_step_of_a_fresh_host_says_how_to_undo_it(params):
    case = yaml.safe_load((DATA / "fresh-worker.yaml").read_text())
    steps = phase_steps.plan(operations.OPERATIONS, params, {"w1": case_facts(params, case)})
    assert steps and all(s.command and (s.undo or s.undo_note) for s in steps)
    assert {s.operation for s in steps} == {op.name for op in operations.OPERATIONS}
    file_steps = [s for s in steps if s.change.startswith(("write ", "update "))]
    assert file_steps and all(s.diff.startswith(("--- /dev/null", "--- a/")) for s in file_steps)


def test_write_file_survives_any_content(tmp_path):
    content = "quotes ' \" $HOME `x` \\ and no final newline"
    target = tmp_path / "sub" / "f"
    subprocess.run(["sh", "-c", phase_steps.write_file(str(target), content)], check=True)
    assert target.read_text() == content


def test_file_diff_shows_old_and_new_lines():
    diff = phase_steps.file_diff("/etc/x", "a\nb\n", "a\nc\n")
    assert diff.splitlines()[:2] == ["--- a/etc/x", "+++ b/etc/x"] and "-b" in diff and "+c" in diff
    assert phase_steps.file_diff("/etc/x", None, "new\n").startswith("--- /dev/null\n+++ b/etc/x\n")


def test_recap_and_summary_count_per_host(params):
    case = yaml.safe_load((DATA / "fresh-worker.yaml").read_text())
    steps = phase_steps.plan(operations.OPERATIONS, params, {"w1": case_facts(params, case)})
    (recap,) = phase_steps.plan_recap(steps)
    assert recap["host"] == "w1" and recap["steps"] == len(steps) and recap["blocked"] == 0
    assert phase_steps.plan_summary(steps).startswith(f"{len(steps)} change(s) on 1 host(s) across 8 operation(s)")


def test_problems_name_stopped_and_unreachable_hosts():
    results = {"w1": phase_steps.HostApply("w1"), "w2": phase_steps.HostApply("w2", error="w2: ssh hardened failed")}
    assert phase_steps.problems(results, {"w3": "w3: connection refused"}) == [
        "w2: ssh hardened failed", "w3: unreachable: w3: connection refused"]
    assert phase_steps.result_rows(results)[1] == {"host": "w2", "steps applied": 0, "result": "w2: ssh hardened failed"}


def test_a_host_whose_facts_failed_gets_no_plan_but_a_blocked_step(params):
    """A fact read as its default (here /etc/hosts as empty) must not become a rewrite that drops lines."""
    f = converged(params, "w1")
    f["managed_files"] = {}
    steps = phase_steps.plan(operations.OPERATIONS, params, {"w1": f},
                             {"w1": {"managed_files": "no output (the command was cut short)"}})
    assert [(s.host, s.command) for s in steps] == [("w1", None)]
    assert "facts incomplete (managed_files: no output" in steps[0].blocked


def test_every_deploy_key_is_authorized_and_a_converged_host_plans_none(tmp_path):
    data = lab_data()
    keys = "ssh-ed25519 AAAAkeyone alice\nssh-ed25519 AAAAkeytwo bob\n"
    (tmp_path / "team.pub").write_text(keys)
    set_path(data, "vm.deploy_user.authorized_key", "file:team.pub")
    params = load_params(write_params(tmp_path, data))
    f = converged(params, "w1")
    f["deploy_user"] = {"exists": True, "groups": ["deploy", "docker"], "authorized_keys": ["ssh-ed25519 AAAAkeyone alice"]}
    (step,) = phase_steps.plan(operations.OPERATIONS, params, {"w1": f})
    assert step.change == "authorize the deploy key (bob) for deploy" and "AAAAkeytwo" in step.command
    f["deploy_user"]["authorized_keys"] = keys.splitlines()
    assert phase_steps.plan(operations.OPERATIONS, params, {"w1": f}) == []


def test_an_updated_dropin_is_undone_by_hand_a_new_one_by_removal(params):
    f = converged(params, "w1")
    f["managed_files"] = {**f["managed_files"], "/etc/sysctl.d/90-kubernetes.conf": "net.ipv4.ip_forward = 1\n"}
    (step,) = phase_steps.plan(operations.OPERATIONS, params, {"w1": f})
    assert step.undo is None and "put back the old /etc/sysctl.d/90-kubernetes.conf" in step.undo_note
    f["managed_files"]["/etc/sysctl.d/90-kubernetes.conf"] = None
    (step,) = phase_steps.plan(operations.OPERATIONS, params, {"w1": f})
    assert step.undo == "rm -f /etc/sysctl.d/90-kubernetes.conf"


@pytest.mark.parametrize("status,problems,verdict", [
    ("applied", [], "applied"), ("empty", [], "nothing to do"), ("planned", [], "planned"),
    ("cancelled", [], "cancelled"), ("applied", ["w2: ssh hardened failed"], "incomplete"),
    ("planned", ["db1: unreachable: refused"], "incomplete")])
def test_the_apply_verdict(status, problems, verdict):
    assert phase_steps.apply_verdict(status, problems) == verdict


class FakeFleet:
    """The fleet as the phase engine uses it: its hosts, and ``each`` calling a function per host."""

    def __init__(self, names):
        self.hosts = [type("H", (), {"name": n})() for n in names]

    def each(self, fn, hosts, desc=""):
        return {h.name: fn(h) for h in hosts}


def test_apply_first_runs_one_host_then_the_others_and_nothing_on_them_when_it_failed():
    from runbooklib.ssh import HostResult

    steps = [phase_steps.Step(h, "op", f"change on {h}", "true") for h in ("db2", "db1", "db3")]
    ran = []

    def execute(host, step, fail=()):
        ran.append(host.name)
        ok = host.name not in fail
        return HostResult(host.name, ok, exit_code=0 if ok else 1, error="" if ok else "exited 1")
    results = phase_steps.apply_first(FakeFleet(["db1", "db2", "db3"]), steps, "db1", execute=execute)
    assert ran[0] == "db1" and sorted(ran[1:]) == ["db2", "db3"] and all(r.ok for r in results.values())
    ran.clear()
    results = phase_steps.apply_first(FakeFleet(["db1", "db2", "db3"]), steps, "db1",
                                      execute=lambda h, s: execute(h, s, fail=("db1",)), role="primary", rest="replicas")
    assert ran == ["db1"] and results["db2"].error == "db2: not changed: the primary db1 failed first" and not results["db3"].ok


class LocalShellFleet:
    """A local stand-in for the fleet: ``run_on`` runs the command in this machine's bash (the real shell),
    so the batched apply's script is executed, not inspected; ``round_trips`` counts commands sent."""

    def __init__(self, names, tmp):
        from runbooklib.schema import SSH

        self.hosts = [type("H", (), {"name": n})() for n in names]
        self.ssh = SSH(key="file:none", known_hosts="none")
        self.tmp = tmp
        self.round_trips = 0

    def each(self, fn, hosts, desc=""):
        return {h.name: fn(h) for h in hosts}

    def run_on(self, host, command, timeout=None, idle=None):
        from runbooklib.ssh import HostResult

        self.round_trips += 1
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=self.tmp, timeout=timeout)
        return HostResult(host.name, done.returncode == 0, done.stdout, done.stderr, done.returncode,
                          "" if done.returncode == 0 else f"exited {done.returncode}")


def test_a_hosts_steps_go_in_one_round_trip_and_only_what_succeeded_is_recorded(tmp_path):
    S = phase_steps.Step
    steps = [S("a", "one", "write one", "printf partial > one"),  # output file without a final newline
             S("a", "exit inside", "a step that exits 0 early", "exit 0; touch never"),
             S("a", "two", "fails", "echo 'two went wrong' >&2; exit 3"),
             S("a", "three", "never runs", "touch three"),
             S("b", "b1", "write b", "echo b > b && cat b")]
    fleet = LocalShellFleet(["a", "b"], tmp_path)
    recorded = []
    results = phase_steps.apply(fleet, steps, on_change=lambda s: recorded.append((s.host, s.operation)))
    assert fleet.round_trips == 2  # one per host, not one per step
    assert [s.operation for s in results["a"].applied] == ["one", "exit inside"]
    assert results["a"].error.startswith("a: two (fails) failed: 'echo' exited 3") and "two went wrong" in results["a"].error
    assert "never" not in results["a"].error and not (tmp_path / "three").exists() and not (tmp_path / "never").exists()
    assert (tmp_path / "one").read_text() == "partial"
    assert results["b"].ok and recorded == [("a", "one"), ("a", "exit inside"), ("b", "b1")]


def test_a_batch_stops_before_a_blocked_step_and_an_unrecorded_step_names_the_ones_after_it(tmp_path):
    S = phase_steps.Step
    fleet = LocalShellFleet(["a"], tmp_path)
    blocked = [S("a", "x", "touch x", "touch x"), S("a", "y", "needs a person", None, blocked="do it by hand"), S("a", "z", "z", "touch z")]
    results = phase_steps.apply(fleet, blocked)
    assert results["a"].error == "a: y: do it by hand" and [s.operation for s in results["a"].applied] == ["x"]
    assert (tmp_path / "x").exists() and not (tmp_path / "z").exists()

    def on_change(step):
        if step.operation == "p":
            raise OSError("disk full")
    three = [S("a", op, f"touch {op}", f"touch {op}") for op in ("p", "q", "r")]
    results = phase_steps.apply(fleet, three, on_change=on_change)
    err = results["a"].error
    assert err.startswith("a: p (touch p) was applied but not recorded: disk full") and "q (touch q); r (touch r)" in err
    assert [s.operation for s in results["a"].applied] == ["p", "q", "r"]


def test_a_round_trip_cut_short_applies_only_the_steps_whose_exit_code_came_back():
    from runbooklib.ssh import HostResult

    S = phase_steps.Step
    steps = [S("a", "one", "one", "true"), S("a", "two", "two", "sleep 100")]
    script, token = phase_steps.batch_script(steps)
    cut = HostResult("a", False, f"@@rb-{token} 0\n\n@@rb-{token}-rc 0 0\n@@rb-{token} 1\n", error="a: connection lost during the command")
    done, (step, r) = phase_steps.batch_outcome(steps, cut, token)
    assert done == steps[:1] and step is steps[1] and r.error == "a: connection lost during the command" and r.exit_code is None
    forged = HostResult("a", True, "@@rb-000000000000-rc 1 0\n", exit_code=0)  # another token's markers are output, not codes
    done, (step, r) = phase_steps.batch_outcome(steps, forged, token)
    assert done == [] and step is steps[0]
