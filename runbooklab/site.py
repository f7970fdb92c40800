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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from runbooklib.params import parse_params

from .boot import Boot
from .common import PROJECT, REQUIRED, LabError
from .common import run_command as _run
from .common import ssh_answers as _ssh_answers
from .keys import Keys
from .network import Network
from .processes import Processes

__all__ = ["PROVISIONERS", "Lab", "LabError", "VMStatus"]

PROFILES = {"seed": PROJECT / "params" / "lab.yaml", "small": PROJECT / "params" / "lab-small.yaml"}
TEMPLATE_NET = ipaddress.IPv4Network("10.77.0.0/24")  # the subnet the profile files are written in
# Provisioners: what a phase needs of the lab beyond plain VMs, ``provision(lab, params, actions)``.
# A provisioner may also have ``ready(lab, params, actions)``: called after all of them, to wait for what it
# started in the background (OpenSearch's JVM starts while Kubernetes is provisioned).
PROVISIONERS = ("runbooklab.opensearch", "runbooklab.kubernetes", "runbooklab.rook", "runbooklab.edge")


def provisioners():
    import importlib

    return [importlib.import_module(name).provision for name in PROVISIONERS]


def readies():
    import importlib

    return [r for name in PROVISIONERS if (r := getattr(importlib.import_module(name), "ready", None))]


def teardowns():
    """The provisioners' ``teardown(lab, actions)``, for those that start something outside the VMs."""
    import importlib

    return [t for name in PROVISIONERS if (t := getattr(importlib.import_module(name), "teardown", None))]


@dataclass
class VMStatus:
    name: str
    address: str
    roles: list[str]
    state: str  # running | stopped | absent
    link: str  # up | down (cut) | absent
    ssh: bool
    processes: list[str]


class Lab(Network, Processes, Boot, Keys):
    """One lab instance: its folder, its name prefix and its subnet.

    Its jobs live in their own modules: ``network`` (bridge, namespaces, links), ``processes``
    (finding and killing a VM's processes), ``boot`` (a VM's files and boot), ``keys`` (SSH keys and
    pins); this class holds the names, the state and the commands (up, down, stop, start, status).
    """

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
            if path is None and profile and profile.endswith((".yaml", ".yml")) and Path(profile).is_file():
                path = Path(profile)  # a site of one's own, written in the profiles' subnet (10.77.0.0/24)
            if path is None:
                raise LabError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}, or a parameter file "
                               f"(.yaml) whose hosts are in {TEMPLATE_NET} (or --hosts N)")
            data = yaml.safe_load(path.read_text())
        data = _map_addresses(copy.deepcopy(data), self)
        data["ssh"]["key"] = f"file:{self.key.relative_to(self.root)}"
        data["ssh"]["known_hosts"] = str(self.known_hosts.relative_to(self.root))
        if (data.get("vm") or {}).get("deploy_user"):
            data["vm"]["deploy_user"]["authorized_key"] = f"file:{self.key.relative_to(self.root)}.pub"
        if (data.get("registry") or {}).get("json_key"):
            data["registry"]["json_key"] = f"file:{self.registry_key.relative_to(self.root)}"
        if data.get("kubernetes"):  # the cluster's state folder and the rke stand-in of this lab
            data["kubernetes"]["state_dir"] = "kubernetes"
            data["kubernetes"]["rke"] = "bin/rke"
            data["kubernetes"]["kubectl"] = "bin/kubectl"  # of the cluster's release, linked by the provisioner
            data["kubernetes"]["helm"] = "bin/helm"
            if (data["kubernetes"].get("etcd_backup") or {}).get("path") and not data["kubernetes"]["etcd_backup"].get("host"):
                data["kubernetes"]["etcd_backup"]["path"] = "etcd-backups"  # the lab's own copies of its etcd snapshots
            if data["kubernetes"].get("distribution", "rke2") == "rke2":  # the lab's RKE2 artifact, and etcdctl in its VMs
                from .kubernetes import parts
                from .kubernetes.rke2 import artifact

                data["kubernetes"]["artifacts"] = artifact.FOLDER
                data["kubernetes"]["etcdctl"] = parts.vm_path("etcd", "etcdctl")
                data["kubernetes"]["etcdutl"] = parts.vm_path("etcd", "etcdutl")
        ceph = (data.get("storage") or {}).get("ceph") or {}
        if ceph.get("install"):  # Rook's manifests and charts, copied into the lab by its provisioner (runbooklab/rook.py)
            from .rook import DEFAULT_RELEASE

            ceph["install"]["location"] = f"rook/{ceph.get('rook_version', DEFAULT_RELEASE)}"
        samples = (data.get("logging") or {}).get("samples")
        if samples and hosts is None and not Path(samples).is_absolute():  # the profile's own sample log lines, where they are
            data["logging"]["samples"] = str((path.parent / samples).resolve())
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

    # -- building blocks ---------------------------------------------------------------------
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
            for ready in readies():
                ready(self, lab_params, actions)
        return actions

    def down(self) -> list[str]:
        """Remove every VM, namespace, link and process of the lab. Safe after a failed up."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root to tear down namespaces; run as root")
        actions = []
        with self._locked():
            for teardown in teardowns():  # what a provisioner started outside the VMs (the lab's DNS), stopped by its PID
                teardown(self, actions)
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
            link = Path("/usr/local/bin/rke")  # where versions before runbooklab linked the stand-in: clean it up
            if self.name == "rblab" and link.is_symlink() and os.readlink(link) == str(self.root / "bin" / "rke"):
                link.unlink()
                actions.append(f"removed {link}")
            shutil.rmtree(self.root / "vms", ignore_errors=True)
            shutil.rmtree(self.root / "kubernetes", ignore_errors=True)  # the runbooks' cluster state: the cluster is gone
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
        """Power the VM on again and, as ``up`` does, wait until what the provisioners start at boot answers (the
        logging VM's OpenSearch: its JVM takes a while, as on a real VM the operator waits for). False if it was
        already running."""
        info = self._require_vm(vm)
        with self._locked():
            if self._init_pid(vm) is not None:
                return False
            self._ensure_netns(vm, info["address"], [])
            self._kill_vm(vm)
            self._boot(vm)
            cut = self._state().get("cut", {}).get(vm)
            if not cut:
                self._wait_ssh({vm: info["address"]})
            self._run_boot_scripts(vm)
            if not cut and self.params_file.exists():
                lab_params = parse_params(self.params_file.read_text(), "lab parameters", self.params_file)
                for ready in readies():
                    ready(self, lab_params, [])
            return True

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
