"""Readiness rules and baseline planning on facts (no hosts needed)."""

from __future__ import annotations


import pytest

from runbooklib.params import load_params
from runbooklib.vm import baseline, readiness
from runbooklib.vm.facts import CHRONY_DROPIN, SSHD_DROPIN, SYSCTL_FILE

from conftest import lab_data, set_path, write_params



def ready_facts(host: str, params) -> dict:
    """Facts of a host that passes every rule (the state the baseline leaves, plus Docker)."""
    h = params.host(host)
    key = "ssh-ed25519 AAAAtestkey deploy"
    return {
        "os_release": {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        "kernel": "6.1.0-28-amd64", "cpus": 4, "memory": {"total_mb": 8192, "available_mb": 7000},
        "disks": {"root": {"filesystem": "/dev/sda1", "size_gb": 120.0, "free_gb": 90.0, "mount": "/"}, "data": None,
                  "data_on_root": True},
        "swap": {"active": [], "fstab": []},
        "sysctls": {"live": dict(baseline.SYSCTLS), "configured": dict(baseline.SYSCTLS)},
        "modules": {"available": {"br_netfilter": True, "overlay": True}, "configured": ["br_netfilter", "overlay"]},
        "runtime": {"docker_engine": "26.1.4", "docker_client": "26.1.4", "containerd": "1.6.33"},
        "user": {"user": "root", "groups": ["root"]},
        "time_sync": {"running": "chronyd", "servers": ["10.77.0.1"], "chrony_installed": True},
        "hostname": {"running": h.name, "configured": h.name},
        "resolution": {o.name: str(o.address) for o in params.hosts if o.name != h.name},
        "listening": ["0.0.0.0:22"],
        "sshd": {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitrootlogin": "without-password"},
        "deploy_user": {"exists": True, "groups": ["deploy", "docker"], "authorized_keys": [key]},
        "managed_files": {},
    }


@pytest.fixture
def params(tmp_path):
    """The lab parameters with the deploy key given inline (tests must not depend on .lab/)."""
    data = lab_data()
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    return load_params(write_params(tmp_path, data))


def failing(params, host, facts):
    rows = readiness.evaluate(params, {host: facts})
    return {r["rule"]: r["reason"] for r in rows if r["host"] == host and r["status"] == "fail"}


def test_a_ready_host_passes_every_rule(params):
    assert failing(params, "w1", ready_facts("w1", params)) == {}


CASES = [
    ("os", "os_release", {"id": "debian", "version_id": "9", "pretty_name": "Debian GNU/Linux 9 (stretch)"}, "out of support"),
    ("docker engine", "runtime", {"docker_engine": None, "docker_client": "28.2.2", "containerd": None}, "only the client 28.2.2"),
    ("swap off", "swap", {"active": ["/dev/sda5"], "fstab": []}, "the kubelet refuses"),
    ("swap off", "swap", {"active": [], "fstab": ["/swapfile none swap sw 0 0"]}, "/etc/fstab turns it on at boot"),
    ("bridge sysctl", "sysctls", {"live": {"net.ipv4.ip_forward": "1"}, "configured": dict(baseline.SYSCTLS)}, "load br_netfilter first"),
    ("ip forward", "sysctls", {"live": dict(baseline.SYSCTLS), "configured": {"net.bridge.bridge-nf-call-iptables": "1"}}, "a reboot loses it"),
    ("kernel modules", "modules", {"available": {"br_netfilter": False, "overlay": True}, "configured": []}, "modprobe"),
    ("root disk", "disks", {"root": {"size_gb": 40.0, "free_gb": 30.0, "mount": "/"}}, "below the 100 GB"),
    ("root disk", "disks", {"root": {"size_gb": 200.0, "free_gb": 3.0, "mount": "/"}}, "only 3.0 GB free"),
    ("cpu and memory", "cpus", 1, "1 CPUs, below the 2"),
    ("hostname", "hostname", {"running": "vm-7f3a", "configured": "vm-7f3a"}, "the inventory says 'w1'"),
    ("name resolution", "resolution", {}, "cp1->nothing"),
    ("time sync", "time_sync", {"running": None, "servers": [], "chrony_installed": True}, "no time synchronisation"),
    ("ssh hardening", "sshd", {"passwordauthentication": "yes", "permitrootlogin": "yes"}, "password logins are allowed"),
    ("deploy user", "deploy_user", {"exists": True, "groups": ["deploy"], "authorized_keys": []}, "not in group(s) docker"),
    ("docker group", "user", {"user": "deploy", "groups": ["deploy"]}, "not in the docker group"),
]


@pytest.mark.parametrize("rule,fact,value,fragment", CASES, ids=[f"{c[0]}: {c[3]}" for c in CASES])
def test_one_broken_fact_fails_one_rule(params, rule, fact, value, fragment):
    facts = ready_facts("w1", params)
    facts[fact] = value
    fails = failing(params, "w1", facts)
    if rule == "docker engine":  # no engine: the version cannot be checked either, but it is ignored here
        fails.pop("docker version", None)
    assert list(fails) == [rule]
    assert fragment in fails[rule]


def test_docker_version_is_checked_unless_ignored(tmp_path, params):
    facts = ready_facts("w1", params)
    facts["runtime"] = {"docker_engine": "28.2.2"}
    assert failing(params, "w1", facts) == {}  # the lab sets ignore_docker_version, like the seed
    data = lab_data()
    set_path(data, "kubernetes.ignore_docker_version", False)
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    strict = load_params(write_params(tmp_path, data, "strict.yaml"))
    assert "not among the versions RKE1 accepts" in failing(strict, "w1", facts)["docker version"]


def test_rke1_rules_do_not_apply_to_rke2_or_non_kubernetes_hosts(tmp_path, params):
    facts = ready_facts("db1", params)
    facts["runtime"] = {"docker_engine": None}
    facts["swap"] = {"active": ["/dev/sda5"], "fstab": []}
    rows = {r["rule"]: r["status"] for r in readiness.evaluate(params, {"db1": facts}) if r["host"] == "db1"}
    assert rows["docker engine"] == rows["swap off"] == "n/a"  # a database VM is not a Kubernetes node
    data = lab_data()
    set_path(data, "kubernetes.distribution", "rke2")
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    rke2 = load_params(write_params(tmp_path, data, "rke2.yaml"))
    w1 = ready_facts("w1", rke2)
    w1["runtime"] = {"docker_engine": None}
    assert failing(rke2, "w1", w1) == {}


def test_unreachable_hosts_are_never_guessed(params):
    rows = readiness.evaluate(params, {}, {"w1": "w1: connection refused"})
    assert {r["status"] for r in rows if r["host"] == "w1"} <= {"unreachable", "n/a"}
    assert any(r["reason"] == "w1: connection refused" for r in rows if r["host"] == "w1")


# -- baseline planning -----------------------------------------------------------------------------

def converged(params, host):
    """Facts as the baseline leaves a host: its own files in place, the cluster block in /etc/hosts."""
    f = ready_facts(host, params)
    f["managed_files"] = {**baseline.desired_files(params),
                          "/etc/hosts": "127.0.0.1 localhost\n" + baseline.hosts_block(params),
                          "/etc/hostname": host + "\n"}
    return f


def test_a_converged_host_plans_nothing(params):
    assert baseline.plan(params, {"w1": converged(params, "w1")}) == []


def test_plan_on_a_fresh_host_lists_every_operation_with_rollback(params):
    fresh = ready_facts("w1", params)
    fresh.update(swap={"active": ["/dev/sda5"], "fstab": ["/dev/sda5 none swap sw 0 0"]},
                 sysctls={"live": {}, "configured": {}}, deploy_user={"exists": False, "groups": [], "authorized_keys": []},
                 time_sync={"running": None, "servers": [], "chrony_installed": True},
                 hostname={"running": "vm-1", "configured": "vm-1"},
                 managed_files={"/etc/hosts": "127.0.0.1 localhost\n"})
    steps = baseline.plan(params, {"w1": fresh})
    assert [s.operation for s in steps] == (
        ["swap disabled"] * 2 + ["kubernetes sysctls"] * 2 + ["kernel modules"] + ["hostname"] * 2 + ["cluster hosts"]
        + ["ssh hardened"] + ["deploy user"] * 3 + ["time synced"] * 2)
    assert all(s.command and s.rollback for s in steps)


def test_hosts_block_is_replaced_not_duplicated(params):
    f = converged(params, "w1")
    f["managed_files"]["/etc/hosts"] = ("127.0.0.1 localhost\n" + baseline.HOSTS_BEGIN + "\n10.0.0.9 old\n"
                                        + baseline.HOSTS_END + "\n::1 ip6-localhost\n")
    (step,) = baseline.plan(params, {"w1": f})
    assert step.operation == "cluster hosts"


def test_missing_chrony_is_a_blocked_step(params):
    f = converged(params, "w1")
    f["time_sync"] = {"running": None, "servers": [], "chrony_installed": False}
    (step,) = baseline.plan(params, {"w1": f})
    assert step.command is None and "install it from your mirror" in step.blocked


def test_write_file_survives_any_content():
    import subprocess

    content = "quotes ' \" $HOME `x` \\ and no final newline"
    cmd = baseline.write_file("/tmp/runbook-test-write/f", content)
    subprocess.run(["sh", "-c", cmd], check=True)
    try:
        assert open("/tmp/runbook-test-write/f").read() == content
    finally:
        subprocess.run(["rm", "-rf", "/tmp/runbook-test-write"])


def test_fixed_and_problems_summaries():
    before = [{"host": "w1", "rule": "swap off", "status": "fail"}, {"host": "w1", "rule": "time sync", "status": "fail"},
              {"host": "w2", "rule": "os", "status": "ok"}]
    after = [{"host": "w1", "rule": "swap off", "status": "ok"}, {"host": "w1", "rule": "time sync", "status": "fail"}]
    assert readiness.fixed(before, after) == [("w1", "swap off")]
    results = {"w1": baseline.HostApply("w1", applied=[]), "w2": baseline.HostApply("w2", error="w2: ssh hardened failed")}
    assert baseline.problems(results, {"w3": "w3: connection refused"}) == [
        "w2: ssh hardened failed", "w3: unreachable: w3: connection refused"]
    assert baseline.result_rows(results)[1] == {"host": "w2", "steps applied": 0, "result": "w2: ssh hardened failed"}


def test_desired_files_are_what_the_readiness_rules_accept(params):
    """The files the baseline writes must satisfy the rules that send engineers to it."""
    files = baseline.desired_files(params)
    assert "net.bridge.bridge-nf-call-iptables = 1" in files[SYSCTL_FILE]
    assert "PasswordAuthentication no" in files[SSHD_DROPIN]
    assert files[CHRONY_DROPIN] == "# NTP servers (written by runbooklib)\nserver 10.77.0.1 iburst\n"
    from runbooklib.vm.facts import parse_sysctls

    configured = parse_sysctls("--configured--\n" + files[SYSCTL_FILE])["configured"]
    assert configured == baseline.SYSCTLS


def test_rke1_is_flagged_end_of_life(params, tmp_path):
    assert "RKE1 reached end of life on 2025-07-31" in readiness.lifecycle_warning(params)
    data = lab_data()
    set_path(data, "kubernetes.distribution", "rke2")
    assert readiness.lifecycle_warning(load_params(write_params(tmp_path, data, "rke2.yaml"))) is None
