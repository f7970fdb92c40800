"""The VM baseline: operations named after the state they ensure, planned from facts.

Each operation looks at a host's facts and returns the steps still needed, so a host that is
already right yields nothing: a plan is the operations' output, applying is running it, and a
second apply finds nothing to do. Every applied step is recorded in the run's change log.

Steps are single shell commands that are safe to repeat; files are written whole, atomically
(temporary file, then rename). Each step carries how to roll it back.
"""

from __future__ import annotations

import base64
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..params import Host, Params
from .facts import CHRONY_DROPIN, MODULES_FILE, SSHD_DROPIN, SYSCTL_FILE
from .readiness import K8S_ROLES

HOSTS_BEGIN = "# BEGIN runbooklib cluster hosts (managed: edit the parameter file, not this block)"
HOSTS_END = "# END runbooklib cluster hosts"
SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1", "net.ipv4.ip_forward": "1"}
MODULES = ("br_netfilter", "overlay")
SSHD_SETTINGS = {"PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
                 "PermitRootLogin": "prohibit-password", "PubkeyAuthentication": "yes"}
HAS_SYSTEMD = "[ -d /run/systemd/system ]"


@dataclass(frozen=True)
class Step:
    host: str
    operation: str
    change: str  # what will be different afterwards, for people
    command: str | None  # None: cannot be done automatically (``blocked`` says why)
    rollback: str = ""
    blocked: str = ""


@dataclass
class HostApply:
    host: str
    applied: list[Step] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def write_file(path: str, content: str, mode: str = "0644") -> str:
    """A command that writes ``content`` to ``path`` atomically (no quoting pitfalls: base64)."""
    data = base64.b64encode(content.encode()).decode()
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".runbook-tmp")
    return (f"mkdir -p $(dirname {p}) && echo {data} | base64 -d > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}")


def desired_files(p: Params) -> dict[str, str]:
    """The drop-in files the baseline owns, with the exact contents it writes (empty chrony list: none)."""
    files = {
        SYSCTL_FILE: "# Kubernetes networking (written by runbooklib)\n" + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items()),
        MODULES_FILE: "# Kubernetes (written by runbooklib)\n" + "".join(m + "\n" for m in MODULES),
        SSHD_DROPIN: "# SSH hardening (written by runbooklib): keys only\n" + "".join(f"{k} {v}\n" for k, v in SSHD_SETTINGS.items()),
    }
    if p.vm.ntp_servers:
        files[CHRONY_DROPIN] = "# NTP servers (written by runbooklib)\n" + "".join(f"server {s} iburst\n" for s in p.vm.ntp_servers)
    return files


def _is_k8s(host: Host) -> bool:
    return bool(set(host.roles) & set(K8S_ROLES))


def _file(facts: dict, path: str) -> str | None:
    return (facts.get("managed_files") or {}).get(path)


# -- operations --------------------------------------------------------------------------------

def swap_disabled(p: Params, h: Host, f: dict) -> list[Step]:
    if not _is_k8s(h):
        return []
    swap = f.get("swap") or {}
    steps = []
    if swap.get("active"):
        steps.append(Step(h.name, "swap disabled", f"turn off swap ({', '.join(swap['active'])})", "swapoff -a",
                          "swapon -a"))
    if swap.get("fstab"):
        steps.append(Step(h.name, "swap disabled", "comment out swap in /etc/fstab (backup /etc/fstab.runbook-bak)",
                          r"cp -a /etc/fstab /etc/fstab.runbook-bak && "
                          r"sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/# disabled by runbook: /' /etc/fstab",
                          "cp /etc/fstab.runbook-bak /etc/fstab"))
    return steps


def kubernetes_sysctls(p: Params, h: Host, f: dict) -> list[Step]:
    if not _is_k8s(h):
        return []
    want = desired_files(p)[SYSCTL_FILE]
    steps = []
    if _file(f, SYSCTL_FILE) != want:
        steps.append(Step(h.name, "kubernetes sysctls", f"write {SYSCTL_FILE}", write_file(SYSCTL_FILE, want),
                          f"rm {SYSCTL_FILE}"))
    live = (f.get("sysctls") or {}).get("live") or {}
    wrong = [k for k, v in SYSCTLS.items() if live.get(k) != v]
    if wrong:
        steps.append(Step(h.name, "kubernetes sysctls", f"set {', '.join(wrong)} to 1 now",
                          " && ".join(f"sysctl -q -w {k}={SYSCTLS[k]}" for k in wrong),
                          " ; ".join(f"sysctl -w {k}={live.get(k) or 0}" for k in wrong)))
    return steps


def kernel_modules(p: Params, h: Host, f: dict) -> list[Step]:
    if not _is_k8s(h):
        return []
    want = desired_files(p)[MODULES_FILE]
    m = f.get("modules") or {}
    steps = []
    if _file(f, MODULES_FILE) != want:
        steps.append(Step(h.name, "kernel modules", f"write {MODULES_FILE}", write_file(MODULES_FILE, want),
                          f"rm {MODULES_FILE}"))
    for mod in MODULES:
        if not (m.get("available") or {}).get(mod):
            steps.append(Step(h.name, "kernel modules", f"load {mod}", f"modprobe {mod}", f"modprobe -r {mod}"))
    return steps


def hostname_set(p: Params, h: Host, f: dict) -> list[Step]:
    hn = f.get("hostname") or {}
    steps = []
    if hn.get("configured") != h.name:
        steps.append(Step(h.name, "hostname", f"/etc/hostname: {hn.get('configured')!r} -> {h.name!r}",
                          write_file("/etc/hostname", h.name + "\n"), f"echo {shlex.quote(hn.get('configured') or '')} > /etc/hostname"))
    if hn.get("running") != h.name:
        steps.append(Step(h.name, "hostname", f"host name {hn.get('running')!r} -> {h.name!r}", f"hostname {h.name}",
                          f"hostname {shlex.quote(hn.get('running') or '')}"))
    return steps


def hosts_block(p: Params) -> str:
    lines = [HOSTS_BEGIN] + [f"{host.address} {host.name}" for host in p.hosts] + [HOSTS_END]
    return "\n".join(lines) + "\n"


def cluster_hosts_file(p: Params, h: Host, f: dict) -> list[Step]:
    current = _file(f, "/etc/hosts") or ""
    kept, inside = [], False
    for line in current.splitlines():
        if line.strip() == HOSTS_BEGIN:
            inside = True
        elif line.strip() == HOSTS_END:
            inside = False
        elif not inside:
            kept.append(line)
    want = "\n".join(kept).rstrip("\n") + "\n" + hosts_block(p)
    if current == want:
        return []
    return [Step(h.name, "cluster hosts", f"/etc/hosts: managed block with the {len(p.hosts)} inventory hosts",
                 "cp -a /etc/hosts /etc/hosts.runbook-bak && " + write_file("/etc/hosts", want),
                 "cp /etc/hosts.runbook-bak /etc/hosts")]


def ssh_hardened(p: Params, h: Host, f: dict) -> list[Step]:
    want = desired_files(p)[SSHD_DROPIN]
    if _file(f, SSHD_DROPIN) == want:
        return []
    q = shlex.quote(SSHD_DROPIN)
    # validate with sshd -t before sshd ever reads it; put the old file back if invalid
    command = (f"(cp -a {q} {q}.runbook-old 2>/dev/null || true) && {write_file(SSHD_DROPIN, want)} && "
               f"if ! sshd -t; then (mv -f {q}.runbook-old {q} 2>/dev/null || rm -f {q}); "
               "echo 'sshd -t rejected the hardened configuration; nothing changed' >&2; exit 1; fi; "
               f"rm -f {q}.runbook-old; "
               f"if {HAS_SYSTEMD}; then systemctl reload ssh; elif [ -f /run/sshd.pid ]; then kill -HUP $(cat /run/sshd.pid); fi")
    return [Step(h.name, "ssh hardened", "sshd: keys only (" + ", ".join(f"{k} {v}" for k, v in SSHD_SETTINGS.items()) + ")",
                 command, f"rm {SSHD_DROPIN} and reload sshd")]


def deploy_user_present(p: Params, h: Host, f: dict) -> list[Step]:
    du = p.vm.deploy_user
    if du is None:
        return []
    fact = f.get("deploy_user") or {}
    name = shlex.quote(du.name)
    steps = []
    if not fact.get("exists"):
        steps.append(Step(h.name, "deploy user", f"create user {du.name}", f"useradd -m -s /bin/bash {name}",
                          f"userdel -r {name}"))
    missing = [g for g in du.groups if g not in fact.get("groups", [])]
    if missing:
        steps.append(Step(h.name, "deploy user", f"add {du.name} to {', '.join(missing)}",
                          " && ".join(f"(getent group {shlex.quote(g)} >/dev/null || groupadd {shlex.quote(g)})" for g in missing)
                          + f" && usermod -aG {','.join(shlex.quote(g) for g in missing)} {name}",
                          f"gpasswd -d {name} GROUP for each of {', '.join(missing)}"))
    key = du.public_key(p.source_dir)
    if key not in fact.get("authorized_keys", []):
        qk = shlex.quote(key)
        steps.append(Step(h.name, "deploy user", f"authorize the deploy key for {du.name}",
                          f"home=$(getent passwd {name} | cut -d: -f6) && install -d -m 700 -o {name} -g {name} $home/.ssh && "
                          f"touch $home/.ssh/authorized_keys && (grep -qxF {qk} $home/.ssh/authorized_keys || echo {qk} >> "
                          f"$home/.ssh/authorized_keys) && chown {name}: $home/.ssh/authorized_keys && chmod 600 $home/.ssh/authorized_keys",
                          "remove the key line from ~deploy/.ssh/authorized_keys"))
    return steps


def time_synced(p: Params, h: Host, f: dict) -> list[Step]:
    ts = f.get("time_sync") or {}
    if ts.get("running") and ts["running"] != "chronyd":
        return []  # another daemon keeps time; leave it alone
    if not ts.get("chrony_installed"):
        return [Step(h.name, "time synced", "install chrony", None,
                     blocked="chrony is not installed; install it from your mirror (apt-get install chrony)")]
    steps = []
    changed = False
    if p.vm.ntp_servers:
        want = desired_files(p)[CHRONY_DROPIN]
        if _file(f, CHRONY_DROPIN) != want:
            steps.append(Step(h.name, "time synced", f"chrony servers: {', '.join(p.vm.ntp_servers)}",
                              write_file(CHRONY_DROPIN, want), f"rm {CHRONY_DROPIN}"))
            changed = True
    flag = "" if p.vm.time_sync_controls_clock else " -x"
    start = (f"if {HAS_SYSTEMD}; then systemctl enable chrony && systemctl restart chrony; "
             f"else pkill -x chronyd; sleep 0.2; setsid chronyd{flag} </dev/null >/dev/null 2>&1; fi; "
             "for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -x chronyd >/dev/null && exit 0; sleep 0.2; done; "
             "echo 'chronyd did not start' >&2; exit 1")
    if not ts.get("running"):
        steps.append(Step(h.name, "time synced", "start chronyd" + (" (without touching the shared clock)" if flag else ""),
                          start, "stop chronyd"))
    elif changed:
        steps.append(Step(h.name, "time synced", "restart chronyd with the new servers", start, "restart chronyd"))
    return steps


OPERATIONS: tuple[Callable[[Params, Host, dict], list[Step]], ...] = (
    swap_disabled, kubernetes_sysctls, kernel_modules, hostname_set, cluster_hosts_file, ssh_hardened,
    deploy_user_present, time_synced,
)


def plan(params: Params, facts: dict[str, dict]) -> list[Step]:
    """Every step still needed, host by host, in operation order. Empty: nothing to do."""
    steps = []
    for host in params.hosts:
        if host.name in facts:
            for op in OPERATIONS:
                steps.extend(op(params, host, facts[host.name]))
    return steps


def plan_rows(steps: list[Step]) -> list[dict]:
    return [{"host": s.host, "operation": s.operation, "change": s.change if s.command else f"BLOCKED: {s.blocked}",
             "rollback": s.rollback} for s in steps]


def apply(fleet, steps: list[Step], record: Callable[[str, str, str], object] | None = None,
          on_step: Callable[[Step], None] | None = None) -> dict[str, HostApply]:
    """Run the steps: hosts in parallel, each host's steps in order, stopping a host at its first failure.

    ``record(host, action, detail)`` is called after each step that succeeded (the run's change log).
    """
    by_host: dict[str, list[Step]] = {}
    for s in steps:
        by_host.setdefault(s.host, []).append(s)
    hosts = {h.name: h for h in fleet.params.hosts}
    lock = threading.Lock()
    bar = fleet._bar(len(steps), "apply baseline") if steps else None

    def run_host(name: str) -> HostApply:
        result = HostApply(name)
        for step in by_host[name]:
            if step.command is None:
                result.error = f"{name}: {step.operation}: {step.blocked}"
                break
            if on_step:
                on_step(step)
            r = fleet.run_on(hosts[name], step.command)
            if not r.ok:
                detail = r.stderr.strip()[-300:] if r.exit_code is not None else ""
                result.error = f"{name}: {step.operation} ({step.change}) failed: {r.error}" + (
                    f"; {detail}" if detail and detail not in r.error else "")
                break
            result.applied.append(step)
            if record:
                record(name, step.operation, step.change)
            with lock:
                if bar is not None:
                    bar.update(1)
        return result

    with ThreadPoolExecutor(max_workers=min(fleet.ssh.parallelism, max(len(by_host), 1))) as pool:
        results = dict(zip(by_host, pool.map(run_host, by_host)))
    if bar is not None:
        bar.close()
    return results


def result_rows(results: dict[str, HostApply]) -> list[dict]:
    return [{"host": h, "steps applied": len(r.applied), "result": "ok" if r.ok else r.error} for h, r in results.items()]


def problems(results: dict[str, HostApply], unreachable: dict[str, str]) -> list[str]:
    """Why the baseline is incomplete: hosts whose apply stopped, hosts that could not be reached."""
    return [r.error for r in results.values() if not r.ok] + [f"{h}: unreachable: {e}" for h, e in unreachable.items()]
