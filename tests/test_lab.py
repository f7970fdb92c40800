"""The lab against itself: real namespaces, real sshd, real SSH from the library's fleet layer.

Runs as root on Linux (CI does). Each test module builds its own lab instance in a temporary folder
with its own name prefix and subnet, so a developer's running lab is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from conftest import lab_identity, require_lab, running_lab
from runbooklab import Lab, LabError
from runbooklib.params import load_params
from runbooklib.ssh import Fleet

require_lab()
NET = lab_identity("rbtest", "10.78.0.0/24")[1].rsplit(".", 1)[0]  # the lab subnet's first three octets


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab"), "rbtest", "10.78.0.0/24") as lab:
        yield lab


@pytest.fixture
def fleet(lab):
    f = Fleet.from_params(load_params(lab.params_file))
    yield f
    f.close()


def host(fleet, name):
    return next(h for h in fleet.hosts if h.name == name)


def test_every_vm_answers_with_its_pinned_key(lab, fleet):
    results = fleet.run("hostname")
    assert results.ok, results.failed
    assert {h: r.stdout.strip() for h, r in results.items()} == {"cp1": "cp1", "w1": "w1", "db1": "db1", "edge1": "edge1"}
    pins = lab.known_hosts.read_text().splitlines()
    assert sorted(p.split()[0] for p in pins) == [f"{NET}.11", f"{NET}.21", f"{NET}.31", f"{NET}.41"]


def test_fleet_ticks_once_per_host(lab):
    ticks = []

    class Bar:
        def __init__(self, total, desc):
            ticks.append(("open", total, desc))

        def update(self, n):
            ticks.append(("tick", n))

        def close(self):
            ticks.append(("close",))

    with Fleet.from_params(load_params(lab.params_file), progress=Bar) as f:
        assert f.run("true", desc="noop").ok
    assert ticks == [("open", 4, "noop"), *[("tick", 1)] * 4, ("close",)]


def test_params_file_written_by_up_is_valid(lab):
    params = load_params(lab.params_file)
    assert params.environment.kind == "lab"
    assert str(params.host("db1").address) == f"{NET}.31"
    assert params.path(params.ssh.known_hosts) == lab.known_hosts


def test_second_up_changes_nothing(lab):
    assert lab.up(profile="small") == []


def test_files_written_in_one_vm_stay_there(lab, fleet):
    marker = f"/etc/lab-isolation-{secrets.token_hex(4)}"
    assert fleet.run_on(host(fleet, "cp1"), f"echo cp1 > {marker}").ok
    assert fleet.run_on(host(fleet, "cp1"), f"cat {marker}").stdout.strip() == "cp1"
    other = fleet.run_on(host(fleet, "w1"), f"test -e {marker}")
    assert other.exit_code == 1, "another VM sees the file"
    assert not Path(marker).exists(), "the host sees the file"


def test_roots_shell_startup_files_are_a_fresh_debian_vms_not_the_lab_machines(lab, fleet):
    """A command over SSH runs root's ~/.bashrc: the VM's is Debian's (base-files), whatever the machine running the
    lab has in its own (here pyenv's set-up, whose rehash waited on a lock a stopped VM left behind)."""
    debian = {f: (Path("/usr/share/base-files") / f"dot.{f}") for f in ("bashrc", "profile")}
    r = fleet.run_on(host(fleet, "w1"), "cat ~/.bashrc; echo ---; cat ~/.profile; echo ---; ls -A ~").check()
    bashrc, profile, listing = r.stdout.split("---\n")
    assert bashrc == (debian["bashrc"].read_text() if debian["bashrc"].exists() else "")
    assert profile == (debian["profile"].read_text() if debian["profile"].exists() else "")
    assert not {".bash_profile", ".bash_login", ".bash_logout"} & set(listing.split())
    assert "PYENV" not in fleet.run_on(host(fleet, "w1"), "env").check().stdout


def test_vms_have_their_own_pid_namespace_and_no_route_out(lab, fleet):
    r = fleet.run_on(host(fleet, "w1"), "cat /proc/1/comm; ip route").check()
    first, *routes = r.stdout.strip().splitlines()
    assert first == "sshd"  # sshd is PID 1 of the VM
    assert not any(line.startswith("default") for line in routes)


def test_daemon_started_over_ssh_survives_the_session_and_dies_with_the_vm(lab, fleet):
    db1 = host(fleet, "db1")
    started = fleet.run_on(db1, "setsid sleep 3600 </dev/null >/dev/null 2>&1 & echo $!").check()
    inner_pid = started.stdout.strip()
    fleet.close()  # the SSH session ends
    again = Fleet.from_params(load_params(lab.params_file))
    try:
        assert again.run_on(db1, f"kill -0 {inner_pid} && cat /proc/{inner_pid}/comm").check().stdout.strip() == "sleep"
    finally:
        again.close()
    assert "sleep" in [s.processes for s in lab.status() if s.name == "db1"][0]
    lab.stop("db1")
    assert lab.pids("db1") == []
    lab.start("db1")
    assert "sleep" not in [s.processes for s in lab.status() if s.name == "db1"][0]


def test_output_written_after_the_command_exits_is_whole_and_a_held_stdout_is_waited_for_briefly(lab, fleet):
    # sshd may report the exit status before the last output it still reads from the command's pipes: the
    # result is whole only at end of file. A process left holding stdout never ends it: waited for 2 s only.
    import time

    for delay in ("0.05", "0.2", "0.3", "0.5", "1"):  # the race is timing-dependent: several delays
        late = fleet.run_on(host(fleet, "w1"), f"(sleep {delay}; echo late) & echo early")
        assert late.ok and late.stdout.split() == ["early", "late"], (delay, late)
    t0 = time.monotonic()
    held = fleet.run_on(host(fleet, "w1"), "sleep 30 & echo started")
    assert held.ok and held.stdout.strip() == "started" and time.monotonic() - t0 < 5


def test_rekey_makes_that_vm_fail_with_the_host_key_error(lab, fleet):
    lab.rekey("w1")
    results = fleet.run("hostname")
    assert set(results.failed) == {"w1"}
    error = results["w1"].error
    assert error.startswith(f"w1: host key at {NET}.21:22 does not match the one pinned in")
    assert "Nothing was run on this host" in error
    assert all(results[h].ok for h in ("cp1", "db1", "edge1"))
    actions = lab.up(profile="small")  # the lab re-pins the key it provisioned
    assert actions == ["w1: pinned its current host key"]
    fresh = Fleet.from_params(load_params(lab.params_file))
    try:
        assert fresh.run_on(host(fresh, "w1"), "true").ok
    finally:
        fresh.close()


def test_stopped_vm_fails_alone_with_a_clear_error(lab, fleet):
    lab.stop("edge1")
    try:
        results = fleet.run("uptime")
        assert set(results.failed) == {"edge1"}
        assert f"edge1: connection refused at {NET}.41:22" in results["edge1"].error
        status = {s.name: s for s in lab.status()}
        assert status["edge1"].state == "stopped" and not status["edge1"].ssh
    finally:
        assert lab.start("edge1") is True
    assert fleet.run_on(host(fleet, "edge1"), "true").ok


def test_a_vm_stopped_under_a_command_is_a_lost_connection_not_an_exit_code(lab, fleet):
    """The host dies mid-command: there is no exit status (paramiko's -1), so the error says the connection was lost."""
    import threading

    result = {}
    running = threading.Thread(target=lambda: result.update(r=fleet.run_on(host(fleet, "db1"), "sleep 30")))
    running.start()
    try:
        time.sleep(1.5)  # the command has started
        lab.stop("db1")
        running.join(timeout=30)
        assert not running.is_alive(), "the command outlived its VM"
    finally:
        assert lab.start("db1") is True
    r = result["r"]
    assert not r.ok and r.exit_code is None, (r.exit_code, r.error)
    assert r.error.startswith("db1: connection lost during the command") and "exited -1" not in r.error, r.error
    assert fleet.run_on(host(fleet, "db1"), "true").ok  # the dead connection was dropped: the next command reconnects


def test_cut_link_times_out_and_heal_restores(lab, fleet):
    lab.cut("cp1")
    try:
        r = fleet.run_on(host(fleet, "cp1"), "true")
        assert not r.ok and r.error.startswith(f"cp1: no answer on {NET}.11:22 within")
        assert {s.name: s.link for s in lab.status()}["cp1"] == "down"
    finally:
        lab.heal("cp1")
    assert fleet.run_on(host(fleet, "cp1"), "true").ok


def test_up_recovers_a_lab_whose_processes_were_killed(lab):
    for vm in lab.vms():
        for pid in lab.pids(vm):
            with contextlib.suppress(ProcessLookupError):  # a process may exit on its own meanwhile
                os.kill(pid, 9)  # as when every process on the machine is stopped before CI runs
    assert all(s.state == "stopped" for s in lab.status())
    actions = lab.up(profile="small")
    assert sorted(a.split(":")[0] for a in actions if "booted" in a) == ["cp1", "db1", "edge1", "w1"]
    f = Fleet.from_params(load_params(lab.params_file))
    try:
        assert f.run("true").ok
    finally:
        f.close()


def test_each_vm_answers_systemctl_as_a_debian_vm_would_and_says_it_is_the_lab(lab, fleet):
    w1 = host(fleet, "w1")
    version = fleet.run_on(w1, "systemctl --version").check()
    assert "LAB SIMULATION" in version.stdout and "not systemd" in version.stdout
    # sshd is the VM's ssh.service; a fresh VM enables nothing else (the machine's own services stay hidden)
    assert fleet.run_on(w1, "systemctl is-active ssh").stdout.strip() == "active"
    assert fleet.run_on(w1, "systemctl is-enabled chrony").stdout.strip() == "disabled"
    # Debian's redis unit, as a package installs it: enable --now, then it survives a power cycle
    assert fleet.run_on(w1, "systemctl enable --now redis-server && systemctl is-active redis-server").check().stdout.strip() \
        .endswith("active")
    pid = fleet.run_on(w1, "pgrep -x redis-server").check().stdout.strip()
    assert pid
    lab.stop("w1")
    lab.start("w1")
    fleet.close()
    after = Fleet.from_params(load_params(lab.params_file), progress=None)
    try:
        w1 = next(h for h in after.hosts if h.name == "w1")
        assert after.run_on(w1, "systemctl is-active redis-server").stdout.strip() == "active"
        assert after.run_on(w1, "systemctl disable --now redis-server; systemctl is-active redis-server").stdout \
            .strip().endswith("inactive")
        assert after.run_on(w1, "pgrep -x redis-server").exit_code == 1
        # a unit that does not exist fails as under systemd
        missing = after.run_on(w1, "systemctl start no-such-thing")
        assert missing.exit_code == 1 and "Unit no-such-thing.service not found." in missing.stderr
    finally:
        after.close()


def test_the_service_manager_restarts_a_unit_with_restart_always_and_not_after_stop(lab, fleet):
    vm = host(fleet, "db1")
    unit = ("[Unit]\nDescription=a sleeper\n[Service]\nExecStart=/bin/sleep 600\nRestart=always\nRestartSec=0.2\n"
            "[Install]\nWantedBy=multi-user.target\n")
    fleet.run_on(vm, f"printf '{unit}' > /etc/systemd/system/sleeper.service && systemctl enable --now sleeper").check()
    try:
        first = fleet.run_on(vm, "cat /run/lab-systemd/sleeper.service.pid").check().stdout.strip()
        fleet.run_on(vm, f"kill -9 {first}").check()  # a crash
        second = ""
        for _ in range(50):
            second = fleet.run_on(vm, "systemctl is-active -q sleeper && cat /run/lab-systemd/sleeper.service.pid").stdout.strip()
            if second and second != first:
                break
            time.sleep(0.1)
        assert second and second != first, "the supervisor did not start the unit again"
        assert "scheduled restart (Restart=always)" in fleet.run_on(vm, "cat /var/log/lab-systemd/sleeper.service.log").stdout
        fleet.run_on(vm, "systemctl stop sleeper").check()
        time.sleep(0.6)  # longer than RestartSec: a stopped unit stays stopped
        assert fleet.run_on(vm, "systemctl is-active sleeper").stdout.strip() == "inactive"
        assert fleet.run_on(vm, "pgrep -x sleep").exit_code == 1
    finally:
        fleet.run_on(vm, "systemctl disable --now sleeper; rm -f /etc/systemd/system/sleeper.service")


def test_unknown_vm_is_named(lab):
    with pytest.raises(LabError, match="no VM named vm9"):
        lab.stop("vm9")


def test_down_leaves_nothing_behind_even_after_a_failed_up(tmp_path):
    name, subnet = lab_identity("rbdown", "10.79.0.0/24")
    lab = Lab(tmp_path / "lab", name=name, subnet=subnet)
    lab.down()  # debris of an interrupted earlier run of this test
    lab.up(hosts=2)
    pids = [p for vm in lab.vms() for p in lab.pids(vm)]
    assert pids
    # the debris of an interrupted `up`: a namespace with no VM running in it, and no state file
    subprocess.run(["ip", "netns", "add", f"{name}-ghost"], check=True)
    lab.state_file.unlink()
    lab.down()
    assert [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if n.startswith(f"{name}-")] == []
    assert subprocess.run(["ip", "link", "show", f"{name}0"], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count(f"{name}-") == 0
    assert lab.mounts() == []
    for pid in pids:  # every process the lab started is gone (at most a zombie awaiting its reaper)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"process {pid} is still alive"
    assert lab.down() == []  # and a second down has nothing to do


def test_a_link_cut_mid_command_is_bounded_by_command_timeout_and_names_the_host(lab):
    """The hang seen before: a host's link cut after its connection opened held a run for minutes."""
    import threading
    import time

    params = load_params(lab.params_file)
    fleet = Fleet(params.hosts, params.ssh.model_copy(update={"command_timeout": 5.0}), params.source_dir, progress=None)
    timer = threading.Timer(1.0, lab.cut, args=("w1",))
    try:
        assert fleet.run("true").ok  # every connection is open before the cut
        timer.start()
        t0 = time.monotonic()
        results = fleet.run("sleep 3; echo done")
        elapsed = time.monotonic() - t0
    finally:
        timer.join()
        lab.heal("w1")
    try:
        assert 4.5 < elapsed < 15, elapsed
        assert not results["w1"].ok
        assert results["w1"].error.startswith("w1: command did not finish within 5 s (ssh.command_timeout)")
        assert {h: r.stdout.strip() for h, r in results.items() if h != "w1"} == {"cp1": "done", "db1": "done", "edge1": "done"}
        assert fleet.run_on(host(fleet, "w1"), "echo back").stdout.strip() == "back"  # reconnects after the heal
        # cut while idle: the next command cannot even open its channel on the open connection
        lab.cut("w1")
        t0 = time.monotonic()
        idle = fleet.run("echo up")
        assert time.monotonic() - t0 < 15
        assert not idle["w1"].ok and idle["w1"].error.startswith("w1: ")
        assert all(r.ok for h, r in idle.items() if h != "w1")
    finally:
        lab.heal("w1")
        fleet.close()


def test_a_copy_over_a_cut_link_fails_within_command_timeout_naming_the_host(lab, tmp_path):
    """SFTP was unbounded: a file copied to a host whose link went down held the run until TCP gave up (a cache apply hung)."""
    from runbooklib.errors import HostError

    params = load_params(lab.params_file)
    fleet = Fleet(params.hosts, params.ssh.model_copy(update={"command_timeout": 5.0}), params.source_dir, progress=None)
    local = tmp_path / "payload"
    local.write_text("payload\n")
    try:
        fleet.put(host(fleet, "edge1"), local, "/tmp/payload-1")  # the SFTP session is open before the cut
        lab.cut("edge1")
        t0 = time.monotonic()
        with pytest.raises(HostError) as caught:
            fleet.put(host(fleet, "edge1"), local, "/tmp/payload-2")
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        assert str(caught.value).startswith("edge1") and "cannot copy" in str(caught.value), caught.value
        # a fresh connection's SFTP session, opened before the cut, is bounded the same way
        fresh = Fleet(params.hosts, params.ssh.model_copy(update={"command_timeout": 5.0}), params.source_dir, progress=None)
        lab.heal("edge1")
        fresh.put(host(fresh, "edge1"), local, "/tmp/payload-3")
        lab.cut("edge1")
        t0 = time.monotonic()
        with pytest.raises(HostError):
            fresh.put(host(fresh, "edge1"), local, "/tmp/payload-4")
        assert time.monotonic() - t0 < 15
        fresh.close()
    finally:
        lab.heal("edge1")
        fleet.close()


def test_the_lab_provides_every_reference_its_parameters_make(lab):
    """`lab up` writes what the lab's parameter files point at (keys, pins, a lab registry key of the real shape)."""
    from conftest import runbook

    own = runbook("check", str(lab.params_file))
    assert own.returncode == 0 and "every reference resolves" in own.stdout, own.stdout + own.stderr
    key = json.loads(lab.registry_key.read_text())
    assert key["type"] == "service_account" and "LAB SIMULATION" in key["note"]
    assert oct(lab.registry_key.stat().st_mode & 0o777) == "0o600"
    seed = Lab(lab.root, name=lab.name, subnet=str(lab.subnet)).profile_data("seed")
    assert seed["registry"]["json_key"] == "file:secrets/registry-key.json"  # mapped into this lab's own folder


def test_a_profile_may_be_a_parameter_file_of_ones_own_mapped_onto_the_labs_subnet(tmp_path):
    import yaml

    own = yaml.safe_load((Path(__file__).parent.parent / "params" / "lab-small.yaml").read_text())
    own["inventory"]["hosts"] = [h for h in own["inventory"]["hosts"] if h["name"] in ("edge1", "w1")]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(own))
    lab = Lab(tmp_path / "lab", name="tq", subnet="10.123.0.0/24")
    data = lab.profile_data(str(path))
    assert [(h["name"], h["address"]) for h in data["inventory"]["hosts"]] == [("w1", "10.123.0.21"), ("edge1", "10.123.0.41")]
    with pytest.raises(LabError, match="unknown profile 'nowhere.yaml'.*a parameter file"):
        lab.profile_data("nowhere.yaml")
