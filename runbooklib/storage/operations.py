"""The CDN's GlusterFS volume: operations named after the state they ensure, planned from the facts.

Each operation returns the steps still needed on one host (none when it is right), so a second apply
plans nothing. The commands are what an engineer types on a Debian VM: ``systemctl``, ``gluster``,
``mount``, ``/etc/fstab``.

The apply runs in three stages, each waiting for the one before: the hosts (glusterd installed,
enabled and running; the bricks' parent folders), then the volume from the first brick host
(``gluster peer probe``, ``volume create``, ``volume start``, options), then the mounts (the
``/etc/fstab`` entry with ``backup-volfile-servers``, ``mount``). A stage that fails on any host
stops the stages after it: a volume is not created on a pool that did not form, nothing is mounted
from a volume that did not start.

Bricks on the root filesystem: gluster refuses them unless the command ends in ``force``, because a
brick that fills the root filesystem takes the host down with it. Production bricks belong on a
filesystem of their own (XFS at ``/bricks``). The runbook reads where each brick would sit and adds
``force`` only when one sits on the root filesystem, saying so in the plan; outside the lab that is
refused unless ``storage.gluster.allow_root_filesystem`` is true. ``force`` is never added
otherwise, so gluster's other refusals (a brick inside another brick, a folder that was a brick
before) still stop the plan.

Replica 2 and split-brain: two copies cannot outvote each other. If the two edge nodes lose sight of
each other and both keep taking writes (gluster's default for replica 2: no client quorum), a file
written on both sides is in split-brain and must be repaired by hand
(``gluster volume heal <vol> split-brain ...``). An arbiter brick on a third host
(``storage.gluster.arbiter``, ``replica 3 arbiter 1``) holds only names and metadata and gives the
volume a majority: the side without it refuses writes instead of splitting.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, file_diff, operation, write_file
from .facts import CLIENT_PACKAGE, SERVER_PACKAGE
from .settings import mount_hosts

PREVIOUS = ".runbook-prev"
FSTAB = "/etc/fstab"
STAGES = ("hosts", "volume", "mounts")
SPLIT_BRAIN = ("replica 2 keeps two copies but has no majority: when the two brick hosts lose sight of each other and both "
               "take writes, a file written on both sides is in split-brain and must be repaired by hand "
               "(gluster volume heal <vol> split-brain ...). Name a third host as storage.gluster.arbiter "
               "(replica 3 arbiter 1) to prevent it")


# -- what the site should look like ------------------------------------------------------------

def gluster(p):
    return p.storage.gluster


def address(p, name: str) -> str:
    return str(p.host(name).address)


def first_server(p) -> str:
    """The host the pool is formed and the volume created from: the first brick host."""
    return gluster(p).bricks[0]


def is_server(p, host) -> bool:
    return host.name in gluster(p).servers


def wanted_bricks(p) -> list[tuple[str, str]]:
    """``(address, path)`` of every brick in ``volume create`` order: the data bricks, then the arbiter."""
    g = gluster(p)
    return [(address(p, n), g.brick_path) for n in g.servers]


def create_command(p, force: bool) -> str:
    g = gluster(p)
    kind = "replica 3 arbiter 1" if g.arbiter else f"replica {len(g.bricks)}"
    bricks = " ".join(f"{a}:{path}" for a, path in wanted_bricks(p))
    # --mode=script answers gluster's questions (replica 2's split-brain warning) with yes: the plan states that risk
    return f"gluster --mode=script volume create {g.volume} {kind} {bricks}" + (" force" if force else "")


def volfile_servers(p, host) -> list[str]:
    """Where a mount fetches the volume's description: itself when it holds a brick, else the first brick host; then the others."""
    servers = [address(p, n) for n in gluster(p).servers]
    own = str(host.address)
    return [own] + [s for s in servers if s != own] if own in servers else servers


def fstab_line(p, host) -> str:
    g = gluster(p)
    first, *backups = volfile_servers(p, host)
    options = "defaults,_netdev" + (f",backup-volfile-servers={':'.join(backups)}" if backups else "")
    return f"{first}:/{g.volume} {g.mount_path} glusterfs {options} 0 0"


def desired_fstab(p, host, current: str | None) -> str:
    """The host's /etc/fstab with exactly one line for the mount path: ours, in place of any other."""
    mount_path = gluster(p).mount_path
    lines = (current or "").splitlines()
    kept, placed = [], False
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1].rstrip("/") == mount_path:
            if not placed:
                kept.append(fstab_line(p, host))
                placed = True
            continue
        kept.append(line)
    if not placed:
        kept.append(fstab_line(p, host))
    return "\n".join(kept) + "\n"


def _known(p, names: Sequence[str]) -> set[str]:
    return {str(p.host(n).address) for n in names} | set(names)


def peer_in_pool(p, name: str, pool: list[dict]) -> bool:
    return any(peer["hostname"] in _known(p, [name]) for peer in pool)


def volume_bricks(p, volume: dict) -> list[tuple[str, str]]:
    """The volume's bricks as ``(address, path)`` (a brick named by host name is read as its address)."""
    by_name = {h.name: str(h.address) for h in p.hosts}
    return [(by_name.get(b["host"], b["host"]), b["path"]) for b in volume["bricks"]]


def site(f: dict) -> dict:
    """Every storage host's facts (the plan puts them beside each host's own: the volume needs the others')."""
    return f.get("site", {})


# -- operations --------------------------------------------------------------------------------

@operation("packages installed", touches="nothing (a missing package is a blocked step)", undo="-")
def packages_installed(p, h, f) -> list[Step]:
    needed = []
    if is_server(p, h) and not f["packages"]["server"]:
        needed.append(SERVER_PACKAGE)  # it depends on the client package (mount.glusterfs): a brick host that mounts needs no more
    elif h.name in mount_hosts(p) and not f["packages"]["client"]:
        needed.append(CLIENT_PACKAGE)
    if not needed:
        return []
    return [Step(h.name, "packages installed", f"install {' '.join(needed)}", None,
                 blocked=f"{', '.join(needed)} not installed on {h.name}; install from your mirror (apt-get install {' '.join(needed)})")]


@operation("glusterd running", touches="the glusterd service: enabled at boot, running", undo="`systemctl disable --now glusterd`")
def glusterd_running(p, h, f) -> list[Step]:
    if not is_server(p, h):
        return []
    steps = []
    if f["service"]["enabled"] != "enabled":
        steps.append(Step(h.name, "glusterd running", "enable glusterd at boot", "systemctl enable glusterd", "systemctl disable glusterd"))
    if f["service"]["active"] != "active":
        # glusterd forks before it listens: wait until the CLI gets an answer, the next stage talks to it
        steps.append(Step(h.name, "glusterd running", "start glusterd",
                          "systemctl start glusterd && for i in $(seq 60); do timeout 5 gluster pool list >/dev/null 2>&1 && exit 0; "
                          "sleep 0.5; done; echo 'glusterd started but does not answer gluster pool list within 30 s' >&2; exit 1",
                          "systemctl stop glusterd"))
    return steps


@operation("brick folder", touches="the brick's parent folder on each brick host (gluster makes the brick folder itself)",
           undo="remove the folder once the volume is deleted")
def brick_folder(p, h, f) -> list[Step]:
    if not is_server(p, h) or f["volume"] is not None or f["brick_folder"]["parent_exists"]:
        return []
    parent = gluster(p).brick_path.rsplit("/", 1)[0] or "/"
    return [Step(h.name, "brick folder", f"create {parent} (the brick {gluster(p).brick_path} goes in it)",
                 f"mkdir -p {shlex.quote(parent)}", None, f"rmdir {parent} once the volume is deleted")]


@operation("trusted pool", touches="glusterd's peers (`gluster peer probe` from the first brick host)",
           undo="`gluster peer detach <host>` (only while no volume uses its bricks)")
def trusted_pool(p, h, f) -> list[Step]:
    if h.name != first_server(p):
        return []
    pool = f["pool"] or []  # glusterd not answering yet (it starts in the first stage): every peer is probed
    steps = []
    for name in gluster(p).servers[1:]:
        if peer_in_pool(p, name, pool):
            continue
        a = address(p, name)
        steps.append(Step(h.name, "trusted pool", f"probe {name} ({a}) into the trusted pool",
                          # a volume may use the peer's brick only once it is "Peer in Cluster", a little after "Connected"
                          f"gluster --mode=script peer probe {a} && for i in $(seq 60); do "
                          f"gluster peer status | grep -A2 -xF 'Hostname: {a}' | grep -qF 'State: Peer in Cluster (Connected)' && exit 0; "
                          f"sleep 0.5; done; echo '{name} ({a}) was probed but is not in the cluster (Peer in Cluster) within 30 s' >&2; exit 1",
                          f"gluster --mode=script peer detach {a}"))
    return steps


@operation("volume created", touches="the volume's definition (`gluster volume create`), in every pool member's /var/lib/glusterd",
           undo="`gluster --mode=script volume delete <vol>` (stopped first); the bricks keep their files and must be emptied "
                "(with their .glusterfs folder and extended attributes) before a new volume may use them")
def volume_created(p, h, f) -> list[Step]:
    if h.name != first_server(p):
        return []
    g, volume = gluster(p), f["volume"]
    if volume is not None:
        have, want = volume_bricks(p, volume), wanted_bricks(p)
        if have != want:
            shown = ", ".join(f"{a}:{path}" for a, path in have)
            return [Step(h.name, "volume created", f"volume {g.volume} with the bricks of the parameters", None,
                         blocked=(f"volume {g.volume} exists with bricks {shown}; the parameters want "
                                  f"{', '.join(f'{a}:{path}' for a, path in want)}. This runbook does not move bricks "
                                  "(gluster volume replace-brick / add-brick, then a full heal): do it by hand, or fix the parameters"))]
        return []
    if f.get("volume_defined"):  # glusterd does not answer (stopped): the volume exists all the same
        return [Step(h.name, "volume created", f"volume {g.volume}", None,
                     blocked=(f"glusterd does not answer on {h.name}, but volume {g.volume} is defined on its disk "
                              "(/var/lib/glusterd/vols): its state is unknown, so nothing is planned for it. The plan starts "
                              "glusterd first; re-run once it answers"))]
    others = site(f)
    missing = [n for n in g.servers if n not in others]
    if missing:
        return [Step(h.name, "volume created", f"create volume {g.volume}", None,
                     blocked=f"the facts of {', '.join(missing)} could not be read: where their bricks would sit is unknown; "
                             "re-run once every brick host answers")]
    on_root = [n for n in g.servers if others[n]["brick_folder"]["on_root"]]
    kind = "replica 3 arbiter 1 (arbiter on " + g.arbiter + ")" if g.arbiter else "replica 2 (SPLIT-BRAIN RISK: no arbiter)"
    change = f"create volume {g.volume}, {kind}, bricks " + ", ".join(f"{n}:{g.brick_path}" for n in g.servers)
    if on_root:
        why = (f"force: the brick on {', '.join(on_root)} sits on the root filesystem, which gluster refuses without force "
               "(a full brick would fill the root filesystem); production bricks belong on a filesystem of their own")
        if not g.allow_root_filesystem:
            return [Step(h.name, "volume created", change, None,
                         blocked=(f"the brick path {g.brick_path} is on the root filesystem of {', '.join(on_root)}; mount a "
                                  "filesystem of its own there (XFS, e.g. at /bricks), or set storage.gluster.allow_root_filesystem: "
                                  "true to force it"))]
        change += f"; {why}"
    return [Step(h.name, "volume created", change, create_command(p, bool(on_root)),
                 f"gluster --mode=script volume delete {g.volume}", "then empty the bricks before reusing them")]


@operation("volume started", touches="the volume's brick processes and self-heal daemons", undo="`gluster --mode=script volume stop <vol>`")
def volume_started(p, h, f) -> list[Step]:
    if h.name != first_server(p):
        return []
    g, volume = gluster(p), f["volume"]
    if volume is None and f.get("volume_defined"):
        return []  # glusterd does not answer: its state is unknown (volume created blocks the plan)
    if volume is not None and volume["status"] == "Started":
        return []
    if volume is not None and volume_bricks(p, volume) != wanted_bricks(p):
        return []  # volume created blocks the plan
    return [Step(h.name, "volume started", f"start volume {g.volume}", f"gluster --mode=script volume start {g.volume}",
                 f"gluster --mode=script volume stop {g.volume}")]


@operation("volume options", touches="the volume options storage.gluster.options names (`gluster volume set`)",
           undo="`gluster volume reset <vol> <option>`")
def volume_options(p, h, f) -> list[Step]:
    if h.name != first_server(p):
        return []
    g, volume = gluster(p), f["volume"]
    if volume is None and f.get("volume_defined"):
        return []  # glusterd does not answer: the options are unknown
    current = (volume or {}).get("options", {})
    steps = []
    for key, value in g.options.items():
        if current.get(key) == value:
            continue
        was = current.get(key)
        undo = f"gluster --mode=script volume set {g.volume} {key} {was}" if was is not None else f"gluster --mode=script volume reset {g.volume} {key}"
        steps.append(Step(h.name, "volume options", f"{key}: {was or 'default'} -> {value}",
                          f"gluster --mode=script volume set {g.volume} {key} {shlex.quote(value)}", undo))
    return steps


@operation("fstab entry", touches=f"the mount path's line in `/etc/fstab` (previous file kept as `/etc/fstab{PREVIOUS}`)",
           undo=f"`cp /etc/fstab{PREVIOUS} /etc/fstab`")
def fstab_entry(p, h, f) -> list[Step]:
    if h.name not in mount_hosts(p):
        return []
    current = f["fstab"]
    want = desired_fstab(p, h, current)
    if current == want:
        return []
    keep = f"cp -a {FSTAB} {FSTAB}{PREVIOUS} && " if current is not None else ""
    return [Step(h.name, "fstab entry", f"{FSTAB}: {fstab_line(p, h)}", keep + write_file(FSTAB, want),
                 f"cp {FSTAB}{PREVIOUS} {FSTAB}" if current is not None else f"rm -f {FSTAB}", diff=file_diff(FSTAB, current, want))]


@operation("mounted", touches="the mount at the mount path (from its /etc/fstab line)", undo="`umount <mount path>`")
def mounted(p, h, f) -> list[Step]:
    if h.name not in mount_hosts(p):
        return []
    g, m = gluster(p), f["mounted"]
    ours = {f"{s}:/{g.volume}" for s in _known(p, g.servers)}
    if m["source"] in ours and "glusterfs" in m["fstype"]:
        return []
    path = shlex.quote(g.mount_path)
    if m["source"]:
        return [Step(h.name, "mounted", f"mount volume {g.volume} at {g.mount_path}", None,
                     blocked=(f"{m['source']} ({m['fstype']}) is mounted at {g.mount_path} on {h.name}; unmount it by hand "
                              "(or choose another storage.gluster.mount_path): the runbook does not hide what is there"))]
    return [Step(h.name, "mounted", f"mount volume {g.volume} at {g.mount_path} (as /etc/fstab says)",
                 f"mkdir -p {path} && mount {path}", f"umount {path}")]


OPERATIONS: tuple[Operation, ...] = (
    packages_installed, glusterd_running, brick_folder, trusted_pool, volume_created, volume_started, volume_options,
    fstab_entry, mounted,
)
STAGE_OF = {"packages installed": "hosts", "glusterd running": "hosts", "brick folder": "hosts", "trusted pool": "volume",
            "volume created": "volume", "volume started": "volume", "volume options": "volume", "fstab entry": "mounts",
            "mounted": "mounts"}


# -- planning and applying ---------------------------------------------------------------------

def plan(p, facts: dict[str, dict], fact_errors: dict[str, dict[str, str]] | None = None) -> list[Step]:
    """Every step still needed on the storage hosts, stage by stage (hosts, volume, mounts), host by host within a stage."""
    with_site = {name: {**f, "site": facts} for name, f in facts.items()}
    steps = phase_steps.plan(OPERATIONS, p, with_site, fact_errors)
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(steps, key=lambda s: order.get(STAGE_OF.get(s.operation, "hosts"), 0))  # stable: host order kept in a stage


def apply(p, fleet, steps: Sequence[Step], on_change=None) -> dict[str, phase_steps.HostApply]:
    """Stage by stage, hosts in parallel within a stage; a stage that failed anywhere leaves the later ones undone."""
    results: dict[str, phase_steps.HostApply] = {}
    for stage in STAGES:
        mine = [s for s in steps if STAGE_OF.get(s.operation, "hosts") == stage]
        failed = [r.host for r in results.values() if not r.ok]
        if mine and failed:
            for host in dict.fromkeys(s.host for s in mine):
                if host not in results:
                    results[host] = phase_steps.HostApply(host, error=f"{host}: {stage} not changed: an earlier stage failed on "
                                                                      f"{', '.join(failed)}")
            continue
        if mine:
            for host, r in phase_steps.apply(fleet, mine, on_change=on_change, desc=f"gluster: {stage}").items():
                if host in results:
                    results[host].applied += r.applied
                    results[host].error = results[host].error or r.error
                else:
                    results[host] = r
    return results


def roles(p) -> dict[str, str]:
    """host -> what it is for the volume (data brick, arbiter brick, mount), in inventory order of the storage hosts."""
    g = gluster(p)
    out: dict[str, str] = {}
    for n in g.bricks:
        out[n] = "data brick"
    if g.arbiter:
        out[g.arbiter] = "arbiter brick"
    for n in mount_hosts(p):
        out[n] = out[n] + " + mount" if n in out else "mount"
    return out


def before_rows(p, gathered) -> list[dict]:
    """One row per storage host: what it has of the volume, as read."""
    rows = []
    for name, role in roles(p).items():
        f = gathered.facts.get(name)
        if f is None:
            rows.append({"host": name, "role": role, "glusterd": f"unreachable: {gathered.errors.get(name, 'no facts')}"})
            continue
        pool = f["pool"]
        vol = f["volume"]
        rows.append({
            "host": name, "role": role,
            "packages": ", ".join(x for x in (f"server {f['packages']['server']}" if f["packages"]["server"] else "",
                                             f"client {f['packages']['client']}" if f["packages"]["client"] else "") if x) or "none",
            "glusterd": f"{f['service']['active']}, {f['service']['enabled']}" if is_server(p, p.host(name)) else "-",
            "peers": "-" if pool is None else ", ".join(f"{x['hostname']} ({x['state']})" for x in pool) or "none",
            "volume": "-" if vol is None else f"{vol['type']} {vol['status']}, {len(vol['bricks'])} bricks",
            "mounted": f["mounted"]["source"] or "no",
            "brick filesystem": (("root filesystem" if f["brick_folder"]["on_root"] else f["brick_folder"]["filesystem"])
                                 if is_server(p, p.host(name)) else "-"),
        })
    return rows


def verdict(outcome_status: str, problems: Sequence[str]) -> str:
    return phase_steps.apply_verdict(outcome_status, problems)
