"""Facts: small named units, each a shell command and a parser of its output.

All facts of a host are gathered in one SSH command (sections separated by markers), so the cost
is one round trip per host, in parallel across hosts. Parsers are pure functions of the command's
output: tests feed them recorded outputs (``tests/data/facts/``).
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from ..params import Host, Params

MARK = "@@RBFACT"

# Files the baseline manages; the ``managed_files`` fact reads them so plans can compare contents.
SYSCTL_FILE = "/etc/sysctl.d/90-kubernetes.conf"
MODULES_FILE = "/etc/modules-load.d/kubernetes.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-runbook-hardening.conf"
CHRONY_DROPIN = "/etc/chrony/conf.d/runbook.conf"
MANAGED_FILES = (SYSCTL_FILE, MODULES_FILE, SSHD_DROPIN, CHRONY_DROPIN, "/etc/hosts", "/etc/hostname")


@dataclass(frozen=True)
class Fact:
    name: str
    description: str
    command: str  # may use {others} (other nodes' names) and {deploy_user}
    process: Callable[[str], Any]


def _sections(text: str, sep: str = "--") -> dict[str, list[str]]:
    """Split output on ``--name--`` lines into named line lists (the first part is ``""``)."""
    out: dict[str, list[str]] = {"": []}
    key = ""
    for line in text.splitlines():
        m = re.fullmatch(rf"{sep}(\w+){sep}", line.strip())
        if m:
            key = m.group(1)
            out[key] = []
        else:
            out[key].append(line)
    return out


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
    return {"running": running[0] if running else None, "servers": servers, "chrony_installed": bool(installed)}


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
    Fact("os_release", "distribution and version", "cat /etc/os-release", parse_os_release),
    Fact("kernel", "running kernel", "uname -r", parse_first_line),
    Fact("cpus", "CPU count", "nproc", parse_int),
    Fact("memory", "memory in MB", "cat /proc/meminfo", parse_meminfo),
    Fact("disks", "root and data filesystems", "df -P -B1 / /var/lib", parse_df),
    Fact("swap", "active swap and swap in fstab",
         "cat /proc/swaps; echo --fstab--; awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab", parse_swap),
    Fact("sysctls", "Kubernetes sysctls, live and configured",
         "for k in net/bridge/bridge-nf-call-iptables net/ipv4/ip_forward; do printf '%s=' $k; "
         "cat /proc/sys/$k 2>/dev/null || echo missing; done; echo --configured--; "
         "cat /etc/sysctl.conf /etc/sysctl.d/*.conf 2>/dev/null", parse_sysctls),
    Fact("modules", "br_netfilter and overlay, now and at boot",
         "cat /proc/modules 2>/dev/null; echo --fs--; cat /proc/filesystems; echo --bridge--; "
         "test -e /proc/sys/net/bridge && echo present; echo --configured--; "
         "cat /etc/modules /etc/modules-load.d/*.conf 2>/dev/null", parse_modules),
    Fact("runtime", "container runtime (Docker engine for RKE1)",
         "timeout 5 docker version --format '{{{{.Server.Version}}}}' 2>/dev/null; echo --client--; "
         "docker --version 2>/dev/null; echo --containerd--; containerd --version 2>/dev/null", parse_runtime),
    Fact("user", "the SSH user and its groups", "id -un; id -nG", parse_user),
    Fact("time_sync", "time synchronisation daemon and servers",
         "for p in chronyd ntpd systemd-timesyncd openntpd; do pgrep -x $p >/dev/null && echo running:$p; done; "
         "echo --servers--; grep -hE '^(server|pool) ' /etc/chrony/chrony.conf /etc/chrony/conf.d/*.conf 2>/dev/null; "
         "echo --installed--; command -v chronyd", parse_time_sync),
    Fact("hostname", "running and configured host name", "hostname; cat /etc/hostname", parse_hostname),
    Fact("resolution", "how the other nodes' names resolve", "getent hosts {others}", parse_resolution),
    Fact("listening", "listening TCP sockets", "ss -Htln", parse_listening),
    Fact("sshd", "effective sshd settings",
         "test -d /run/sshd && sshd -T 2>/dev/null | grep -E '^(passwordauthentication|permitrootlogin|"
         "kbdinteractiveauthentication|pubkeyauthentication) '", parse_sshd),
    Fact("deploy_user", "the deploy user, its groups and keys",
         "getent passwd {deploy_user}; echo --groups--; id -nG {deploy_user} 2>/dev/null; echo --keys--; "
         "cat ~{deploy_user}/.ssh/authorized_keys 2>/dev/null", parse_deploy_user),
    Fact("managed_files", "contents of the files the baseline manages",
         "for f in " + " ".join(MANAGED_FILES) + "; do if [ -f $f ]; then echo \"@@FILE $f present $(base64 -w0 < $f)\"; "
         "else echo \"@@FILE $f absent\"; fi; done", parse_files),
)
FACTS_BY_NAME = {f.name: f for f in FACTS}


def host_script(params: Params, host: Host, names: tuple[str, ...] | None = None) -> str:
    """One shell script gathering the chosen facts on ``host``, each section marked."""
    others = " ".join(h.name for h in params.hosts if h.name != host.name) or host.name
    deploy = params.vm.deploy_user.name if params.vm.deploy_user else "nobody-runbook-unset"
    parts = []
    for fact in FACTS:
        if names and fact.name not in names:
            continue
        cmd = fact.command.format(others=others, deploy_user=shlex.quote(deploy))
        parts.append(f"echo '{MARK} {fact.name}'; ( {cmd} ) 2>/dev/null; echo \"{MARK}-rc $?\"")
    return "\n".join(parts)


def parse_host_output(stdout: str) -> dict[str, Any]:
    """Split a host's combined output into facts, each parsed by its own parser."""
    facts: dict[str, Any] = {}
    current, buf = None, []
    for line in stdout.splitlines(keepends=True):
        if line.startswith(MARK + " "):
            current, buf = line.split()[1], []
        elif line.startswith(MARK + "-rc ") and current:
            fact = FACTS_BY_NAME[current]
            try:
                facts[current] = fact.process("".join(buf))
            except Exception as e:  # a parser bug must not hide the other facts
                facts[current] = {"error": f"{type(e).__name__}: {e}"}
            current = None
        elif current:
            buf.append(line)
    return facts


def gather(fleet, hosts: list[Host] | None = None, names: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Facts of every host, in parallel. Returns (facts by host, errors by host)."""
    params = fleet.params
    targets = hosts if hosts is not None else params.hosts
    results = fleet.run(lambda h: host_script(params, h, names), hosts=targets, desc="gather facts")
    facts, errors = {}, {}
    for name, result in results.items():
        if result.ok or (result.stdout and MARK in result.stdout):
            facts[name] = parse_host_output(result.stdout)
        else:
            errors[name] = result.error
    return facts, errors


def fact_rows(facts: dict[str, dict]) -> list[dict]:
    """A summary row per host for display."""
    rows = []
    for host, f in facts.items():
        disks = f.get("disks", {}) or {}
        root = disks.get("root") or {}
        rt = f.get("runtime", {}) or {}
        rows.append({
            "host": host,
            "os": f.get("os_release", {}).get("pretty_name", ""),
            "kernel": f.get("kernel", ""),
            "cpus": f.get("cpus"),
            "memory GB": round((f.get("memory", {}) or {}).get("total_mb", 0) / 1024, 1),
            "root GB (free)": f"{root.get('size_gb', '?')} ({root.get('free_gb', '?')})",
            "swap": "on" if (f.get("swap", {}) or {}).get("active") else "off",
            "docker": rt.get("docker_engine") or ("client only" if rt.get("docker_client") else "none"),
            "time sync": (f.get("time_sync", {}) or {}).get("running") or "none",
            "listening": ", ".join(f.get("listening", []) or []),
        })
    return rows
