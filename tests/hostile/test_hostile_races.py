"""Races: two operators starting the same runbook on the same environment, and two environments at once.

The overview runbook (no SSH) is the subject: the lock is the runner's, taken before any notebook
runs, so what holds for it holds for every runbook. A suite (several runbooks in one command) against
a single runbook on the same environment is not covered: there is no suite command in the runner yet.
"""

from __future__ import annotations

import json
import os
import subprocess
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


def holder(environment: str) -> dict:
    path = Path(os.environ["RUNBOOK_LOCK_DIR"]) / f"{environment}--00-environment-overview.lock"
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
        second = runbook("run", OVERVIEW, "--params", str(lab_params), env={"RUNBOOK_OPERATOR": "bob@ops"})
        assert first.poll() is None, ("alice's run ended before bob's started", first.stderr.read()[-2000:])
        assert second.returncode == 3, second.stderr
        assert "held by alice@ops" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert "manifest:" not in second.stdout  # refused before anything: no record of its own
    finally:
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
