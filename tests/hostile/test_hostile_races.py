"""Races: two operators starting the same runbook on the same environment, two environments at once,
and a suite against a single runbook on the same environment.

The overview runbook (no SSH) is the subject: the lock is the runner's, taken before any notebook
runs, so what holds for it holds for every runbook. A suite holds its whole environment for its whole
duration (``runbooklib.archive.suite_lock``); its own steps take their runbook locks under it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, RUNBOOK, manifest, runbook, wait_for

OVERVIEW = "notebooks/00-environment-overview.ipynb"


def start(params: Path, operator: str, tmp_path: Path, name: str):
    out = open(tmp_path / f"{name}.out", "w+")
    proc = subprocess.Popen([*RUNBOOK, "run", OVERVIEW, "--params", str(params)], stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, RUNBOOK_OPERATOR=operator))
    return proc, out


def holder(environment: str, lock: str = "--00-environment-overview") -> dict:
    path = Path(os.environ["RUNBOOK_LOCK_DIR"]) / f"{environment}{lock}.lock"
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@pytest.mark.hostile("races: same runbook, same environment", OVERVIEW)
def test_the_second_operator_is_refused_and_told_who_holds_it(lab_params, tmp_path):
    env = yaml.safe_load(lab_params.read_text())["environment"]["name"]
    first, out = start(lab_params, "alice@ops", tmp_path, "alice")
    try:
        wait_for(lambda: holder(env).get("pid") == first.pid, timeout=60, what="alice's run to hold the lock", every=0.05)
        os.kill(first.pid, signal.SIGSTOP)  # held while bob tries, however fast the run would end (SIGCONT below)
        second = runbook("run", OVERVIEW, "--params", str(lab_params), env={"RUNBOOK_OPERATOR": "bob@ops"})
        assert second.returncode == 3, second.stderr
        assert "held by alice@ops" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert "manifest:" not in second.stdout  # refused before anything: no record of its own
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    out.seek(0)
    assert first.returncode == 0, first.stderr.read()[-3000:]
    assert manifest(out.read())["operator"] == "alice@ops"
    assert runbook("verify").returncode == 0


@pytest.mark.hostile("races: two environments at once", OVERVIEW)
@pytest.mark.slow
def test_two_environments_run_at_once_without_interfering(lab_params, tmp_path):
    data = yaml.safe_load(lab_params.read_text())
    data["environment"]["name"] = "lab-other"
    other = lab_params.with_name("other.yaml")
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    runs = [start(lab_params, "alice@ops", tmp_path, "a"), start(other, "bob@ops", tmp_path, "b")]
    t0 = time.monotonic()
    # both hold their own environment's lock at the same moment: they really overlap
    wait_for(lambda: holder("lab").get("pid") == runs[0][0].pid and holder("lab-other").get("pid") == runs[1][0].pid
             and all(p.poll() is None for p, _ in runs), timeout=120, what="both runs to hold their locks at once", every=0.05)
    results = []
    for proc, out in runs:
        proc.wait(timeout=300)
        out.seek(0)
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
        results.append(manifest(out.read()))
    assert {(m["environment"]["name"], m["operator"]) for m in results} == {("lab", "alice@ops"), ("lab-other", "bob@ops")}
    assert time.monotonic() - t0 < 600
    verify = runbook("verify")
    assert verify.returncode == 0 and "2 records" in verify.stdout, verify.stdout


SUITE_LOCK = ".environment"


@pytest.mark.hostile("races: suite and runbook, same environment", OVERVIEW)
def test_a_suite_and_a_single_run_on_one_environment_refuse_each_other(lab_params, tmp_path):
    env = yaml.safe_load(lab_params.read_text())["environment"]["name"]
    # a suite holds the environment: a single run of another runbook there is refused, naming the suite
    out = open(tmp_path / "suite.out", "w+")
    suite = subprocess.Popen([*RUNBOOK, "suite", "--params", str(lab_params), "--only", "overview"], stdout=out,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, RUNBOOK_OPERATOR="alice@ops"))
    try:
        wait_for(lambda: holder(env, SUITE_LOCK).get("pid") == suite.pid and holder(env, SUITE_LOCK)["suite"].startswith("suite-"),
                 timeout=60, what="the suite to hold the environment", every=0.05)
        suite_id = holder(env, SUITE_LOCK)["suite"]
        os.kill(suite.pid, signal.SIGSTOP)  # held while bob tries, however fast its one step would end (SIGCONT below)
        single = runbook("run", "notebooks/01-vm-preflight.ipynb", "--params", str(lab_params), env={"RUNBOOK_OPERATOR": "bob@ops"})
        assert single.returncode == 3, single.stderr
        for part in (f"held by suite {suite_id} of alice@ops", f"pid {suite.pid}", "since ", "Wait for the suite to finish"):
            assert part in single.stderr, (part, single.stderr)
        assert "manifest:" not in single.stdout  # refused before anything: no record of its own
    finally:
        os.kill(suite.pid, signal.SIGCONT)
        suite.wait(timeout=300)
    out.seek(0)
    # the suite's own step ran under its lock (no deadlock with itself) and completed
    assert suite.returncode == 0, (out.read(), suite.stderr.read()[-3000:])
    assert f"suite {suite_id} complete: 1 step(s) run" in out.read()
    assert holder(env, SUITE_LOCK) == {}  # released, its holder cleared

    # a single run holds a runbook of the environment: a suite is refused, naming the run
    first, first_out = start(lab_params, "carol@ops", tmp_path, "carol")
    try:
        wait_for(lambda: holder(env).get("pid") == first.pid, timeout=60, what="carol's run to hold the lock", every=0.05)
        os.kill(first.pid, signal.SIGSTOP)  # held while dave tries (SIGCONT below)
        refused = runbook("suite", "--params", str(lab_params), "--only", "overview", "--new", env={"RUNBOOK_OPERATOR": "dave@ops"})
        assert refused.returncode == 3, refused.stderr
        for part in ("has a runbook running: 00-environment-overview by carol@ops", f"pid {first.pid}", "wait for it to finish"):
            assert part in refused.stderr, (part, refused.stderr)
        assert "step(s) on" not in refused.stdout  # refused before the suite began
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-3000:]
    verify = runbook("verify")
    assert verify.returncode == 0 and "2 records" in verify.stdout, verify.stdout


HOLD = """
import os, sys, time
from runbooklib.archive import suite_lock
with suite_lock(sys.argv[1], {"operator": "erin@ops", "pid": os.getpid(), "suite": "suite-dead", "since": "then"}):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.hostile("races: suite and runbook, same environment", OVERVIEW)
def test_a_dead_suites_lock_does_not_block(tmp_path):
    from runbooklib.archive import run_lock, suite_lock
    from runbooklib.errors import LockedError

    proc = subprocess.Popen([sys.executable, "-c", HOLD, "lab"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"suite suite-dead of erin@ops \\(pid {proc.pid}"), run_lock("lab", "02-vm-baseline", {}):
            pass
        with pytest.raises(LockedError, match="held by suite suite-dead"), suite_lock("lab", {"suite": "mine"}):
            pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # dies holding it: its holder stays written in the file
        proc.wait(timeout=30)
    assert holder("lab", SUITE_LOCK)["suite"] == "suite-dead"
    with run_lock("lab", "02-vm-baseline", {"operator": "frank@ops", "pid": os.getpid()}):  # the kernel dropped the dead suite's flock
        with pytest.raises(LockedError, match="has a runbook running: 02-vm-baseline by frank@ops"), suite_lock("lab", {"suite": "x"}):
            pass
    with suite_lock("lab", {"operator": "gina@ops", "pid": os.getpid(), "suite": "suite-new"}):
        assert holder("lab", SUITE_LOCK)["suite"] == "suite-new"
        with run_lock("lab", "02-vm-baseline", {}):  # this process's suite: its runs take their locks under it
            pass
