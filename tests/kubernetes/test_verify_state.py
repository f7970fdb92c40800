"""Verification rows and the state folder, on canned answers (no cluster needed)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
import yaml
from kubernetes.client import V1Node, V1NodeCondition, V1NodeSpec, V1NodeStatus, V1ObjectMeta, V1Taint

from conftest import resolvable_lab_data, write_params
from runbooklib.errors import RunbookError
from runbooklib.kubernetes import bringup, state, verify
from runbooklib.params import load_params


@pytest.fixture
def params(tmp_path):
    data = resolvable_lab_data(tmp_path)
    data["kubernetes"]["state_dir"] = "state"
    data["inventory"]["hosts"][3]["labels"] = {"pool": "web"}
    data["inventory"]["hosts"][3]["taints"] = ["legacy=elk:NoSchedule"]
    return load_params(write_params(tmp_path, data))


def node(name, ready="True", roles=("worker",), labels=None, taints=()):
    all_labels = {f"node-role.kubernetes.io/{r}": "true" for r in roles} | (labels or {})
    return V1Node(metadata=V1ObjectMeta(name=name, labels=all_labels),
                  spec=V1NodeSpec(taints=[V1Taint(key=k, value=v, effect=e) for k, v, e in taints] or None),
                  status=V1NodeStatus(conditions=[V1NodeCondition(type="Ready", status=ready, reason="KubeletReady")]))


def statuses(rows):
    return {(r["check"], r["target"]): r["status"] for r in rows}


def test_a_node_with_its_roles_labels_and_taints_passes(params):
    w1 = params.host("w1")
    rows = verify.node_rows(w1, node("w1", labels={"pool": "web"}, taints=[("legacy", "elk", "NoSchedule")]))
    assert set(statuses(rows).values()) == {"ok"}


def test_each_node_difference_fails_with_what_differs(params):
    w1 = params.host("w1")
    rows = verify.node_rows(w1, node("w1", ready="Unknown", roles=("worker", "etcd"), labels={"pool": "db"}))
    by = {r["check"]: r for r in rows}
    assert by["node Ready"]["status"] == "fail" and "Ready=Unknown" in by["node Ready"]["detail"]
    assert by["node roles"]["status"] == "fail" and by["node roles"]["detail"] == "etcd,worker; expected worker"
    assert by["node labels"]["status"] == "fail" and "pool is 'db'" in by["node labels"]["detail"]
    assert by["node taints"]["status"] == "fail" and "legacy=elk:NoSchedule" in by["node taints"]["detail"]
    assert verify.node_rows(w1, None)[0]["detail"] == "no Node of this name: did it join?"


def test_rke2_roles_are_read_from_its_labels_and_its_server_only_taint(params):
    cp1, w1 = params.host("cp1"), params.host("w1")
    server = node("cp1", roles=("control-plane", "etcd", "master"), taints=[("CriticalAddonsOnly", "true", "NoExecute")])
    agent = node("w1", roles=(), labels={"pool": "web"}, taints=[("legacy", "elk", "NoSchedule")])
    assert set(statuses(verify.node_rows(cp1, server, "rke2")).values()) == {"ok"}
    assert set(statuses(verify.node_rows(w1, agent, "rke2")).values()) == {"ok"}
    untainted = node("cp1", roles=("control-plane", "etcd"))  # a server that also takes workloads
    roles = next(r for r in verify.node_rows(cp1, untainted, "rke2") if r["check"] == "node roles")
    assert roles["status"] == "fail" and roles["detail"] == "etcd,controlplane,worker; expected etcd,controlplane"


def test_etcd_rows_name_unhealthy_and_missing_members(params):
    etcd = params.hosts_with("etcd")
    health = [{"endpoint": f"https://{etcd[0].address}:2379", "health": True, "took": "2ms"},
              {"endpoint": f"https://{etcd[1].address}:2379", "health": False, "error": "context deadline exceeded"}]
    members = {"members": [{"name": f"etcd-{h.name}", "peerURLs": [f"https://{h.address}:2380"]} for h in etcd[:2]]
               + [{"name": "stranger", "peerURLs": ["https://192.0.2.9:2380"]}]}
    rows = verify.etcd_rows(params, "cp1", json.dumps(health), json.dumps(members))
    assert statuses(rows) == {("etcd member healthy", "cp1"): "ok", ("etcd member healthy", "cp2"): "fail",
                              ("etcd membership", "asked on cp1"): "fail"}
    membership = rows[-1]["detail"]
    assert "missing: cp3" in membership and "1 member(s) not in the parameters" in membership
    garbled = verify.etcd_rows(params, "cp1", "Error: no such container", "", "Error: No such container: etcd")
    assert garbled[0]["status"] == "fail" and "No such container" in garbled[0]["detail"]


def test_the_state_folder_is_created_private_and_refused_when_readable(params):
    d = state.state_dir(params, create=True)
    assert d.name == "state" and (d.stat().st_mode & 0o777) == 0o700
    d.chmod(0o755)
    with pytest.raises(RunbookError, match=r"readable by others .*chmod 700"):
        state.state_dir(params)


def test_the_state_folder_may_not_lie_in_the_archive(params, monkeypatch):
    monkeypatch.setenv("RUNBOOK_ARCHIVE", str(params.source_dir))
    with pytest.raises(RunbookError, match="inside the archive"):
        state.state_dir(params)


def test_a_kubeconfig_is_summarized_by_path_server_and_ca_fingerprint(tmp_path):
    key = tmp_path / "ca.key"
    cert = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                    "/CN=kube-ca", "-keyout", str(key), "-out", str(cert), "-days", "1"], check=True, capture_output=True)
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": {
        "server": "https://10.77.0.11:6443", "certificate-authority-data": base64.b64encode(cert.read_bytes()).decode()}}],
        "users": [{"name": "u", "user": {"client-key-data": "U0VDUkVU"}}]}))
    summary = state.summarize_kubeconfig(path)
    openssl = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                             check=True, capture_output=True, text=True).stdout
    assert summary.ca_sha256 == openssl.strip().split("=", 1)[1]
    assert summary.row() == {"kubeconfig": str(path), "server": "https://10.77.0.11:6443", "CA fingerprint (SHA-256)": summary.ca_sha256}
    assert "U0VDUkVU" not in json.dumps(summary.row())


def test_a_lost_state_file_blocks_the_plan_with_the_recovery(params):
    d = state.state_dir(params, create=True)
    (d / state.KUBECONFIG_RKE1).write_text("apiVersion: v1\n")
    steps = bringup.plan(params, None, converged=lambda: True)
    assert len(steps) == 1 and steps[0].command is None
    assert "INCIDENT" in steps[0].blocked and "full-cluster-state" in steps[0].blocked


def test_the_plan_writes_cluster_yml_then_runs_rke_and_a_converged_cluster_plans_nothing(params):
    steps = bringup.plan(params, None, converged=lambda: False)
    assert [s.operation for s in steps] == ["cluster.yml", "rke up"]
    assert steps[1].command.endswith(f"up --config {state.state_dir(params) / 'cluster.yml'}")
    assert "+cluster_name: lab" in steps[0].diff
    result = bringup.apply(params, None, steps[:1])
    assert result.ok and (state.state_dir(params) / "cluster.yml").stat().st_mode & 0o777 == 0o600
    assert bringup.plan(params, None, converged=lambda: True) == []
    assert [s.operation for s in bringup.plan(params, None, converged=lambda: False)] == ["rke up"]
    blocked = bringup.plan(params, None, converged=lambda: True, blockers=["w1: not ready (run 02-vm-baseline)"])
    assert blocked[0].command is None and "w1: not ready" in blocked[0].blocked


def test_the_recap_counts_each_kind_of_check_and_names_what_failed(params):
    rows = verify.node_rows(params.host("w1"), node("w1", ready="False", labels={"pool": "web"}, taints=[("legacy", "elk", "NoSchedule")]))
    rows += verify.node_rows(params.host("w2"), node("w2"))
    lines = {line["check"]: line for line in verify.recap(rows)}
    assert (lines["node Ready"]["ok"], lines["node Ready"]["failed"]) == (1, 1)
    assert lines["node Ready"]["failing"] == "w1: Ready=False (KubeletReady)"
    assert lines["node roles"]["failed"] == 0 and lines["node roles"]["failing"] == ""


def test_the_runbook_verdict_from_blockers_held_nodes_the_outcome_and_failed_checks():
    from runbooklib.phase.steps import Step

    held = [Step("w1", "rke2", "nothing on this node until it is ready", None, blocked="unreachable: timed out")]
    run_step = [Step("cp1", "rke2 service", "start", "systemctl enable --now rke2-server")]
    failed = bringup.BringUp(error="rke up exited 1: FATA[0003] boom")
    assert bringup.verdict(["lint x: f: bad"], [], "empty", None, []) == ("not ready", ["lint x: f: bad"])
    assert bringup.verdict([], held + run_step, "planned", None, []) == ("not ready", ["w1: unreachable: timed out"])
    assert bringup.verdict([], run_step, "planned", None, []) == ("planned", [])
    assert bringup.verdict([], held + run_step, "applied", bringup.BringUp(), ["node Ready w1: no Node"]) == (
        "incomplete", ["w1: unreachable: timed out", "node Ready w1: no Node"])
    assert bringup.verdict([], run_step, "applied", failed, []) == ("incomplete", ["rke up exited 1: FATA[0003] boom"])
    assert bringup.verdict([], [], "empty", None, []) == ("done", [])


def test_not_ready_names_the_failing_rules_or_the_unreachable_host(params):
    from runbooklib.phase.checks import Check, Status

    readiness = [Check("cp1", "swap off", Status.OK), Check("w1", "swap off", Status.FAIL, "swap on"),
                 Check("w1", "time sync", Status.FAIL, "chrony not running"), Check("w2", "swap off", Status.UNREACHABLE, "timed out")]
    hosts = [params.host(n) for n in ("cp1", "w1", "w2")]
    assert bringup.not_ready(readiness, hosts) == {"w1": "not ready: swap off, time sync (run 02-vm-baseline)",
                                                   "w2": "unreachable: timed out"}


def test_lint_blocking_lists_the_errors_only():
    from runbooklib.kubernetes.lint import Finding, blocking

    findings = [Finding("rke1-end-of-life", "warning", "p.yaml: kubernetes.distribution", "end of life", "move"),
                Finding("etcd-even", "error", "p.yaml: inventory.hosts", "2 etcd nodes", "use 3")]
    assert blocking(findings) == ["lint etcd-even: p.yaml: inventory.hosts: 2 etcd nodes"]


class Clock:
    """A fake clock that advances only when slept on."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def answers(*failures_per_ask):
    """``ask`` returning, on its n-th call, a row per name in the n-th tuple as failing (the last answer repeats)."""
    calls = []

    def ask():
        names = failures_per_ask[min(len(calls), len(failures_per_ask) - 1)]
        calls.append(names)
        return [verify.row("dns", "cluster", True)] + [verify.row("system workload", n, False, "0/2 available") for n in names]
    return ask, calls


def test_a_cluster_still_settling_is_asked_again_until_it_passes():
    clock, said = Clock(), []
    ask, calls = answers(("deployment/coredns",), ("deployment/coredns",), ())
    rows = verify.settled(ask, 60, said.append, clock=clock, sleep=clock.sleep)
    assert verify.failing(rows) == [] and len(calls) == 3 and clock.now == 10
    assert said[0].startswith("waiting up to 60 s") and "deployment/coredns: 0/2 available" in said[0]
    assert len(said) == 2 and said[-1] == "after 10 s: every check passes"  # the same failure is said once, not every 5 s


def test_a_cluster_that_never_settles_returns_the_last_failing_answer_within_the_bound():
    clock, said = Clock(), []
    ask, calls = answers(("deployment/coredns",))
    rows = verify.settled(ask, 30, said.append, clock=clock, sleep=clock.sleep)
    assert verify.failing(rows) == ["system workload deployment/coredns: 0/2 available"]
    assert clock.now == 30 and len(calls) == 7 and said[-1] == "after 30 s: 1 check(s) still fail"  # the last ask at the bound


def test_a_run_that_changed_nothing_asks_once_and_says_nothing():
    clock, said = Clock(), []
    ask, calls = answers(("deployment/coredns",), ())
    rows = verify.settled(ask, 0, said.append, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and said == [] and verify.failing(rows)


def test_a_failure_time_cannot_mend_is_not_waited_for():
    clock, said = Clock(), []
    calls = []

    def ask():
        calls.append(1)
        return [verify.row("system workload", "deployment/coredns", False, "0/2 available"),
                verify.row("node registered", "w9", False, "no Node of this name: did it join?")]
    rows = verify.settled(ask, 180, said.append, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.now == 0 and said == [] and len(verify.failing(rows)) == 2
