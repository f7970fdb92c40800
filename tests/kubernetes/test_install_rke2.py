"""RKE2's install plan from facts, pinned as data, and the artifact folder checked before any node sees it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, resolvable_lab_data, write_params
from runbooklib.errors import RunbookError
from runbooklib.kubernetes import install_rke2, rke2
from runbooklib.kubernetes.spec import spec_from_params
from runbooklib.params import load_params

CASE = yaml.safe_load((ROOT / "tests" / "data" / "kubernetes" / "rke2-install-plan.yaml").read_text())


@pytest.fixture
def params(tmp_path):
    resolvable = resolvable_lab_data(tmp_path)  # the seed's secrets, made resolvable here
    data = yaml.safe_load((ROOT / CASE["params"]).read_text())
    data["ssh"]["key"] = resolvable["ssh"]["key"]
    data["ssh"]["known_hosts"] = resolvable["ssh"]["known_hosts"]
    data["vm"]["deploy_user"]["authorized_key"] = resolvable["vm"]["deploy_user"]["authorized_key"]
    folder = tmp_path / "artifacts"
    folder.mkdir()
    (folder / "rke2.linux-amd64.tar.gz").write_bytes(b"not really a tarball")
    (folder / "install.sh").write_text("#!/bin/sh\n")
    sha = hashlib.sha256(b"not really a tarball").hexdigest()
    (folder / "sha256sum-amd64.txt").write_text(f"{sha}  rke2.linux-amd64.tar.gz\n")
    data["kubernetes"]["artifacts"] = "artifacts"
    return load_params(write_params(tmp_path, data))


def test_a_fresh_cluster_plans_every_step_in_rke2_order(params):
    artifacts = install_rke2.load_artifacts(params)
    steps = install_rke2.plan_rke2(params, {}, {}, artifacts)
    expected = [[h, op, cmd.replace("{sha}", artifacts.tarball_sha256)] for h, op, cmd in CASE["steps"]]
    assert [[s.host, s.operation, s.command] for s in steps] == expected
    assert [h for group in rke2.install_order(spec_from_params(params)) for h in group] == ["cp1", "w1"]


def test_a_converged_node_plans_nothing_and_a_stopped_service_only_its_start(params):
    artifacts = install_rke2.load_artifacts(params)
    configs = rke2.render_rke2_configs(spec_from_params(params))
    token = hashlib.sha256(b"K10-the-first-servers-token\n").hexdigest()  # facts carry checksums, never a token
    facts = {name: {"artifact": artifacts.tarball_sha256, "config": hashlib.sha256(text.encode()).hexdigest(), "token": token,
                    "server": "active", "agent": "active"} for name, text in configs.items()}
    facts["cp1"]["node_token"] = token
    assert install_rke2.plan_rke2(params, facts, {}, artifacts) == []
    facts["cp1"]["node_token"] = hashlib.sha256(b"K10-a-rebuilt-first-server\n").hexdigest()  # a stale token is replaced
    assert [(s.host, s.operation, s.command) for s in install_rke2.plan_rke2(params, facts, {}, artifacts)] == [
        ("w1", "join token", "token"), ("w1", "rke2 service", "systemctl restart rke2-agent")]
    facts["cp1"]["node_token"] = token
    facts["w1"]["agent"] = "inactive"
    assert [(s.host, s.command) for s in install_rke2.plan_rke2(params, facts, {}, artifacts)] == [("w1", "systemctl enable --now rke2-agent")]
    blocked = install_rke2.plan_rke2(params, facts, {"w1": "connection refused"}, artifacts)
    assert [(s.host, s.command, s.blocked) for s in blocked] == [("w1", None, "unreachable: connection refused")]


def test_artifacts_already_staged_are_not_copied_again_only_installed(params, tmp_path):
    """A run that stopped after the copy and before the install (a VM stopped, a signal): the re-run installs from the
    files already on the node and does not copy them again; a staged file that differs (another release, damaged) is copied."""
    import subprocess

    artifacts = install_rke2.load_artifacts(params)
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in artifacts.files:
        (staged / name).write_bytes((artifacts.folder / name).read_bytes())
    command = install_rke2.STAGED.replace(install_rke2.REMOTE_ARTIFACTS, str(staged))  # the node's own shell command, here
    read = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()
    assert read == artifacts.staged_sum
    facts = {"w1": {"staged": read}}
    w1 = [s.operation for s in install_rke2.plan_rke2(params, facts, {}, artifacts) if s.host == "w1"]
    assert w1 == ["rke2 install", "rke2 config", "join token", "rke2 service"]
    (staged / install_rke2.INSTALLER).write_text("#!/bin/sh\n# another release\n")
    facts["w1"]["staged"] = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()
    w1 = [s.operation for s in install_rke2.plan_rke2(params, facts, {}, artifacts) if s.host == "w1"]
    assert w1[:2] == ["rke2 artifacts", "rke2 install"]
    assert [s.operation for s in install_rke2.plan_rke2(params, {}, {}, artifacts) if s.host == "cp1"][:2] == ["rke2 artifacts", "rke2 install"]


def test_damaged_or_missing_artifacts_are_refused_naming_the_file(params):
    folder = Path(params.source_dir) / "artifacts"
    (folder / "rke2.linux-amd64.tar.gz").write_bytes(b"tampered")
    with pytest.raises(RunbookError, match=r"rke2.linux-amd64.tar.gz: its SHA-256 is .* but sha256sum-amd64.txt says"):
        install_rke2.load_artifacts(params)
    (folder / "install.sh").unlink()
    with pytest.raises(RunbookError, match="lacks install.sh"):
        install_rke2.load_artifacts(params)


def test_a_changed_config_is_shown_as_a_diff_against_the_nodes_file(params):
    import base64

    artifacts = install_rke2.load_artifacts(params)
    configs = rke2.render_rke2_configs(spec_from_params(params))
    old = configs["w1"].replace("node-ip: 10.77.0.21", "node-ip: 10.77.0.99")
    facts = {"w1": {"artifact": artifacts.tarball_sha256, "config_b64": base64.b64encode(old.encode()).decode(), "agent": "active"}}
    step = next(s for s in install_rke2.plan_rke2(params, facts, {}, artifacts) if s.host == "w1" and s.operation == "rke2 config")
    changed = [line for line in step.diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changed == ["-node-ip: 10.77.0.99", "+node-ip: 10.77.0.21"]


class _Answers:
    """A fleet whose host answers ``run_on`` with the given results in turn (what a VM or a cut link would say)."""

    def __init__(self, *results):
        self.results, self.asked = list(results), 0

    def run_on(self, host, command, timeout=None, idle=None):
        self.asked += 1
        return self.results.pop(0)


def test_waiting_for_a_node_stops_when_the_host_stops_answering_not_after_the_whole_wait(tmp_path):
    from runbooklib.ssh import HostResult

    host = next(h for h in load_params(write_params(tmp_path, resolvable_lab_data(tmp_path))).hosts if h.name == "w1")
    inactive = HostResult("w1", False, stderr="", exit_code=3, error="'systemctl' exited 3: ")
    cut = HostResult("w1", False, error="w1: command did not finish within 20 s (ssh.command_timeout); the host stopped answering")
    up = HostResult("w1", True, exit_code=0)
    # a service still starting ("inactive", an exit code) is waited for; one lost exchange is forgiven
    fleet = _Answers(inactive, cut, inactive, up)
    assert install_rke2.wait_for_node(fleet, host, False, timeout=60).ok and fleet.asked == 4
    # two exchanges in a row without an answer: the host is named at once, not after the 60 s wait
    fleet = _Answers(inactive, cut, cut, up)
    r = install_rke2.wait_for_node(fleet, host, False, timeout=60)
    assert not r.ok and fleet.asked == 3
    assert r.error.startswith("w1 stopped answering while waiting for rke2-agent (w1: command did not finish within 20 s")
