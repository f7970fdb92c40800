"""The VM baseline: operations named after the state they ensure, planned from facts.

Each operation looks at one host's facts and returns the steps still needed, so a host that is
already right yields nothing: a plan is the operations' output, applying is running it, and a
second apply finds nothing to do. Steps are single shell commands that are safe to repeat; files
are written whole, atomically (temporary file, then rename), and carry a diff against the host's
current file. Services are managed as on any Debian VM, with ``systemctl``.
"""

from __future__ import annotations

import shlex

from ..phase.steps import Operation, Step, file_diff, operation, write_file
from .facts import CHRONY_DEFAULTS, CHRONY_DROPIN, MODULES_FILE, SSHD_DROPIN, SYSCTL_FILE

HOSTS_BEGIN = "# BEGIN runbooklib cluster hosts (managed: edit the parameter file, not this block)"
HOSTS_END = "# END runbooklib cluster hosts"
SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1", "net.ipv4.ip_forward": "1"}
MODULES = ("br_netfilter", "overlay")
SSHD_SETTINGS = {"PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
                 "PermitRootLogin": "prohibit-password", "PubkeyAuthentication": "yes"}
# chronyd options when it must not set the clock (a kernel clock shared with other systems)
CHRONY_NO_CLOCK_OPTIONS = 'DAEMON_OPTS="-F 1 -x"'


def desired_files(p) -> dict[str, str]:
    """The drop-in files the baseline owns, with the exact contents it writes."""
    files = {
        SYSCTL_FILE: "# Kubernetes networking (written by runbooklib)\n" + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items()),
        MODULES_FILE: "# Kubernetes (written by runbooklib)\n" + "".join(m + "\n" for m in MODULES),
        SSHD_DROPIN: "# SSH hardening (written by runbooklib): keys only\n" + "".join(f"{k} {v}\n" for k, v in SSHD_SETTINGS.items()),
    }
    if p.vm.ntp_servers:
        files[CHRONY_DROPIN] = "# NTP servers (written by runbooklib)\n" + "".join(f"server {s} iburst\n" for s in p.vm.ntp_servers)
    if not p.vm.time_sync_controls_clock:
        files[CHRONY_DEFAULTS] = ("# written by runbooklib: the kernel clock is shared, chronyd must not set it "
                                  "(vm.time_sync_controls_clock: false)\n" + CHRONY_NO_CLOCK_OPTIONS + "\n")
    return files


def _current(f: dict, path: str) -> str | None:
    return f["managed_files"].get(path)


def _file_step(host, op: str, path: str, want: str, f: dict, undo: str | None, undo_note: str = "") -> Step:
    current = _current(f, path)
    verb = "write" if current is None else "update"
    return Step(host.name, op, f"{verb} {path}", write_file(path, want), undo, undo_note, diff=file_diff(path, current, want))


def _dropin(p, h, f: dict, op: str, path: str) -> list[Step]:
    """The step that writes one of the baseline's own drop-in files, unless the host has it as desired."""
    want, current = desired_files(p)[path], _current(f, path)
    if current == want:
        return []
    if current is None:
        return [_file_step(h, op, path, want, f, f"rm -f {path}")]
    return [_file_step(h, op, path, want, f, None, f"put back the old {path} (its lines are in the diff)")]


# -- operations --------------------------------------------------------------------------------

@operation("swap disabled", touches="`/etc/fstab` (backup `/etc/fstab.runbook-bak`)",
           undo="restore the backup, `swapon -a`")
def swap_disabled(p, h, f) -> list[Step]:
    if not h.in_cluster:
        return []
    swap = f["swap"]
    steps = []
    if swap["active"]:
        steps.append(Step(h.name, "swap disabled", f"turn off swap ({', '.join(swap['active'])})", "swapoff -a",
                          "swapon -a"))
    if swap["fstab"]:
        steps.append(Step(h.name, "swap disabled", "comment out swap in /etc/fstab (backup /etc/fstab.runbook-bak)",
                          r"cp -a /etc/fstab /etc/fstab.runbook-bak && "
                          r"sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/# disabled by runbook: /' /etc/fstab",
                          "cp /etc/fstab.runbook-bak /etc/fstab"))
    return steps


@operation("kubernetes sysctls", touches=f"`{SYSCTL_FILE}`, live sysctls", undo="remove the file, `sysctl --system`")
def kubernetes_sysctls(p, h, f) -> list[Step]:
    if not h.in_cluster:
        return []
    steps = _dropin(p, h, f, "kubernetes sysctls", SYSCTL_FILE)
    live = f["sysctls"]["live"]
    wrong = [k for k, v in SYSCTLS.items() if live.get(k) != v]
    if wrong:
        steps.append(Step(h.name, "kubernetes sysctls", f"set {', '.join(wrong)} to 1 now",
                          " && ".join(f"sysctl -q -w {k}={SYSCTLS[k]}" for k in wrong),
                          " && ".join(f"sysctl -q -w {k}={live.get(k) or 0}" for k in wrong if live.get(k) is not None) or None,
                          "" if all(live.get(k) is not None for k in wrong) else "a sysctl that did not exist stays until reboot"))
    return steps


@operation("kernel modules", touches=f"`{MODULES_FILE}`, loaded modules", undo="remove the file (modules stay loaded until reboot)")
def kernel_modules(p, h, f) -> list[Step]:
    if not h.in_cluster:
        return []
    steps = _dropin(p, h, f, "kernel modules", MODULES_FILE)
    for mod in MODULES:
        if not f["modules"]["available"].get(mod):
            steps.append(Step(h.name, "kernel modules", f"load {mod}", f"modprobe {mod}", f"modprobe -r {mod}"))
    return steps


@operation("hostname", touches="`/etc/hostname`, the running host name", undo="write the old name back (shown per step)")
def hostname_set(p, h, f) -> list[Step]:
    hn = f["hostname"]
    steps = []
    if hn["configured"] != h.name:
        old = hn["configured"]
        steps.append(Step(h.name, "hostname", f"/etc/hostname: {old!r} -> {h.name!r}",
                          write_file("/etc/hostname", h.name + "\n"),
                          write_file("/etc/hostname", old + "\n") if old else "rm -f /etc/hostname",
                          diff=file_diff("/etc/hostname", _current(f, "/etc/hostname"), h.name + "\n")))
    if hn["running"] != h.name:
        steps.append(Step(h.name, "hostname", f"host name {hn['running']!r} -> {h.name!r}", f"hostname {h.name}",
                          f"hostname {shlex.quote(hn['running'])}" if hn["running"] else None,
                          "" if hn["running"] else "the host had no running name"))
    return steps


def hosts_block(p) -> str:
    lines = [HOSTS_BEGIN] + [f"{host.address} {host.name}" for host in p.hosts] + [HOSTS_END]
    return "\n".join(lines) + "\n"


def desired_hosts_file(p, current: str) -> str:
    """``current`` with the managed block replaced by the inventory (everything else kept)."""
    kept, inside = [], False
    for line in current.splitlines():
        if line.strip() == HOSTS_BEGIN:
            inside = True
        elif line.strip() == HOSTS_END:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept).rstrip("\n") + "\n" + hosts_block(p)


@operation("cluster hosts", touches="managed block in `/etc/hosts` (backup `/etc/hosts.runbook-bak`)",
           undo="restore the backup")
def cluster_hosts_file(p, h, f) -> list[Step]:
    current = _current(f, "/etc/hosts") or ""
    want = desired_hosts_file(p, current)
    if current == want:
        return []
    return [Step(h.name, "cluster hosts", f"/etc/hosts: managed block with the {len(p.hosts)} inventory hosts",
                 "cp -a /etc/hosts /etc/hosts.runbook-bak && " + write_file("/etc/hosts", want),
                 "cp /etc/hosts.runbook-bak /etc/hosts", diff=file_diff("/etc/hosts", current, want))]


@operation("ssh hardened", touches=f"`{SSHD_DROPIN}` (validated with `sshd -t` first)", undo="remove it, `systemctl reload ssh`")
def ssh_hardened(p, h, f) -> list[Step]:
    want = desired_files(p)[SSHD_DROPIN]
    if _current(f, SSHD_DROPIN) == want:
        return []
    q = shlex.quote(SSHD_DROPIN)
    # validate with sshd -t before sshd ever reads it; put the old file back if invalid
    command = (f"(cp -a {q} {q}.runbook-old 2>/dev/null || true) && {write_file(SSHD_DROPIN, want)} && "
               f"if ! sshd -t; then (mv -f {q}.runbook-old {q} 2>/dev/null || rm -f {q}); "
               "echo 'sshd -t rejected the hardened configuration; nothing changed' >&2; exit 1; fi; "
               f"rm -f {q}.runbook-old; systemctl reload ssh")
    return [Step(h.name, "ssh hardened", "sshd: keys only (" + ", ".join(f"{k} {v}" for k, v in SSHD_SETTINGS.items()) + ")",
                 command, f"rm -f {q} && systemctl reload ssh",
                 diff=file_diff(SSHD_DROPIN, _current(f, SSHD_DROPIN), want))]


@operation("deploy user", touches="the user, its groups, `~/.ssh/authorized_keys`", undo="`userdel -r <user>`")
def deploy_user_present(p, h, f) -> list[Step]:
    du = p.vm.deploy_user
    if du is None:
        return []
    fact = f["deploy_user"]
    name = shlex.quote(du.name)
    steps = []
    if not fact["exists"]:
        steps.append(Step(h.name, "deploy user", f"create user {du.name}", f"useradd -m -s /bin/bash {name}",
                          f"userdel -r {name}"))
    missing = [g for g in du.groups if g not in fact["groups"]]
    if missing:
        steps.append(Step(h.name, "deploy user", f"add {du.name} to {', '.join(missing)}",
                          " && ".join(f"(getent group {shlex.quote(g)} >/dev/null || groupadd {shlex.quote(g)})" for g in missing)
                          + f" && usermod -aG {','.join(shlex.quote(g) for g in missing)} {name}",
                          " && ".join(f"gpasswd -d {name} {shlex.quote(g)}" for g in missing)))
    for key in [line.strip() for line in du.public_key(p.source_dir).splitlines() if line.strip()]:
        if key in fact["authorized_keys"]:
            continue
        qk = shlex.quote(key)
        label = " ".join(key.split()[2:]) or key.split()[-1][-12:]  # the key's comment, else the end of its blob
        steps.append(Step(h.name, "deploy user", f"authorize the deploy key ({label}) for {du.name}",
                          f"home=$(getent passwd {name} | cut -d: -f6) && install -d -m 700 -o {name} -g {name} $home/.ssh && "
                          f"touch $home/.ssh/authorized_keys && (grep -qxF {qk} $home/.ssh/authorized_keys || echo {qk} >> "
                          f"$home/.ssh/authorized_keys) && chown {name}: $home/.ssh/authorized_keys && chmod 600 $home/.ssh/authorized_keys",
                          None, f"remove the key line from ~{du.name}/.ssh/authorized_keys"))
    return steps


@operation("time synced", touches=f"`{CHRONY_DROPIN}`, `{CHRONY_DEFAULTS}`, the chrony service",
           undo="remove the files, `systemctl restart chrony`")
def time_synced(p, h, f) -> list[Step]:
    ts = f["time_sync"]
    if ts["running"] and ts["running"] != "chronyd":
        return []  # another daemon keeps time; leave it alone
    if not ts["chrony_installed"]:
        return [Step(h.name, "time synced", "install chrony", None,
                     blocked="chrony is not installed; install it from your mirror (apt-get install chrony)")]
    steps = []
    files = desired_files(p)
    for path in (CHRONY_DROPIN, CHRONY_DEFAULTS):
        if path in files and _current(f, path) != files[path]:
            steps.append(_file_step(h, "time synced", path, files[path], f,
                                    f"rm -f {path}" if _current(f, path) is None else None,
                                    "" if _current(f, path) is None else f"put back the old {path} (shown in the diff)"))
    if ts["service"] != "active" or not ts["running"]:
        steps.append(Step(h.name, "time synced", "enable and start chrony", "systemctl enable --now chrony",
                          "systemctl disable --now chrony"))
    elif steps:
        steps.append(Step(h.name, "time synced", "restart chrony with the new settings", "systemctl restart chrony",
                          None, "restart chrony after putting the old files back"))
    return steps


OPERATIONS: tuple[Operation, ...] = (
    swap_disabled, kubernetes_sysctls, kernel_modules, hostname_set, cluster_hosts_file, ssh_hardened,
    deploy_user_present, time_synced,
)
