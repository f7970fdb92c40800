"""Build, inspect, break and tear down the lab's VMs.

One lab instance lives in one folder (``.lab/`` by default) and owns a bridge ``<name>0`` with the
subnet's first address, and per VM a network namespace ``<name>-<vm>`` joined to the bridge by a
veth pair. A VM boots as::

    ip netns exec <ns> unshare --mount --propagation private --uts --pid --fork --kill-child \
        sh boot.sh      # overlay root, /proc, /sys, /dev, tmpfs /tmp and /run, then
    exec chroot <root> /usr/sbin/sshd -D     # sshd is PID 1 of the VM

so killing the VM's sshd ends every process in it, and its mounts vanish with its mount namespace.
The VM's disk (the overlay's upper layer) survives ``stop``/``start``, as a real VM's would.

Every process is found through its network namespace (``/proc/<pid>/ns/net``), so a lab whose
processes were killed, or whose state file was lost, is still found, recovered by ``up`` and
cleaned by ``down``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from runbooklib.errors import RunbookError
from runbooklib.params import parse_params

# Provisioners: what a phase needs of the lab beyond plain VMs, ``provision(lab, params, actions)``.
PROVISIONERS = ("runbooklab.kubernetes",)


def provisioners():
    import importlib

    return [importlib.import_module(name).provision for name in PROVISIONERS]

PROJECT = Path(__file__).resolve().parents[1]
PROFILES = {"seed": PROJECT / "params" / "lab.yaml", "small": PROJECT / "params" / "lab-small.yaml"}
TEMPLATE_NET = ipaddress.IPv4Network("10.77.0.0/24")  # the subnet the profile files are written in
SSHD = "/usr/sbin/sshd"
REQUIRED = ("ip", "unshare", "chroot", "setsid", "ssh-keygen", SSHD)


class LabError(RunbookError):
    """The lab cannot do what was asked; the message says what to do."""


@dataclass
class VMStatus:
    name: str
    address: str
    roles: list[str]
    state: str  # running | stopped | absent
    link: str  # up | down (cut) | absent
    ssh: bool
    processes: list[str]


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _ssh_answers(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when an SSH server greets on address:port (reads the banner; sends nothing)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class Lab:
    """One lab instance: its folder, its name prefix and its subnet."""

    def __init__(self, root: str | Path | None = None, name: str | None = None, subnet: str | None = None):
        self.root = Path(root or os.environ.get("RUNBOOK_LAB_DIR") or PROJECT / ".lab").resolve()
        self.name = name or os.environ.get("RUNBOOK_LAB_NAME") or "rblab"
        self.subnet = ipaddress.IPv4Network(subnet or os.environ.get("RUNBOOK_LAB_SUBNET") or "10.77.0.0/24")
        if not re.fullmatch(r"[a-z][a-z0-9]{1,5}", self.name):
            raise LabError(f"lab name {self.name!r}: use 2 to 6 lower-case letters or digits (it prefixes interface names)")
        if self.subnet.prefixlen > 24 or not self.subnet.is_private:
            raise LabError(f"lab subnet {self.subnet}: use a private /24 (or larger) that nothing else on this machine uses")
        self.bridge = f"{self.name}0"
        self.ssh_dir = self.root / "ssh"
        self.key = self.ssh_dir / "id_ed25519"
        self.known_hosts = self.ssh_dir / "known_hosts"
        self.authorized_dir = self.root / "authorized"
        self.params_file = self.root / "params.yaml"
        self.state_file = self.root / "lab.json"

    # -- names -------------------------------------------------------------------------------
    def netns(self, vm: str) -> str:
        return f"{self.name}-{vm}"

    def veth(self, vm: str) -> str:
        return f"{self.name}-{vm}"

    def vm_dir(self, vm: str) -> Path:
        return self.root / "vms" / vm

    def address(self, template_address: str) -> str:
        """Map an address written in the profile's subnet onto this lab's subnet (same host part)."""
        ip = ipaddress.IPv4Address(template_address)
        if ip not in TEMPLATE_NET:
            raise LabError(f"{ip} is outside the profile subnet {TEMPLATE_NET}")
        return str(self.subnet.network_address + (int(ip) - int(TEMPLATE_NET.network_address)))

    # -- preconditions -----------------------------------------------------------------------
    def _preflight(self) -> None:
        if os.name != "posix" or not Path("/proc/self/ns/net").exists():
            raise LabError("the lab needs Linux namespaces; run it on a Linux machine")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates network namespaces and mounts); run as root")
        missing = [t for t in REQUIRED if not (shutil.which(t) or Path(t).exists())]
        if missing:
            raise LabError(f"missing {', '.join(missing)}; run `make setup` (installs openssh-server, iproute2, util-linux)")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lab.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- the desired site --------------------------------------------------------------------
    def profile_data(self, profile: str | None = None, hosts: int | None = None) -> dict:
        """The parameter file a profile describes, mapped onto this lab's subnet and key folder."""
        if hosts is not None:
            if not 1 <= hosts <= 200:
                raise LabError("--hosts takes 1 to 200")
            data = generated_profile(hosts)
        else:
            path = PROFILES.get(profile or "seed")
            if path is None:
                raise LabError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)} (or --hosts N)")
            data = yaml.safe_load(path.read_text())
        data = _map_addresses(copy.deepcopy(data), self)
        data["ssh"]["key"] = f"file:{self.key.relative_to(self.root)}"
        data["ssh"]["known_hosts"] = str(self.known_hosts.relative_to(self.root))
        if (data.get("vm") or {}).get("deploy_user"):
            data["vm"]["deploy_user"]["authorized_key"] = f"file:{self.key.relative_to(self.root)}.pub"
        return data

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def vms(self) -> dict[str, dict]:
        """VMs this lab knows of: from the state file, plus any namespace with the lab's prefix."""
        known = dict(self._state().get("vms", {}))
        for ns in self._namespaces():
            vm = ns[len(self.name) + 1:]
            known.setdefault(vm, {"address": "?", "roles": []})
        return known

    def _namespaces(self) -> list[str]:
        done = _run("ip", "netns", "list", check=False)
        names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.name + "-")]

    # -- processes ---------------------------------------------------------------------------
    def pids(self, vm: str) -> list[int]:
        """Every process inside the VM (found by its network namespace), sorted."""
        try:
            ino = os.stat(f"/run/netns/{self.netns(vm)}").st_ino
        except OSError:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                        out.append(int(entry))
                except OSError:
                    continue
        return sorted(out)

    def _init_pid(self, vm: str) -> int | None:
        """Host PID of the VM's PID 1 (its sshd)."""
        for pid in self.pids(vm):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if m and m.group(1).split()[-1] == "1" and len(m.group(1).split()) > 1:
                return pid
        return None

    def _comms(self, vm: str) -> list[str]:
        """Process names in the VM; the lab's own Python daemons by what they are (``lab-apiserver``)."""
        names = []
        for pid in self.pids(vm):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            module = next((a.decode() for a in argv if a.startswith(b"runbooklab.")), None)
            names.append(f"lab-{module.rsplit('.', 1)[1]}" if module else name)
        return names

    def _kill_vm(self, vm: str, timeout: float = 10.0) -> bool:
        """SIGKILL every process of the VM, by PID; True if any was running."""
        pids = self.pids(vm)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pids(vm) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pids(vm):
            raise LabError(f"{vm}: processes {self.pids(vm)} did not exit after SIGKILL")
        return bool(pids)

    # -- building blocks ---------------------------------------------------------------------
    def _ensure_keys(self, actions: list[str]) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ssh_dir, 0o700)
        if not self.key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name} lab operator", "-f", str(self.key))
            actions.append(f"generated the lab's SSH key {self.key}")
        # VMs get a folder holding only authorized_keys, never the private key
        self.authorized_dir.mkdir(parents=True, exist_ok=True)
        auth = self.authorized_dir / "authorized_keys"
        pub = (self.key.with_suffix(".pub")).read_text()
        if not auth.exists() or auth.read_text() != pub:
            auth.write_text(pub)

    def _ensure_bridge(self, actions: list[str]) -> None:
        gateway = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            actions.append(f"created bridge {self.bridge}")
        addrs = _run("ip", "-o", "-4", "addr", "show", "dev", self.bridge).stdout
        if gateway not in addrs:
            _run("ip", "addr", "add", gateway, "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        # the lab is a closed room: nothing arriving on the bridge is forwarded anywhere
        for knob, value in ((f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "0"),
                            (f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "1")):
            with contextlib.suppress(OSError):
                Path(knob).write_text(value)

    def _ensure_netns(self, vm: str, address: str, actions: list[str]) -> None:
        ns, veth = self.netns(vm), self.veth(vm)
        if ns not in self._namespaces():
            _run("ip", "netns", "add", ns)
            actions.append(f"{vm}: created network namespace {ns}")
        if _run("ip", "-n", ns, "link", "show", "eth0", check=False).returncode != 0:
            _run("ip", "link", "del", veth, check=False)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self.bridge)
        if "state DOWN" in _run("ip", "link", "show", veth).stdout and not self._state().get("cut", {}).get(vm):
            _run("ip", "link", "set", veth, "up")
        cidr = f"{address}/{self.subnet.prefixlen}"
        if cidr not in _run("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0").stdout:
            _run("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _write_vm_files(self, vm: str, address: str) -> None:
        d = self.vm_dir(vm)
        for sub in ("upper", "work", "root", "state"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        hostkey = d / "state" / "ssh_host_ed25519_key"
        if not hostkey.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{vm}", "-f", str(hostkey))
        (d / "state" / "sshd_config").write_text(SSHD_CONFIG.format(address=address))
        (d / "boot.sh").write_text(BOOT_SCRIPT.format(vm=vm, dir=d, keys=self.authorized_dir, sshd=SSHD, project=PROJECT))

    def _boot(self, vm: str) -> int:
        d = self.vm_dir(vm)
        log = open(d / "console.log", "ab")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns(vm), "unshare", "--mount", "--propagation", "private", "--uts",
                 "--pid", "--fork", "--kill-child", "--", "/bin/sh", str(d / "boot.sh")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        finally:
            log.close()
        return proc.pid

    def _wait_ssh(self, vms: dict[str, str], timeout: float = 30.0) -> None:
        pending = dict(vms)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for vm, address in list(pending.items()):
                if _ssh_answers(address, timeout=0.5):
                    del pending[vm]
            if pending:
                time.sleep(0.05)
        if pending:
            names = ", ".join(pending)
            tails = "; ".join(f"{vm}: {self._console_tail(vm)}" for vm in pending)
            raise LabError(f"SSH did not answer on {names} within {timeout:g} s ({tails})")

    def _console_tail(self, vm: str) -> str:
        try:
            lines = (self.vm_dir(vm) / "console.log").read_text().strip().splitlines()
            return lines[-1] if lines else "console empty"
        except OSError:
            return "no console log"

    def _write_known_hosts(self, vms: dict[str, dict], actions: list[str]) -> None:
        """Pin every VM's host key (the lab provisioned those keys itself, so it knows them)."""
        try:
            before = set(self.known_hosts.read_text().splitlines())
        except OSError:
            before = set()
        lines = []
        for vm, info in sorted(vms.items()):
            pub = (self.vm_dir(vm) / "state" / "ssh_host_ed25519_key.pub").read_text().split()
            line = f"{info['address']} {pub[0]} {pub[1]}"
            if before and line not in before:
                actions.append(f"{vm}: pinned its current host key")
            lines.append(line + "\n")
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.known_hosts)

    def _destroy(self, vm: str) -> None:
        self._kill_vm(vm)
        _run("ip", "netns", "del", self.netns(vm), check=False)
        _run("ip", "link", "del", self.veth(vm), check=False)
        shutil.rmtree(self.vm_dir(vm), ignore_errors=True)

    # -- the commands ------------------------------------------------------------------------
    def up(self, profile: str | None = None, hosts: int | None = None) -> list[str]:
        """Bring the lab to the profile: create what is missing, restart what died, remove extras.

        Returns what it did; an empty list means the lab was already up as asked.
        """
        self._preflight()
        data = self.profile_data(profile, hosts)
        params = parse_params(yaml.safe_dump(data, sort_keys=False), f"lab profile {profile or hosts}")
        desired = {h.name: {"address": str(h.address), "roles": list(h.roles)} for h in params.hosts}
        actions: list[str] = []
        with self._locked():
            self._ensure_keys(actions)
            self._ensure_bridge(actions)
            for vm in self.vms():
                if vm not in desired:
                    self._destroy(vm)
                    actions.append(f"{vm}: removed (not in the profile)")
            booted = {}
            for vm, info in desired.items():
                self._ensure_netns(vm, info["address"], actions)
                self._write_vm_files(vm, info["address"])
                if self._init_pid(vm) is None:
                    self._kill_vm(vm)  # leftovers of a VM whose sshd died
                    self._boot(vm)
                    booted[vm] = info["address"]
                    actions.append(f"{vm}: booted at {info['address']}")
            self._wait_ssh(booted)
            for vm in booted:
                self._run_boot_scripts(vm)
            state = self._state()
            self._save_state({"name": self.name, "subnet": str(self.subnet), "profile": profile or f"hosts:{hosts}",
                              "vms": desired, "cut": {k: v for k, v in state.get("cut", {}).items() if k in desired}})
            self._write_known_hosts(desired, actions)
            text = (f"# Generated by `runbook lab up` for profile {profile or f'--hosts {hosts}'}; "
                    "rewritten on every `up`.\n") + yaml.safe_dump(data, sort_keys=False)
            if not self.params_file.exists() or self.params_file.read_text() != text:
                self.params_file.write_text(text)
            # what each phase needs of the lab beyond plain VMs (runbooklab/<phase>/provision)
            lab_params = parse_params(text, "lab parameters", self.params_file)
            for provision in provisioners():
                provision(self, lab_params, actions)
        return actions
    def exec_in(self, vm: str, command: str) -> subprocess.CompletedProcess:
        """Run a shell command inside the VM (its namespaces and root), as on its console."""
        pid = self._booted_pid(vm)
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-p", "-n", "-r", "-w", "--", "/bin/sh", "-c", command],
                              capture_output=True, text=True, timeout=30)

    def _booted_pid(self, vm: str, timeout: float = 10.0) -> int:
        """PID 1 of the VM once it is sshd, i.e. the VM's root is mounted (never the host's root)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._init_pid(vm)
            if pid is not None:
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                        return pid
                except OSError:
                    pass
            time.sleep(0.05)
        raise LabError(f"{vm} is not running (or did not finish booting within {timeout:g} s)")

    def _run_boot_scripts(self, vm: str) -> None:
        """What an init system does at boot: start the lab's daemons and the units enabled in the VM."""
        from . import daemon

        self.exec_in(vm, daemon.run_boot_scripts() + "; systemctl lab-boot >>/var/log/lab-systemd.log 2>&1; true")

    def enable_daemon(self, vm: str, name: str, command: str) -> bool:
        """Start a lab daemon in the VM now and at every boot; True if it was started (not already running)."""
        from . import daemon

        r = self.exec_in(vm, daemon.enable(name, command, f"/var/log/{name}.log"))
        if r.returncode != 0:
            raise LabError(f"{vm}: could not start {name}: {r.stderr.strip()}")
        return "running" not in r.stdout

    def down(self) -> list[str]:
        """Remove every VM, namespace, link and process of the lab. Safe after a failed up."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root to tear down namespaces; run as root")
        actions = []
        with self._locked():
            for vm in self.vms():
                if self.pids(vm):
                    actions.append(f"{vm}: stopped")
                self._destroy(vm)
            if _run("ip", "link", "show", self.bridge, check=False).returncode == 0:
                _run("ip", "link", "del", self.bridge)
                actions.append(f"removed bridge {self.bridge}")
            for leftover in self.mounts():
                _run("umount", "-l", leftover, check=False)
                actions.append(f"unmounted {leftover}")
            # the simulated cluster lived on these VMs: its rke files describe nothing any more
            for f in (self.state_file, self.known_hosts, self.params_file, self.root / "cluster.yml",
                      self.root / "cluster.rkestate", self.root / "kube_config_cluster.yml"):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            link = Path("/usr/local/bin/rke")
            if self.name == "rblab" and link.is_symlink() and os.readlink(link) == str(self.root / "bin" / "rke"):
                link.unlink()
                actions.append(f"removed {link}")
            shutil.rmtree(self.root / "vms", ignore_errors=True)
        return actions

    def mounts(self) -> list[str]:
        """Mounts in the host's namespace under the lab folder (there should be none)."""
        prefix = str(self.root) + "/"
        out = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].encode().decode("unicode_escape")
            if target.startswith(prefix):
                out.append(target)
        return out

    def _require_vm(self, vm: str) -> dict:
        vms = self._state().get("vms", {})
        if vm not in vms:
            raise LabError(f"no VM named {vm} in the lab at {self.root}; known: {', '.join(vms) or 'none (run lab up)'}")
        return vms[vm]

    def stop(self, vm: str) -> bool:
        """Power the VM off: every process in it dies. Its disk is kept. False if it was already off."""
        self._require_vm(vm)
        with self._locked():
            return self._kill_vm(vm)

    def start(self, vm: str) -> bool:
        """Power the VM on again. False if it was already running."""
        info = self._require_vm(vm)
        with self._locked():
            if self._init_pid(vm) is not None:
                return False
            self._ensure_netns(vm, info["address"], [])
            self._kill_vm(vm)
            self._boot(vm)
            if not self._state().get("cut", {}).get(vm):
                self._wait_ssh({vm: info["address"]})
            self._run_boot_scripts(vm)
            return True

    def cut(self, vm: str) -> None:
        """Take the VM's network link down (its processes keep running)."""
        self._require_vm(vm)
        with self._locked():
            _run("ip", "link", "set", self.veth(vm), "down")
            state = self._state()
            state.setdefault("cut", {})[vm] = True
            self._save_state(state)

    def heal(self, vm: str) -> None:
        self._require_vm(vm)
        with self._locked():
            _run("ip", "link", "set", self.veth(vm), "up")
            state = self._state()
            state.setdefault("cut", {}).pop(vm, None)
            self._save_state(state)

    def rekey(self, vm: str) -> str:
        """Give the VM a new host key, as a man-in-the-middle would look. The pinned key is NOT updated.

        sshd reloads on SIGHUP, so the VM's other processes keep running. Returns the new fingerprint.
        """
        info = self._require_vm(vm)
        with self._locked():
            key = self.vm_dir(vm) / "state" / "ssh_host_ed25519_key"
            for f in (key, key.with_suffix(".pub")):
                f.unlink(missing_ok=True)
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{vm} (rekeyed)", "-f", str(key))
            pid = self._init_pid(vm)
            if pid is not None:
                os.kill(pid, signal.SIGHUP)  # sshd re-executes itself and loads the new key
                time.sleep(0.2)
                self._wait_ssh({vm: info["address"]})
            return _run("ssh-keygen", "-lf", str(key.with_suffix(".pub"))).stdout.split()[1]

    def status(self) -> list[VMStatus]:
        state = self._state()
        out = []
        namespaces = set(self._namespaces())
        for vm, info in self.vms().items():
            running = self._init_pid(vm) is not None
            if self.netns(vm) not in namespaces:
                link = "absent"
            else:
                shown = _run("ip", "link", "show", self.veth(vm), check=False).stdout
                link = "down" if ("state DOWN" in shown or state.get("cut", {}).get(vm)) else ("up" if shown else "absent")
            comms = sorted(set(self._comms(vm)) - {"unshare"})  # unshare is the VM's shell, not its workload
            out.append(VMStatus(vm, info.get("address", "?"), info.get("roles", []),
                                "running" if running else ("stopped" if self.netns(vm) in namespaces else "absent"),
                                link, running and link == "up" and _ssh_answers(info.get("address", ""), timeout=1.0),
                                comms))
        return out

    def status_rows(self) -> list[dict]:
        return [dict(asdict(s), processes=", ".join(s.processes)) for s in self.status()]


def generated_profile(n: int) -> dict:
    """``--hosts N``: vm1 runs etcd, the control plane and a worker; vm2..vmN are workers."""
    hosts = [{"name": f"vm{i}", "address": str(TEMPLATE_NET.network_address + 100 + i),
              "roles": ["etcd", "controlplane", "worker"] if i == 1 else ["worker"],
              "location": {"country": "RU", "site": "lab"}} for i in range(1, n + 1)]
    return {
        "environment": {"name": f"lab-{n}", "kind": "lab", "data_country": "RU",
                        "description": f"Generated lab of {n} hosts"},
        "inventory": {"hosts": hosts},
        "ssh": {"key": "file:ssh/id_ed25519", "known_hosts": "ssh/known_hosts", "connect_timeout": 5,
                "parallelism": 16},
        "kubernetes": {"distribution": "rke2", "version": "v1.32.5", "cluster_name": f"lab-{n}"},
    }


_IPV4 = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\b")


def _map_addresses(obj, lab: Lab):
    """Rewrite every profile-subnet address in a profile onto the lab's subnet."""
    if isinstance(obj, dict):
        return {k: _map_addresses(v, lab) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_addresses(v, lab) for v in obj]
    if isinstance(obj, str):
        def sub(m):
            try:
                ip = ipaddress.IPv4Address(m.group(1))
            except ValueError:
                return m.group(1)
            return lab.address(m.group(1)) if ip in TEMPLATE_NET else m.group(1)
        return _IPV4.sub(sub, obj)
    return obj


SSHD_CONFIG = """\
# sshd of a lab VM (generated by runbook lab up)
ListenAddress {address}
Port 22
HostKey /run/rblab/state/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile /run/rblab/keys/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
MaxStartups 200
MaxSessions 100
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
"""

BOOT_SCRIPT = """\
#!/bin/sh
# Boot of lab VM {vm}: runs as PID 1 of fresh mount, UTS and PID namespaces inside the VM's network namespace.
set -e
R={dir}/root
mount -t overlay overlay -o lowerdir=/,upperdir={dir}/upper,workdir={dir}/work "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys" 2>/dev/null || mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/run/sshd" "$R/run/rblab/state" "$R/run/rblab/keys"
mount --bind {dir}/state "$R/run/rblab/state"
mount --bind {keys} "$R/run/rblab/keys"
mount -o remount,bind,ro "$R/run/rblab/keys"
# the project (its code and interpreter) at the same path, read-only: lab daemons run from it
mkdir -p "$R{project}" && mount --bind {project} "$R{project}" && mount -o remount,bind,ro "$R{project}"
# what a Debian VM's init gives it: `systemctl` answered by the lab's service manager (a stand-in:
# runbooklab/systemctl.py), with sshd, PID 1 here, as the VM's ssh.service
mkdir -p "$R/usr/local/sbin" "$R/run/lab-systemd"
# the lab's base image enables no service but ssh: on first boot, hide what the machine running the
# lab enabled for itself (its packages are installed, not running, in a fresh VM)
if [ ! -e "$R/etc/runbook-lab/base-image" ]; then
  rm -rf "$R/etc/systemd/system/multi-user.target.wants" && mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  mkdir -p "$R/etc/runbook-lab" && echo "first boot of {vm}: no service enabled but ssh" > "$R/etc/runbook-lab/base-image"
fi
ln -sfn {project}/runbooklab/systemctl.py "$R/usr/local/sbin/systemctl"
echo 1 > "$R/run/lab-systemd/ssh.service.pid"
hostname {vm}
echo {vm} > "$R/etc/hostname"
exec chroot "$R" {sshd} -D -e -f /run/rblab/state/sshd_config
"""
