"""Readiness for Kubernetes: rules per target distribution, judged on the VM facts.

Each rule says why it exists (shown in the runbook), which facts it reads, where it applies (an
RKE1-only rule is ``n/a`` on RKE2, a Kubernetes rule on a database VM) and which baseline
operation fixes it. A failure's reason says what to do.
"""

from __future__ import annotations

from ..phase.checks import Check, Rule
from ..phase.checks import evaluate as _evaluate
from ..phase.facts import Gathered


def _os(p, h, f):
    osr = f["os_release"]
    ident, version = osr["id"], osr["version_id"]
    try:
        major = float(version.split(".")[0] if ident == "debian" else version)
    except ValueError:
        return False, f"cannot tell the OS version from /etc/os-release ({osr['pretty_name'] or 'empty'})"
    if ident == "debian" and major >= 11:
        return True, osr["pretty_name"]
    if ident == "ubuntu" and major >= 20.04:
        return True, osr["pretty_name"]
    return False, f"{osr['pretty_name'] or ident + ' ' + version} is out of support; rebuild on Debian 12"


def _docker_engine(p, h, f):
    rt = f["runtime"]
    if rt["docker_engine"]:
        return True, f"Docker {rt['docker_engine']}"
    client = f" (only the client {rt['docker_client']} is installed)" if rt["docker_client"] else ""
    return False, f"no Docker engine answers on /var/run/docker.sock{client}; RKE1 runs every component in Docker: install and start it, or choose rke2"


def _docker_version(p, h, f):
    version = f["runtime"]["docker_engine"]
    if p.kubernetes and p.kubernetes.ignore_docker_version:
        return True, "version check ignored (kubernetes.ignore_docker_version)"
    if not version:
        return False, "no Docker engine to check"
    if any(version == v or version.startswith(v + ".") for v in p.vm.docker_versions):
        return True, version
    return False, f"Docker {version} is not among the versions RKE1 accepts ({', '.join(p.vm.docker_versions)}); install one of them or set ignore_docker_version"


def _docker_group(p, h, f):
    user = f["user"]
    if user["user"] == "root" or "docker" in user["groups"]:
        return True, f"{user['user']} can use the Docker socket"
    return False, f"SSH user {user['user']} is not in the docker group; `usermod -aG docker {user['user']}` (the baseline's deploy user does it)"


def _swap(p, h, f):
    swap = f["swap"]
    if swap["active"]:
        return False, f"swap is on ({', '.join(swap['active'])}); the kubelet refuses to start with swap"
    if swap["fstab"]:
        return False, "swap is off now but /etc/fstab turns it on at boot"
    return True, "off, and off at boot"


def _sysctl(key):
    def check(p, h, f):
        live, configured = f["sysctls"]["live"].get(key), f["sysctls"]["configured"].get(key)
        if live != "1":
            return False, f"{key} is {live or 'missing'} now; needs 1" + (" (load br_netfilter first)" if live is None else "")
        if configured != "1":
            return False, f"{key} is 1 now but not set in /etc/sysctl.d, so a reboot loses it"
        return True, "1, and 1 at boot"
    return check


def _modules(p, h, f):
    m = f["modules"]
    missing = [k for k, v in m["available"].items() if not v]
    if missing:
        return False, f"kernel module(s) {', '.join(missing)} not loaded; modprobe them"
    unconfigured = [k for k in ("br_netfilter", "overlay") if k not in m["configured"]]
    if unconfigured:
        return False, f"{', '.join(unconfigured)} work now but are not in /etc/modules-load.d, so a reboot may lose them"
    return True, "br_netfilter, overlay"


def _root_disk(p, h, f):
    root = f["disks"]["root"]
    if root is None:
        return False, "cannot read the root filesystem's size (df /)"
    need = p.vm.threshold(p.vm.min_root_gb, h.roles)
    size, free = root["size_gb"], root["free_gb"]
    if size < need:
        return False, f"root disk {size} GB, below the {need:g} GB this host's roles need (vm.min_root_gb); grow the disk at the provider"
    if free < p.vm.min_free_gb:
        return False, f"only {free} GB free on /, below vm.min_free_gb {p.vm.min_free_gb:g}; free space or grow the disk"
    return True, f"{size} GB ({free} free)"


def _cpu_memory(p, h, f):
    cpus, mem = f["cpus"] or 0, f["memory"]["total_mb"] / 1024
    need_cpu, need_mem = p.vm.threshold(p.vm.min_cpus, h.roles), p.vm.threshold(p.vm.min_memory_gb, h.roles)
    if cpus < need_cpu:
        return False, f"{cpus} CPUs, below the {need_cpu} this host's roles need; resize the VM"
    if mem < need_mem:
        return False, f"{mem:.1f} GB memory, below the {need_mem:g} GB this host's roles need; resize the VM"
    return True, f"{cpus} CPUs, {mem:.1f} GB"


def _hostname(p, h, f):
    hn = f["hostname"]
    if hn["running"] != h.name or hn["configured"] != h.name:
        return False, f"host name is {hn['running']!r} (configured {hn['configured']!r}); the inventory says {h.name!r}"
    return True, h.name


def _resolution(p, h, f):
    resolved = f["resolution"]
    wrong = []
    for other in p.hosts:
        if other.name == h.name:
            continue
        got = resolved.get(other.name)
        if got != str(other.address):
            wrong.append(f"{other.name}->{got or 'nothing'}")
    if wrong:
        shown = ", ".join(wrong[:4]) + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        return False, f"other nodes do not resolve to their inventory addresses: {shown}"
    return True, f"{len(p.hosts) - 1} nodes resolve"


def _time_sync(p, h, f):
    ts = f["time_sync"]
    if not ts["running"]:
        return False, "no time synchronisation daemon runs; etcd and TLS need agreeing clocks (chrony)"
    return True, ts["running"]


def _ssh_hardening(p, h, f):
    sshd = f["sshd"]
    if not sshd:
        return False, "cannot read sshd's effective settings (sshd -T)"
    problems = []
    if sshd.get("passwordauthentication") != "no":
        problems.append("password logins are allowed")
    if sshd.get("kbdinteractiveauthentication") not in (None, "no"):
        problems.append("keyboard-interactive logins are allowed")
    if sshd.get("permitrootlogin") not in ("no", "prohibit-password", "without-password"):
        problems.append(f"root may log in with a password (PermitRootLogin {sshd.get('permitrootlogin')})")
    return (False, "; ".join(problems)) if problems else (True, "keys only")


def _deploy_user(p, h, f):
    du = p.vm.deploy_user
    if du is None:
        return True, "no deploy user configured"
    fact = f["deploy_user"]
    if not fact["exists"]:
        return False, f"user {du.name} does not exist"
    missing = [g for g in du.groups if g not in fact["groups"]]
    if missing:
        return False, f"{du.name} is not in group(s) {', '.join(missing)}"
    keys = [line.strip() for line in du.public_key(p.source_dir).splitlines() if line.strip()]
    missing = [k for k in keys if k not in fact["authorized_keys"]]
    if missing:
        return False, f"{du.name}'s authorized_keys lacks {len(missing)} of the {len(keys)} deploy key(s)"
    return True, f"{du.name} ({', '.join(fact['groups'])})"


def distribution(params) -> str:
    return params.kubernetes.distribution if params.kubernetes else "rke2"


def _for(*distributions: str, cluster_only: bool):
    """Where a rule applies: the target distribution is one of ``distributions`` (and the host joins the cluster)."""
    def applies(params, host) -> bool:
        return distribution(params) in distributions and (host.in_cluster or not cluster_only)
    return applies


BOTH = ("rke1", "rke2")
RULES: tuple[Rule, ...] = (
    Rule("os", "Old releases get no security fixes; the seed's Debian 9 is long out of support.", _os,
         needs=("os_release",), applies=_for(*BOTH, cluster_only=False)),
    Rule("docker engine", "RKE1 runs every Kubernetes component as a Docker container.", _docker_engine,
         needs=("runtime",), applies=_for("rke1", cluster_only=True), scope="RKE1 nodes"),
    Rule("docker version", "RKE1 refuses Docker versions it was not validated against.", _docker_version,
         needs=("runtime",), applies=_for("rke1", cluster_only=True), scope="RKE1 nodes"),
    Rule("docker group", "RKE1 drives Docker over SSH as the SSH user.", _docker_group,
         needs=("user",), applies=_for("rke1", cluster_only=True), scope="RKE1 nodes"),
    Rule("swap off", "The kubelet will not start while swap is on.", _swap,
         needs=("swap",), applies=_for(*BOTH, cluster_only=True), scope="Kubernetes nodes", fixed_by=("swap disabled",)),
    Rule("bridge sysctl", "Pod traffic crossing a bridge must pass iptables, or Services break.",
         _sysctl("net.bridge.bridge-nf-call-iptables"), needs=("sysctls",), applies=_for(*BOTH, cluster_only=True),
         scope="Kubernetes nodes", fixed_by=("kubernetes sysctls", "kernel modules")),
    Rule("ip forward", "Nodes route pod traffic.", _sysctl("net.ipv4.ip_forward"), needs=("sysctls",),
         applies=_for(*BOTH, cluster_only=True), scope="Kubernetes nodes", fixed_by=("kubernetes sysctls",)),
    Rule("kernel modules", "br_netfilter for the bridge sysctl, overlay for container images.", _modules,
         needs=("modules",), applies=_for(*BOTH, cluster_only=True), scope="Kubernetes nodes", fixed_by=("kernel modules",)),
    Rule("root disk", "Images, etcd and logs fill disks; the seed used 40 GB and 100 GB roots.", _root_disk,
         needs=("disks",), applies=_for(*BOTH, cluster_only=False)),
    Rule("cpu and memory", "Control-plane nodes need room for etcd and the API server.", _cpu_memory,
         needs=("cpus", "memory"), applies=_for(*BOTH, cluster_only=False)),
    Rule("hostname", "Node names in the cluster come from host names; a mismatch confuses every later phase.", _hostname,
         needs=("hostname",), applies=_for(*BOTH, cluster_only=False), fixed_by=("hostname",)),
    Rule("name resolution", "Nodes reach each other by name (etcd peers, kubelet to API).", _resolution,
         needs=("resolution",), applies=_for(*BOTH, cluster_only=False), fixed_by=("cluster hosts",)),
    Rule("time sync", "etcd leases and certificates fail with drifting clocks.", _time_sync,
         needs=("time_sync",), applies=_for(*BOTH, cluster_only=False), fixed_by=("time synced",)),
    Rule("ssh hardening", "Only keys, never passwords: these VMs face a foreign provider's network.", _ssh_hardening,
         needs=("sshd",), applies=_for(*BOTH, cluster_only=False), fixed_by=("ssh hardened",)),
    Rule("deploy user", "A named deploy user, not root, is what RKE and audits expect.", _deploy_user,
         needs=("deploy_user",), applies=_for(*BOTH, cluster_only=False), fixed_by=("deploy user",)),
)


def lifecycle_warning(params) -> str | None:
    """What an engineer must hear before preparing nodes for a distribution past its end of life."""
    if distribution(params) == "rke1":
        return ("WARNING: RKE1 reached end of life on 2025-07-31 (final series 1.8). Prefer RKE2 for a new cluster; "
                "these rules check RKE1's prerequisites because the parameters ask for it.")
    return None


def evaluate(params, gathered: Gathered) -> list[Check]:
    """Every readiness rule on every host of ``params``."""
    return _evaluate(RULES, params, gathered)


def rule_rows() -> list[dict]:
    """The rules as a table: name, where they apply, why, what fixes them."""
    return [{"rule": r.name, "hosts": r.scope, "why": r.why, "fixed by": ", ".join(r.fixed_by) or "a person"}
            for r in RULES]
