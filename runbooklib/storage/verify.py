"""Verifying the CDN volume: bricks online, nothing left to heal, a canary file the same on every mount.

Read from the first brick host (any pool member answers for the whole volume): ``gluster volume
status <vol> --xml`` (each brick process and self-heal daemon, online or not) and ``gluster volume
heal <vol> info`` (per brick, the entries still to heal). Then a canary is written through one
worker's mount and read back through every mount: replication and the mounts proved end to end.
Serving the content over HTTP is the edge nodes' job, verified by ``09-edge-load-balancing``.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import time
from collections.abc import Callable

import yaml

from . import facts as storage_facts
from .operations import gluster, wanted_bricks
from .settings import mount_hosts

CANARY = ".runbooklib-canary"


def volume_status(p, fleet) -> dict:
    """Bricks and self-heal daemons of the volume, as the first answering brick host reports them."""
    g = gluster(p)
    last = "no brick host answered"
    for name in g.servers:
        r = fleet.run_on(p.host(name), f"timeout 30 gluster volume status {g.volume} --xml")
        parsed = storage_facts.parse_volume_status(r.stdout) if r.stdout else None
        if parsed is not None and not parsed["error"]:
            return {**parsed, "asked": name}
        last = (parsed or {}).get("error") or r.error or r.stderr.strip()[-200:] or f"{name}: no answer"
    return {"error": last, "bricks": [], "daemons": [], "asked": ""}


def status_rows(p, status: dict) -> list[dict]:
    """One row per brick the parameters want: online or not (a brick missing from the status is offline)."""
    by = {(b["host"], b["path"]): b for b in status["bricks"]}
    names = {str(h.address): h.name for h in p.hosts}
    rows = []
    for (a, path), name in zip(wanted_bricks(p), gluster(p).servers):
        b = by.get((a, path)) or by.get((name, path))
        rows.append({"host": names.get(a, a), "brick": f"{a}:{path}", "role": "arbiter" if name == gluster(p).arbiter else "data",
                     "online": "yes" if b and b["online"] else "no", "pid": (b or {}).get("pid", ""), "port": (b or {}).get("port", "")})
    for d in status["daemons"]:
        host = status.get("asked", "") if d["host"] == "localhost" else names.get(d["host"], d["host"])  # as the asked host calls itself
        rows.append({"host": host, "brick": d["daemon"], "role": "self-heal",
                     "online": "yes" if d["online"] else "no", "pid": d["pid"], "port": ""})
    return rows


def heal_info(p, fleet) -> tuple[list[dict], str]:
    """``gluster volume heal <vol> info`` per brick; the error when no brick host answered."""
    g = gluster(p)
    error = "no brick host answered"
    for name in g.servers:
        r = fleet.run_on(p.host(name), f"timeout 60 gluster volume heal {g.volume} info")
        parsed = storage_facts.parse_heal_info(r.stdout)
        if parsed:
            return parsed, ""
        error = f"{name}: " + " ".join((r.stderr.strip() or r.stdout.strip() or r.error).split())[-300:]
    return [], error


def heal_clean(bricks: list[dict]) -> bool:
    return bool(bricks) and all(b["status"] == "Connected" and b["entries"] == 0 for b in bricks)


def wait_heal_clean(p, fleet, timeout: float, every: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> tuple[list[dict], str, float]:
    """Heal info until it is clean or ``timeout`` passed: (last bricks, error, seconds waited).

    A brick that is not connected cannot be healed: no waiting then, the table says which.
    """
    t0 = time.monotonic()
    while True:
        bricks, error = heal_info(p, fleet)
        waited = time.monotonic() - t0
        if heal_clean(bricks) or waited >= timeout or not bricks or any(b["status"] != "Connected" for b in bricks):
            return bricks, error, waited
        sleep(every)


def heal_rows(bricks: list[dict]) -> list[dict]:
    return [{"brick": f"{b['host']}:{b['path']}", "status": b["status"],
             "entries to heal": "-" if b["entries"] is None else b["entries"], "first entries": ", ".join(b["pending"][:5])}
            for b in bricks]


def canary_writer(p) -> str:
    """The host the canary is written from: the first worker that mounts the volume, else the first mount."""
    hosts = mount_hosts(p)
    workers = [n for n in hosts if "worker" in p.host(n).roles]
    return (workers or hosts)[0]


def canary(p, fleet, run_id: str, settle_seconds: float = 10.0) -> tuple[list[dict], str]:
    """Write a canary through one mount, read it through every mount: one row per mount host, and the writer."""
    g = gluster(p)
    path = shlex.quote(f"{g.mount_path}/{CANARY}")
    content = f"runbooklib canary of run {run_id} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {secrets.token_hex(8)}\n"
    digest = hashlib.sha256(content.encode()).hexdigest()
    writer = canary_writer(p)
    w = fleet.run_on(p.host(writer), f"mountpoint -q {shlex.quote(g.mount_path)} || {{ echo 'not a mount point' >&2; exit 1; }}; "
                                     f"printf %s {shlex.quote(content)} > {path}.tmp && mv -f {path}.tmp {path} && sync {path}")
    rows = []
    if not w.ok:
        return [{"host": writer, "wrote": "no", "read": "-", "same content": "no",
                 "note": (w.stderr.strip() or w.error)[-200:]}], writer
    deadline = time.monotonic() + settle_seconds
    for name in mount_hosts(p):
        while True:
            r = fleet.run_on(p.host(name), f"mountpoint -q {shlex.quote(g.mount_path)} && sha256sum {path}")
            got = r.stdout.split()[0] if r.ok and r.stdout.split() else ""
            if got == digest or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        rows.append({"host": name, "wrote": "yes" if name == writer else "", "read": "yes" if got else "no",
                     "same content": "yes" if got == digest else "no",
                     "note": "" if got == digest else ((r.stderr.strip() or r.error or "different content")[-200:])})
    return rows, writer


def mount_rows(p, gathered) -> list[dict]:
    """Per mount host: what is mounted and whether /etc/fstab carries the entry (it remounts at boot)."""
    from .operations import fstab_line

    g = gluster(p)
    rows = []
    for name in mount_hosts(p):
        f = gathered.facts.get(name)
        if f is None:
            rows.append({"host": name, "mounted": f"unreachable: {gathered.errors.get(name, '')}", "fstab": "-"})
            continue
        want = fstab_line(p, p.host(name))
        lines = [line for line in (f["fstab"] or "").splitlines() if len(line.split()) >= 2 and line.split()[1] == g.mount_path]
        rows.append({"host": name, "mounted": f"{f['mounted']['source']} ({f['mounted']['fstype']})" if f["mounted"]["source"] else "no",
                     "fstab": "as planned" if lines == [want] else ("absent" if not lines else "differs: " + " | ".join(lines))})
    return rows


def problems(p, status: dict, bricks: list[dict], heal_error: str, canary_rows: list[dict], mounts: list[dict]) -> list[str]:
    g = gluster(p)
    out = []
    if status["error"]:
        out.append(f"volume {g.volume}: gluster volume status failed: {status['error']}")
    for row in status_rows(p, status):
        if row["role"] != "self-heal" and row["online"] != "yes":
            out.append(f"{row['host']}: brick {row['brick']} is not online")
    if heal_error:
        out.append(f"volume {g.volume}: gluster volume heal info failed: {heal_error}")
    for b in bricks:
        if b["status"] != "Connected" or b["entries"] != 0:
            out.append(f"brick {b['host']}:{b['path']}: {b['entries'] if b['entries'] is not None else 'unknown'} entries to heal "
                       f"(status {b['status'] or 'unknown'})")
    for row in canary_rows:
        if row["same content"] != "yes":
            out.append(f"{row['host']}: the canary written on another mount is not readable here with the same content ({row['note']})")
    for row in mounts:
        if row["fstab"] not in ("as planned", "-"):  # "-": the host did not answer, named as unreachable already
            out.append(f"{row['host']}: /etc/fstab entry for {g.mount_path}: {row['fstab']} (the mount would not come back at boot)")
    return out


def hostpath_snippet(p) -> str:
    """The pod spec fragment an application Deployment uses to write CDN content (a hostPath on the worker's mount).

    hostPath, not a GlusterFS volume: the in-tree GlusterFS plugin was removed in Kubernetes 1.26.
    ``type: Directory`` makes a pod fail to start where the folder is missing instead of creating an
    empty one; the pod must run on a node that mounts the volume (the node affinity says which).
    """
    g = gluster(p)
    nodes = [n for n in mount_hosts(p) if p.host(n).in_cluster]
    spec: dict = {
        "volumes": [{"name": "cdn-data", "hostPath": {"path": g.mount_path, "type": "Directory"}}],
        "containers": [{"name": "app", "volumeMounts": [{"name": "cdn-data", "mountPath": g.mount_path}]}],
    }
    if nodes:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}}}
    head = (f"# Pod template spec fragment (spec.template.spec of a Deployment): GlusterFS volume {g.volume} is mounted at\n"
            f"# {g.mount_path} on {', '.join(nodes) or 'no cluster node (set storage.gluster.mount_on)'}, by /etc/fstab.\n"
            "# hostPath, because the in-tree GlusterFS volume plugin left Kubernetes in 1.26.\n")
    return head + yaml.safe_dump(spec, sort_keys=False)
