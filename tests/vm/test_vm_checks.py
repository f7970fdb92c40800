"""Readiness rules on facts (no hosts needed)."""

from __future__ import annotations

import pytest

from conftest import lab_data, set_path, write_params
from runbooklib.params import load_params
from runbooklib.phase.checks import Check, Status, fixed, matrix_rows, readiness_verdict, recap_by_host, recap_by_rule
from runbooklib.phase.facts import Gathered
from runbooklib.vm import checks, facts, operations
from runbooklib.vm.facts import CHRONY_DEFAULTS, CHRONY_DROPIN, MODULES_FILE, SSHD_DROPIN, SYSCTL_FILE


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
        "sysctls": {"live": dict(operations.SYSCTLS), "configured": dict(operations.SYSCTLS)},
        "modules": {"available": {"br_netfilter": True, "overlay": True}, "configured": ["br_netfilter", "overlay"]},
        "runtime": {"docker_engine": "26.1.4", "docker_client": "26.1.4", "containerd": "1.6.33"},
        "user": {"user": "root", "groups": ["root"]},
        "time_sync": {"running": "chronyd", "servers": ["10.77.0.1"], "chrony_installed": True, "service": "active"},
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


def failing(params, host, host_facts):
    results = checks.evaluate(params, Gathered({host: host_facts}, {}))
    return {c.rule: c.reason for c in results if c.host == host and c.status is Status.FAIL}


def test_a_ready_host_passes_every_rule(params):
    assert failing(params, "w1", ready_facts("w1", params)) == {}


CASES = [
    ("os", "os_release", {"id": "debian", "version_id": "9", "pretty_name": "Debian GNU/Linux 9 (stretch)"}, "out of support"),
    ("docker engine", "runtime", {"docker_engine": None, "docker_client": "28.2.2", "containerd": None}, "only the client 28.2.2"),
    ("swap off", "swap", {"active": ["/dev/sda5"], "fstab": []}, "the kubelet refuses"),
    ("swap off", "swap", {"active": [], "fstab": ["/swapfile none swap sw 0 0"]}, "/etc/fstab turns it on at boot"),
    ("bridge sysctl", "sysctls", {"live": {"net.ipv4.ip_forward": "1"}, "configured": dict(operations.SYSCTLS)}, "load br_netfilter first"),
    ("ip forward", "sysctls", {"live": dict(operations.SYSCTLS), "configured": {"net.bridge.bridge-nf-call-iptables": "1"}}, "a reboot loses it"),
    ("kernel modules", "modules", {"available": {"br_netfilter": False, "overlay": True}, "configured": []}, "modprobe"),
    ("root disk", "disks", {"root": {"filesystem": "/dev/sda1", "size_gb": 40.0, "free_gb": 30.0, "mount": "/"}, "data": None, "data_on_root": True}, "below the 100 GB"),
    ("root disk", "disks", {"root": {"filesystem": "/dev/sda1", "size_gb": 200.0, "free_gb": 3.0, "mount": "/"}, "data": None, "data_on_root": True}, "only 3.0 GB free"),
    ("cpu and memory", "cpus", 1, "1 CPUs, below the 2"),
    ("hostname", "hostname", {"running": "vm-7f3a", "configured": "vm-7f3a"}, "the inventory says 'w1'"),
    ("name resolution", "resolution", {}, "cp1->nothing"),
    ("time sync", "time_sync", {"running": None, "servers": [], "chrony_installed": True, "service": "inactive"}, "no time synchronisation"),
    ("ssh hardening", "sshd", {"passwordauthentication": "yes", "permitrootlogin": "yes"}, "password logins are allowed"),
    ("deploy user", "deploy_user", {"exists": True, "groups": ["deploy"], "authorized_keys": []}, "not in group(s) docker"),
    ("docker group", "user", {"user": "deploy", "groups": ["deploy"]}, "not in the docker group"),
]


@pytest.mark.parametrize("rule,fact,value,fragment", CASES, ids=[f"{c[0]}: {c[3]}" for c in CASES])
def test_one_broken_fact_fails_one_rule(params, rule, fact, value, fragment):
    host_facts = ready_facts("w1", params)
    host_facts[fact] = value
    fails = failing(params, "w1", host_facts)
    if rule == "docker engine":  # no engine: the version cannot be checked either, but it is ignored here
        fails.pop("docker version", None)
    assert list(fails) == [rule]
    assert fragment in fails[rule]


def test_docker_version_is_checked_unless_ignored(tmp_path, params):
    host_facts = ready_facts("w1", params)
    host_facts["runtime"] = {"docker_engine": "28.2.2", "docker_client": "28.2.2", "containerd": None}
    assert failing(params, "w1", host_facts) == {}  # the lab sets ignore_docker_version, like the seed
    data = lab_data()
    set_path(data, "kubernetes.ignore_docker_version", False)
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    strict = load_params(write_params(tmp_path, data, "strict.yaml"))
    assert "not among the versions RKE1 accepts" in failing(strict, "w1", host_facts)["docker version"]


def test_rke1_rules_do_not_apply_to_rke2_or_non_kubernetes_hosts(tmp_path, params):
    db1 = ready_facts("db1", params)
    db1["runtime"] = {"docker_engine": None, "docker_client": None, "containerd": None}
    db1["swap"] = {"active": ["/dev/sda5"], "fstab": []}
    rows = {c.rule: c.status for c in checks.evaluate(params, Gathered({"db1": db1}, {})) if c.host == "db1"}
    assert rows["docker engine"] == rows["swap off"] == Status.NA  # a database VM is not a Kubernetes node
    data = lab_data()
    set_path(data, "kubernetes.distribution", "rke2")
    set_path(data, "vm.deploy_user.authorized_key", "ssh-ed25519 AAAAtestkey deploy")
    rke2 = load_params(write_params(tmp_path, data, "rke2.yaml"))
    w1 = ready_facts("w1", rke2)
    w1["runtime"] = {"docker_engine": None, "docker_client": None, "containerd": None}
    assert failing(rke2, "w1", w1) == {}


def test_unreachable_hosts_are_never_guessed(params):
    results = checks.evaluate(params, Gathered({}, {"w1": "w1: connection refused"}))
    assert {c.status for c in results if c.host == "w1"} <= {Status.UNREACHABLE, Status.NA}
    assert any(c.reason == "w1: connection refused" for c in results if c.host == "w1")


def test_an_unreachable_host_is_one_recap_line_and_one_matrix_cell(params):
    gathered = Gathered({"w1": ready_facts("w1", params)}, {"w2": "w2: connection refused"})
    results = [c for c in checks.evaluate(params, gathered) if c.host in ("w1", "w2")]
    recap = {r["host"]: r for r in recap_by_host(results)}
    assert recap["w2"]["verdict"] == "unreachable" and recap["w2"]["first problem"] == "w2: connection refused"
    assert recap["w1"]["verdict"] == "ready" and recap["w1"]["failed"] == 0
    row = next(r for r in matrix_rows(results) if r["host"] == "w2")
    assert [v for k, v in row.items() if k != "host" and v] == ["unreachable"]
    assert recap_by_rule(results) == []  # an unreachable host is not counted as failing rules


def test_a_fact_that_failed_to_parse_makes_its_rules_unjudgeable(params):
    host_facts = ready_facts("w1", params)
    gathered = Gathered({"w1": host_facts}, {}, {"w1": {"swap": "cannot parse: ValueError: junk"}})
    bad = {c.rule: c.reason for c in checks.evaluate(params, gathered) if c.host == "w1" and c.status is Status.FAIL}
    assert bad == {"swap off": "cannot judge: swap: cannot parse: ValueError: junk"}


def test_every_rule_names_facts_that_exist_and_fixes_that_are_operations():
    names = {op.name for op in operations.OPERATIONS}
    for rule in checks.RULES:
        assert set(rule.needs) <= set(facts.FACTS_BY_NAME), rule.name
        assert set(rule.fixed_by) <= names, rule.name


def test_fixed_lists_what_failed_before_and_passes_now():
    before = [Check("w1", "swap off", Status.FAIL), Check("w1", "time sync", Status.FAIL), Check("w2", "os", Status.OK)]
    after = [Check("w1", "swap off", Status.OK), Check("w1", "time sync", Status.FAIL)]
    assert fixed(before, after) == [("w1", "swap off")]


def test_desired_files_pass_the_rules_that_send_engineers_to_the_baseline(params):
    """Parse what the baseline writes with the real parsers; the rules it fixes must then pass."""
    files = operations.desired_files(params)
    host_facts = ready_facts("w1", params)
    host_facts["sysctls"] = facts.parse_sysctls("net/bridge/bridge-nf-call-iptables=1\nnet/ipv4/ip_forward=1\n"
                                                "--configured--\n" + files[SYSCTL_FILE])
    host_facts["modules"] = facts.parse_modules("br_netfilter 32768 0 - Live 0x0\noverlay 151552 0 - Live 0x0\n"
                                                "--fs--\n--bridge--\npresent\n--configured--\n" + files[MODULES_FILE])
    host_facts["sshd"] = effective_sshd_settings(files[SSHD_DROPIN])  # what the real sshd makes of it
    assert failing(params, "w1", host_facts) == {}
    assert files[CHRONY_DROPIN] == "# NTP servers (written by runbooklib)\nserver 10.77.0.1 iburst\n"
    assert "-x" in files[CHRONY_DEFAULTS]  # the lab shares the kernel clock (vm.time_sync_controls_clock: false)


def test_rke1_is_flagged_end_of_life(params, tmp_path):
    assert "RKE1 reached end of life on 2025-07-31" in checks.lifecycle_warning(params)
    data = lab_data()
    set_path(data, "kubernetes.distribution", "rke2")
    assert checks.lifecycle_warning(load_params(write_params(tmp_path, data, "rke2.yaml"))) is None


def effective_sshd_settings(dropin: str) -> dict:
    """What the real sshd makes of the drop-in (``sshd -T``), read by the fact's own parser."""
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or os.geteuid() != 0:
        pytest.skip("needs sshd and root (`make setup` installs openssh-server)")
    with tempfile.TemporaryDirectory() as d:
        key = Path(d) / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (Path(d) / "dropin.conf").write_text(dropin)
        (Path(d) / "sshd_config").write_text(f"Include {d}/dropin.conf\nHostKey {key}\nPasswordAuthentication yes\n")
        # sshd -T wants its privilege separation directory: give it one in a private /run, not the machine's
        script = f"mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec {sshd} -T -f {d}/sshd_config"
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True)
    assert done.returncode == 0, f"sshd rejects the drop-in: {done.stderr}"
    wanted = ("passwordauthentication", "permitrootlogin", "kbdinteractiveauthentication", "pubkeyauthentication")
    return facts.parse_sshd("".join(line + "\n" for line in done.stdout.splitlines() if line.split(" ")[0] in wanted))


def test_the_readiness_verdict_names_each_host_and_why():
    checks_ = [Check("w1", "swap off", Status.FAIL, "swap is on"), Check("w1", "time sync", Status.FAIL, "none"),
               Check("w2", "swap off", Status.OK), Check("db1", "os", Status.UNREACHABLE, "db1: refused"),
               Check("db1", "swap off", Status.NA)]
    assert readiness_verdict(checks_) == ("not ready", ["db1: unreachable: db1: refused", "w1: not ready (swap off, time sync)"])
    assert readiness_verdict([Check("w2", "swap off", Status.OK), Check("db1", "swap off", Status.NA)]) == ("ready", [])
