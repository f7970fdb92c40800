"""Readiness for Kubernetes: rules per target distribution, judged on gathered facts.

Each rule says why it exists (shown in the runbook) and returns, per host, ``ok``, ``fail`` with a
reason that says what to do, or ``n/a`` where it does not apply (an RKE1-only rule on RKE2, a
Kubernetes rule on a database VM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..params import Host, Params

K8S_ROLES = ("etcd", "controlplane", "worker")
OK, FAIL, NA = "ok", "fail", "n/a"


@dataclass(frozen=True)
class Rule:
    name: str
    why: str
    distributions: tuple[str, ...]  # rke1, rke2
    kubernetes_only: bool  # applies to etcd/controlplane/worker hosts only
    check: Callable[[Params, Host, dict], tuple[bool, str]]


def _os(p, h, f):
    osr = f.get("os_release") or {}
    ident, version = osr.get("id", ""), osr.get("version_id", "")
    try:
        major = float(version.split(".")[0] if ident == "debian" else version)
    except ValueError:
        return False, f"cannot tell the OS version from /etc/os-release ({osr.get('pretty_name') or 'empty'})"
    if ident == "debian" and major >= 11:
        return True, osr["pretty_name"]
    if ident == "ubuntu" and major >= 20.04:
        return True, osr["pretty_name"]
    return False, f"{osr.get('pretty_name') or ident + ' ' + version} is out of support; rebuild on Debian 12"


def _docker_engine(p, h, f):
    rt = f.get("runtime") or {}
    if rt.get("docker_engine"):
        return True, f"Docker {rt['docker_engine']}"
    client = f" (only the client {rt['docker_client']} is installed)" if rt.get("docker_client") else ""
    return False, f"no Docker engine answers on /var/run/docker.sock{client}; RKE1 runs every component in Docker: install and start it, or choose rke2"


def _docker_version(p, h, f):
    version = (f.get("runtime") or {}).get("docker_engine")
    if p.kubernetes and p.kubernetes.ignore_docker_version:
        return True, "version check ignored (kubernetes.ignore_docker_version)"
    if not version:
        return False, "no Docker engine to check"
    if any(version == v or version.startswith(v + ".") for v in p.vm.docker_versions):
        return True, version
    return False, f"Docker {version} is not among the versions RKE1 accepts ({', '.join(p.vm.docker_versions)}); install one of them or set ignore_docker_version"


def _docker_group(p, h, f):
    user = f.get("user") or {}
    if user.get("user") == "root" or "docker" in user.get("groups", []):
        return True, f"{user.get('user')} can use the Docker socket"
    return False, f"SSH user {user.get('user')} is not in the docker group; `usermod -aG docker {user.get('user')}` (the baseline's deploy user does it)"


def _swap(p, h, f):
    swap = f.get("swap") or {}
    if swap.get("active"):
        return False, f"swap is on ({', '.join(swap['active'])}); the kubelet refuses to start with swap"
    if swap.get("fstab"):
        return False, "swap is off now but /etc/fstab turns it on at boot"
    return True, "off, and off at boot"


def _sysctl(key):
    def check(p, h, f):
        s = f.get("sysctls") or {}
        live, configured = (s.get("live") or {}).get(key), (s.get("configured") or {}).get(key)
        if live != "1":
            return False, f"{key} is {live or 'missing'} now; needs 1" + (" (load br_netfilter first)" if live is None else "")
        if configured != "1":
            return False, f"{key} is 1 now but not set in /etc/sysctl.d, so a reboot loses it"
        return True, "1, and 1 at boot"
    return check


def _modules(p, h, f):
    m = f.get("modules") or {}
    missing = [k for k, v in (m.get("available") or {}).items() if not v]
    if missing:
        return False, f"kernel module(s) {', '.join(missing)} not loaded; modprobe them"
    unconfigured = [k for k in ("br_netfilter", "overlay") if k not in (m.get("configured") or [])]
    if unconfigured:
        return False, f"{', '.join(unconfigured)} work now but are not in /etc/modules-load.d, so a reboot may lose them"
    return True, "br_netfilter, overlay"


def _root_disk(p, h, f):
    root = (f.get("disks") or {}).get("root") or {}
    need = p.vm.threshold(p.vm.min_root_gb, h.roles)
    size, free = root.get("size_gb", 0), root.get("free_gb", 0)
    if size < need:
        return False, f"root disk {size} GB, below the {need:g} GB this host's roles need (vm.min_root_gb)"
    if free < p.vm.min_free_gb:
        return False, f"only {free} GB free on /, below vm.min_free_gb {p.vm.min_free_gb:g}"
    return True, f"{size} GB ({free} free)"


def _cpu_memory(p, h, f):
    cpus, mem = f.get("cpus") or 0, ((f.get("memory") or {}).get("total_mb") or 0) / 1024
    need_cpu, need_mem = p.vm.threshold(p.vm.min_cpus, h.roles), p.vm.threshold(p.vm.min_memory_gb, h.roles)
    if cpus < need_cpu:
        return False, f"{cpus} CPUs, below the {need_cpu} this host's roles need"
    if mem < need_mem:
        return False, f"{mem:.1f} GB memory, below the {need_mem:g} GB this host's roles need"
    return True, f"{cpus} CPUs, {mem:.1f} GB"


def _hostname(p, h, f):
    hn = f.get("hostname") or {}
    if hn.get("running") != h.name or hn.get("configured") != h.name:
        return False, f"host name is {hn.get('running')!r} (configured {hn.get('configured')!r}); the inventory says {h.name!r}"
    return True, h.name


def _resolution(p, h, f):
    resolved = f.get("resolution") or {}
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
    ts = f.get("time_sync") or {}
    if not ts.get("running"):
        return False, "no time synchronisation daemon runs; etcd and TLS need agreeing clocks (chrony)"
    return True, ts["running"]


def _ssh_hardening(p, h, f):
    sshd = f.get("sshd") or {}
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
    fact = f.get("deploy_user") or {}
    if not fact.get("exists"):
        return False, f"user {du.name} does not exist"
    missing = [g for g in du.groups if g not in fact.get("groups", [])]
    if missing:
        return False, f"{du.name} is not in group(s) {', '.join(missing)}"
    if du.public_key(p.source_dir) not in fact.get("authorized_keys", []):
        return False, f"{du.name}'s authorized_keys lacks the deploy key"
    return True, f"{du.name} ({', '.join(fact['groups'])})"


RULES: tuple[Rule, ...] = (
    Rule("os", "Old releases get no security fixes; the seed's Debian 9 is long out of support.", ("rke1", "rke2"), False, _os),
    Rule("docker engine", "RKE1 runs every Kubernetes component as a Docker container.", ("rke1",), True, _docker_engine),
    Rule("docker version", "RKE1 refuses Docker versions it was not validated against.", ("rke1",), True, _docker_version),
    Rule("docker group", "RKE1 drives Docker over SSH as the SSH user.", ("rke1",), True, _docker_group),
    Rule("swap off", "The kubelet will not start while swap is on.", ("rke1", "rke2"), True, _swap),
    Rule("bridge sysctl", "Pod traffic crossing a bridge must pass iptables, or Services break.", ("rke1", "rke2"), True,
         _sysctl("net.bridge.bridge-nf-call-iptables")),
    Rule("ip forward", "Nodes route pod traffic.", ("rke1", "rke2"), True, _sysctl("net.ipv4.ip_forward")),
    Rule("kernel modules", "br_netfilter for the bridge sysctl, overlay for container images.", ("rke1", "rke2"), True, _modules),
    Rule("root disk", "Images, etcd and logs fill disks; the seed used 40 GB and 100 GB roots.", ("rke1", "rke2"), False, _root_disk),
    Rule("cpu and memory", "Control-plane nodes need room for etcd and the API server.", ("rke1", "rke2"), False, _cpu_memory),
    Rule("hostname", "Node names in the cluster come from host names; a mismatch confuses every later phase.", ("rke1", "rke2"), False, _hostname),
    Rule("name resolution", "Nodes reach each other by name (etcd peers, kubelet to API).", ("rke1", "rke2"), False, _resolution),
    Rule("time sync", "etcd leases and certificates fail with drifting clocks.", ("rke1", "rke2"), False, _time_sync),
    Rule("ssh hardening", "Only keys, never passwords: these VMs face a foreign provider's network.", ("rke1", "rke2"), False, _ssh_hardening),
    Rule("deploy user", "A named deploy user, not root, is what RKE and audits expect.", ("rke1", "rke2"), False, _deploy_user),
)


def distribution(params: Params) -> str:
    return params.kubernetes.distribution if params.kubernetes else "rke2"


def lifecycle_warning(params: Params) -> str | None:
    """What an engineer must hear before preparing nodes for a distribution past its end of life."""
    if distribution(params) == "rke1":
        return ("WARNING: RKE1 reached end of life on 2025-07-31 (final series 1.8). Prefer RKE2 for a new cluster; "
                "these rules check RKE1's prerequisites because the parameters ask for it.")
    return None


def evaluate(params: Params, facts: dict[str, dict], errors: dict[str, str] | None = None) -> list[dict]:
    """A row per host and rule: host, rule, status (ok/fail/n/a/unreachable), reason."""
    target = distribution(params)
    rows = []
    for host in params.hosts:
        f = facts.get(host.name)
        for rule in RULES:
            if target not in rule.distributions or (rule.kubernetes_only and not set(host.roles) & set(K8S_ROLES)):
                rows.append({"host": host.name, "rule": rule.name, "status": NA, "reason": ""})
            elif f is None:
                rows.append({"host": host.name, "rule": rule.name, "status": "unreachable",
                             "reason": (errors or {}).get(host.name, "no facts")})
            else:
                try:
                    ok, reason = rule.check(params, host, f)
                except Exception as e:  # a fact missing from a partial gather
                    ok, reason = False, f"cannot judge: {type(e).__name__}: {e}"
                rows.append({"host": host.name, "rule": rule.name, "status": OK if ok else FAIL, "reason": reason})
    return rows


def failures(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] in (FAIL, "unreachable")]


def matrix(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    hosts = list(dict.fromkeys(r["host"] for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    return hosts, rules, {(r["host"], r["rule"]): r["status"] for r in rows}


def matrix_rows(rows: list[dict]) -> list[dict]:
    """host x rule, one row per host, for a table."""
    hosts, rules, cells = matrix(rows)
    return [{"host": h, **{r: cells[(h, r)] for r in rules}} for h in hosts]


def matrix_figure(rows: list[dict], title: str = "Readiness"):
    """A host x rule grid: green ok, red fail, grey n/a, black unreachable."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    hosts, rules, cells = matrix(rows)
    code = {OK: 0, FAIL: 1, NA: 2, "unreachable": 3}
    grid = [[code[cells[(h, r)]] for r in rules] for h in hosts]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(rules), 1.2 + 0.32 * len(hosts)))
    ax.imshow(grid, cmap=ListedColormap(["#34a853", "#ea4335", "#dadce0", "#202124"]), vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(len(rules)), rules, rotation=45, ha="right")
    ax.set_yticks(range(len(hosts)), hosts)
    ax.set_xticks([x - 0.5 for x in range(1, len(rules))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(hosts))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    failed = sum(1 for v in cells.values() if v in (FAIL, "unreachable"))
    ax.set_title(f"{title}: {failed} failing checks (green ok, red fail, grey n/a)")
    fig.tight_layout()
    return fig


TONES = {OK: "ok", FAIL: "bad", "unreachable": "bad", NA: ""}


def show(run, rows: list[dict], title: str):
    """The host x rule matrix as a coloured table and as a figure, in the run's output."""
    table = matrix_rows(rows)
    run.table(table, title=title, status=lambda i, col: TONES.get(table[i].get(col), "") if col != "host" else "")
    return matrix_figure(rows, title=title)


def fixed(before: list[dict], after: list[dict]) -> list[tuple[str, str]]:
    """(host, rule) pairs that failed before and pass now."""
    now = {(r["host"], r["rule"]) for r in failures(after)}
    return sorted({(r["host"], r["rule"]) for r in failures(before)} - now)
