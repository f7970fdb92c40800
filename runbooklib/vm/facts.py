"""The VM phase's facts: each a shell command, a parser and a typed shape.

All facts of a host are gathered in one SSH command (:mod:`runbooklib.phase.facts`), so the cost
is one round trip per host, in parallel across hosts. Parsers are pure functions of the command's
output: tests feed them recorded outputs (``tests/data/vm/facts/``). Every fact has a default of
its own shape, so a host's facts always hold every key the checks and operations read.
"""

from __future__ import annotations

import base64
import re
import shlex
from typing import Optional, TypedDict

from ..phase.facts import Fact, FactSet, Gathered
from ..phase.facts import sections as _sections
from ..schema import Host

# Files the baseline manages; the ``managed_files`` fact reads them so plans can compare contents.
SYSCTL_FILE = "/etc/sysctl.d/90-kubernetes.conf"
MODULES_FILE = "/etc/modules-load.d/kubernetes.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-runbook-hardening.conf"
CHRONY_DROPIN = "/etc/chrony/conf.d/runbook.conf"
CHRONY_DEFAULTS = "/etc/default/chrony"
MANAGED_FILES = (SYSCTL_FILE, MODULES_FILE, SSHD_DROPIN, CHRONY_DROPIN, CHRONY_DEFAULTS, "/etc/hosts", "/etc/hostname")


# -- shapes ------------------------------------------------------------------------------------

class OsRelease(TypedDict):
    id: str
    version_id: str
    pretty_name: str


class Memory(TypedDict):
    total_mb: int
    available_mb: int


class Filesystem(TypedDict):
    filesystem: str
    size_gb: float
    free_gb: float
    mount: str


class Disks(TypedDict):
    root: Optional[Filesystem]
    data: Optional[Filesystem]
    data_on_root: bool


class Swap(TypedDict):
    active: list[str]
    fstab: list[str]


class Sysctls(TypedDict):
    live: dict[str, Optional[str]]
    configured: dict[str, str]


class Modules(TypedDict):
    available: dict[str, bool]
    configured: list[str]


class Runtime(TypedDict):
    docker_engine: Optional[str]
    docker_client: Optional[str]
    containerd: Optional[str]


class User(TypedDict):
    user: str
    groups: list[str]


class TimeSync(TypedDict):
    running: Optional[str]
    servers: list[str]
    chrony_installed: bool
    service: str  # what systemctl says of chrony: active, inactive, failed, unknown


class Hostname(TypedDict):
    running: str
    configured: str


class DeployUser(TypedDict):
    exists: bool
    groups: list[str]
    authorized_keys: list[str]


class HostFacts(TypedDict):
    """Everything the VM phase reads from one host."""

    os_release: OsRelease
    kernel: str
    cpus: Optional[int]
    memory: Memory
    disks: Disks
    swap: Swap
    sysctls: Sysctls
    modules: Modules
    runtime: Runtime
    user: User
    time_sync: TimeSync
    hostname: Hostname
    resolution: dict[str, str]
    listening: list[str]
    sshd: dict[str, str]
    deploy_user: DeployUser
    managed_files: dict[str, Optional[str]]


# -- parsers -----------------------------------------------------------------------------------

def parse_os_release(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            values[k.strip()] = v.strip().strip('"')
    return {"id": values.get("ID", ""), "version_id": values.get("VERSION_ID", ""),
            "pretty_name": values.get("PRETTY_NAME", "")}


def parse_first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def parse_int(text: str) -> int | None:
    first = parse_first_line(text)
    return int(first) if first.isdigit() else None


def parse_meminfo(text: str) -> dict:
    kb = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if m:
            kb[m.group(1)] = int(m.group(2))
    return {"total_mb": kb.get("MemTotal", 0) // 1024, "available_mb": kb.get("MemAvailable", 0) // 1024}


def parse_df(text: str) -> dict:
    """``df -P -B1 / /var/lib``: the root filesystem and the data one (where /var/lib lives)."""
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[1].isdigit():
            rows.append({"filesystem": parts[0], "size_gb": round(int(parts[1]) / 1e9, 1),
                         "free_gb": round(int(parts[3]) / 1e9, 1), "mount": parts[5]})
    root = rows[0] if rows else None
    data = rows[1] if len(rows) > 1 else root
    return {"root": root, "data": data, "data_on_root": bool(root and data and data["mount"] == root["mount"])}


def parse_swap(text: str) -> dict:
    s = _sections(text)
    active = [line.split()[0] for line in s.get("", []) if line.strip() and not line.startswith("Filename")]
    fstab = [line.strip() for line in s.get("fstab", []) if line.strip()]
    return {"active": active, "fstab": fstab}


def parse_sysctls(text: str) -> dict:
    s = _sections(text)
    live = {}
    for line in s.get("", []):
        if "=" in line:
            k, _, v = line.partition("=")
            live[k.strip().replace("/", ".")] = None if v.strip() == "missing" else v.strip()
    configured = {}
    for line in s.get("configured", []):
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, _, v = line.partition("=")
            configured[k.strip().replace("/", ".")] = v.strip()
    return {"live": live, "configured": configured}


def parse_modules(text: str) -> dict:
    """Whether br_netfilter and overlay work now (loaded or built in), and which load at boot."""
    s = _sections(text)
    loaded = {line.split()[0] for line in s.get("", []) if line.strip()}
    filesystems = {line.split()[-1] for line in s.get("fs", []) if line.strip()}
    bridge = any(line.strip() == "present" for line in s.get("bridge", []))
    configured = [line.split("#", 1)[0].strip() for line in s.get("configured", [])]
    return {"available": {"br_netfilter": "br_netfilter" in loaded or bridge,
                          "overlay": "overlay" in loaded or "overlay" in filesystems},
            "configured": sorted({c for c in configured if c})}


def parse_runtime(text: str) -> dict:
    s = _sections(text)
    engine = parse_first_line("\n".join(s.get("", [])))
    client = re.search(r"version\s+([\d.]+)", "\n".join(s.get("client", [])), re.I)
    containerd = re.search(r"\s(v?[\d.]+)", "\n".join(s.get("containerd", [])))
    return {"docker_engine": engine if re.match(r"^\d+\.\d+", engine) else None,
            "docker_client": client.group(1) if client else None,
            "containerd": containerd.group(1).lstrip("v") if containerd else None}


def parse_user(text: str) -> dict:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"user": lines[0] if lines else "", "groups": lines[1].split() if len(lines) > 1 else []}


def parse_time_sync(text: str) -> dict:
    s = _sections(text)
    running = [line.split(":", 1)[1] for line in s.get("", []) if line.startswith("running:")]
    servers = [line.split()[1] for line in s.get("servers", []) if len(line.split()) > 1]
    installed = [line.strip() for line in s.get("installed", []) if line.strip()]
    service = next((line.strip() for line in s.get("service", []) if line.strip()), "unknown")
    return {"running": running[0] if running else None, "servers": servers, "chrony_installed": bool(installed),
            "service": service}


def parse_hostname(text: str) -> dict:
    lines = [line.strip() for line in text.splitlines()]
    return {"running": lines[0] if lines else "", "configured": lines[1] if len(lines) > 1 else ""}


def parse_resolution(text: str) -> dict:
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        for name in parts[1:]:
            out.setdefault(name, parts[0])
    return out


def parse_listening(text: str) -> list[str]:
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.add(parts[3])
    return sorted(out)


def parse_sshd(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            out[parts[0].lower()] = parts[1].strip()
    return out


def parse_deploy_user(text: str) -> dict:
    s = _sections(text)
    passwd = [line for line in s.get("", []) if line.strip()]
    groups = " ".join(s.get("groups", [])).split()
    keys = [line.strip() for line in s.get("keys", []) if line.strip()]
    return {"exists": bool(passwd), "groups": groups, "authorized_keys": keys}


def parse_files(text: str) -> dict:
    """``@@FILE <path> present <base64>`` / ``@@FILE <path> absent`` lines -> {path: content or None}.

    Contents travel base64-encoded so that any byte, and a missing final newline, survive intact.
    """
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "@@FILE":
            out[parts[1]] = base64.b64decode(parts[3]).decode(errors="replace") if parts[2] == "present" and len(parts) > 3 \
                else ("" if parts[2] == "present" else None)
    return out


FACTS: tuple[Fact, ...] = (
    Fact("os_release", "distribution and version", "cat /etc/os-release", parse_os_release,
         {"id": "", "version_id": "", "pretty_name": ""}),
    Fact("kernel", "running kernel", "uname -r", parse_first_line, ""),
    Fact("cpus", "CPU count", "nproc", parse_int, None),
    Fact("memory", "memory in MB", "cat /proc/meminfo", parse_meminfo, {"total_mb": 0, "available_mb": 0}),
    Fact("disks", "root and data filesystems", "df -P -B1 / /var/lib", parse_df,
         {"root": None, "data": None, "data_on_root": False}),
    Fact("swap", "active swap and swap in fstab",
         "cat /proc/swaps; echo --fstab--; awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab", parse_swap,
         {"active": [], "fstab": []}),
    Fact("sysctls", "Kubernetes sysctls, live and configured",
         "for k in net/bridge/bridge-nf-call-iptables net/ipv4/ip_forward; do printf '%s=' $k; "
         "cat /proc/sys/$k 2>/dev/null || echo missing; done; echo --configured--; "
         "cat /etc/sysctl.conf /etc/sysctl.d/*.conf 2>/dev/null", parse_sysctls, {"live": {}, "configured": {}}),
    Fact("modules", "br_netfilter and overlay, now and at boot",
         "cat /proc/modules 2>/dev/null; echo --fs--; cat /proc/filesystems; echo --bridge--; "
         "test -e /proc/sys/net/bridge && echo present; echo --configured--; "
         "cat /etc/modules /etc/modules-load.d/*.conf 2>/dev/null", parse_modules,
         {"available": {"br_netfilter": False, "overlay": False}, "configured": []}),
    Fact("runtime", "container runtime (Docker engine for RKE1)",
         "timeout 5 docker version --format '{{{{.Server.Version}}}}' 2>/dev/null; echo --client--; "
         "docker --version 2>/dev/null; echo --containerd--; containerd --version 2>/dev/null", parse_runtime,
         {"docker_engine": None, "docker_client": None, "containerd": None}),
    Fact("user", "the SSH user and its groups", "id -un; id -nG", parse_user, {"user": "", "groups": []}),
    Fact("time_sync", "time synchronisation daemon, servers and chrony's service state",
         "for p in chronyd ntpd systemd-timesyncd openntpd; do pgrep -x $p >/dev/null && echo running:$p; done; "
         "echo --servers--; grep -hE '^(server|pool) ' /etc/chrony/chrony.conf /etc/chrony/conf.d/*.conf 2>/dev/null; "
         "echo --installed--; command -v chronyd; echo --service--; systemctl is-active chrony 2>/dev/null",
         parse_time_sync, {"running": None, "servers": [], "chrony_installed": False, "service": "unknown"}),
    Fact("hostname", "running and configured host name", "hostname; cat /etc/hostname", parse_hostname,
         {"running": "", "configured": ""}),
    Fact("resolution", "how the other nodes' names resolve", "getent hosts {others}", parse_resolution, {}),
    Fact("listening", "listening TCP sockets", "ss -Htln", parse_listening, []),
    Fact("sshd", "effective sshd settings",
         "test -d /run/sshd && sshd -T 2>/dev/null | grep -E '^(passwordauthentication|permitrootlogin|"
         "kbdinteractiveauthentication|pubkeyauthentication) '", parse_sshd, {}),
    Fact("deploy_user", "the deploy user, its groups and keys",
         "getent passwd {deploy_user}; echo --groups--; id -nG {deploy_user} 2>/dev/null; echo --keys--; "
         "cat ~{deploy_user}/.ssh/authorized_keys 2>/dev/null", parse_deploy_user,
         {"exists": False, "groups": [], "authorized_keys": []}),
    Fact("managed_files", "contents of the files the baseline manages",
         "for f in " + " ".join(MANAGED_FILES) + "; do if [ -f $f ]; then echo \"@@FILE $f present $(base64 -w0 < $f)\"; "
         "else echo \"@@FILE $f absent\"; fi; done", parse_files, {}),
)
FACTS_BY_NAME = {f.name: f for f in FACTS}


def fact_set(params) -> FactSet:
    """The VM facts with their placeholders filled for ``params`` (the other nodes, the deploy user)."""
    deploy = params.vm.deploy_user.name if params.vm.deploy_user else "nobody-runbook-unset"

    def context(host: Host) -> dict[str, str]:
        others = " ".join(h.name for h in params.hosts if h.name != host.name) or host.name
        return {"others": others, "deploy_user": shlex.quote(deploy)}

    return FactSet(FACTS, context)


def gather(params, fleet, hosts: list[Host] | None = None, names: tuple[str, ...] | None = None) -> Gathered:
    """Facts of every host (or ``hosts``), in parallel: ``(facts, errors, fact_errors)``."""
    return fact_set(params).gather(fleet, hosts if hosts is not None else params.hosts, names)


def fact_rows(facts: dict[str, HostFacts]) -> list[dict]:
    """A summary row per host for display."""
    rows = []
    for host, f in facts.items():
        root = f["disks"]["root"] or {"size_gb": "?", "free_gb": "?"}
        rt = f["runtime"]
        rows.append({
            "host": host,
            "os": f["os_release"]["pretty_name"],
            "kernel": f["kernel"],
            "cpus": f["cpus"],
            "memory GB": round(f["memory"]["total_mb"] / 1024, 1),
            "root GB (free)": f"{root['size_gb']} ({root['free_gb']})",
            "swap": "on" if f["swap"]["active"] else "off",
            "docker": rt["docker_engine"] or ("client only" if rt["docker_client"] else "none"),
            "time sync": f["time_sync"]["running"] or "none",
            "listening": ", ".join(f["listening"]),
        })
    return rows
