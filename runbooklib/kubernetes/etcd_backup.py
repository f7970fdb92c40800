"""etcd snapshots: the schedule, the snapshots on the nodes, one taken now, verified on its node, copied off it.

etcd holds the whole cluster (every object, every Secret), so a snapshot of it is the cluster's
backup; this module is what the incident runbook ``incident/etcd-snapshot-restore`` calls before a
restore (:mod:`.etcd_restore`). Each distribution keeps its snapshots its own way:

- **RKE1**: ``rke etcd snapshot-save --config cluster.yml --name N`` (run here, like ``rke up``) takes
  a snapshot on *every* etcd node, as ``/opt/rke/etcd-snapshots/N.zip`` (mode 0600): rke-tools zips
  the etcd snapshot (entry ``/backup/N``) with the cluster's state file (``/etc/kubernetes/N.rkestate``,
  every certificate and key of the cluster). Recurring ones are ``<RFC 3339 time>_etcd.zip``.
  ``rke etcd snapshot-restore --name N`` restores the first etcd node's copy, so that is the one
  verified and copied off. etcdutl is the etcd container's (``docker exec etcd etcdutl``), which sees
  ``/etc/kubernetes`` under the same path: the snapshot is read out of its zip into a private folder
  there, checked, and the folder removed.
- **RKE2**: ``rke2 etcd-snapshot save --name N`` on the first server writes
  ``/var/lib/rancher/rke2/server/db/snapshots/N-<node>-<unix time>`` (its log says ``Saving etcd
  snapshot to <path>``); ``rke2 etcd-snapshot ls`` lists a server's. RKE2 ships no etcdutl:
  ``kubernetes.etcdutl`` says how to run one (default ``etcdutl`` on PATH).

Verification is ``etcdutl snapshot status -w json`` on the node (etcd's hash of the data, the
revision, the number of keys, the size; a damaged file is refused) and the file's SHA-256 there. The
copy off the node (``kubernetes.etcd_backup``: a local folder, ``0700``, never inside the archive, or
a folder on an inventory host, in the data country either way) is checked against that SHA-256, and
etcd's own integrity hash (the SHA-256 etcd appends to every snapshot) is checked on the copy.

Reading the snapshots takes root on the node (the files are ``0600 root``), as every runbook here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import yaml

from ..errors import HostError, RunbookError
from ..phase.steps import Step
from . import state

RKE1_SNAPSHOTS = "/opt/rke/etcd-snapshots"  # rancher/rke services/etcd.go EtcdSnapshotPath
RKE1_SCRATCH = "/etc/kubernetes"  # the etcd container sees it under the same path (rke binds it)
RKE2_DB = "/var/lib/rancher/rke2/server/db"
RKE2_SNAPSHOTS = f"{RKE2_DB}/snapshots"
SIDECAR = ".json"  # beside every copy: where it came from, its checksum and etcdutl's status


class SnapshotError(RunbookError):
    """A snapshot could not be taken, found, verified or copied; the message names the node and the file."""


# -- settings ---------------------------------------------------------------------------------------

def etcdutl_command(params) -> str:
    """etcdutl on an etcd node: RKE1's etcd container has it (the etcd image ships it); RKE2 ships none."""
    k = params.kubernetes
    return k.etcdutl or ("docker exec etcd etcdutl" if k.distribution == "rke1" else "etcdutl")


def schedule_rows(params) -> list[dict]:
    """The recurring snapshots: what the parameters say, how the distribution's file says it, and what is deployed.

    RKE1: ``services.etcd`` of cluster.yml (``snapshot`` and ``backup_config``); RKE2: the first server's
    ``etcd-snapshot-schedule-cron`` and ``-retention``. "as deployed" is the state folder's copy of the
    file last brought up (``-`` before the first bring-up).
    """
    from .spec import spec_from_params

    k = params.kubernetes
    hours, kept = k.etcd_snapshot_interval_hours, k.etcd_snapshot_retention
    meaning = f"every {hours} h, the newest {kept} kept ({hours * kept} h of history)"
    if k.distribution == "rke1":
        from .rke1 import render_cluster_yml

        rendered = _rke1_snapshot_keys(render_cluster_yml(params))
        path = _in_state(params, state.CLUSTER_YML)
        deployed = _rke1_snapshot_keys(path.read_text()) if path and path.exists() else {}
        keys = {"services.etcd.snapshot": "on (always)", "services.etcd.backup_config.interval_hours": f"{hours} (h)",
                "services.etcd.backup_config.retention": f"{kept} (snapshots)"}
    else:
        from .rke2 import first_server, render_rke2_configs

        spec = spec_from_params(params)
        first = first_server(spec).name
        rendered = _flat(yaml.safe_load(render_rke2_configs(spec)[first]), ("etcd-snapshot-schedule-cron", "etcd-snapshot-retention"))
        path = _in_state(params, f"{state.RKE2_CONFIGS}/{first}.yaml")
        deployed = _flat(yaml.safe_load(path.read_text()), tuple(rendered)) if path and path.exists() else {}
        keys = {"etcd-snapshot-schedule-cron": f"every {hours} h", "etcd-snapshot-retention": f"{kept} (snapshots)"}
    rows = [{"setting": key, "parameters": wanted, "rendered": str(rendered.get(key, "-")), "as deployed": str(deployed.get(key, "-")),
             "same": "yes" if key in deployed and deployed.get(key) == rendered.get(key) else "no"} for key, wanted in keys.items()]
    rows.append({"setting": "meaning", "parameters": meaning, "rendered": "", "as deployed": str(path) if deployed else "not deployed yet",
                 "same": ""})
    return rows


def _in_state(params, relative: str) -> Path | None:
    """A file of the state folder, or None when the folder cannot be used (:func:`blockers` says why)."""
    try:
        return state.state_dir(params) / relative
    except RunbookError:
        return None


def _rke1_snapshot_keys(text: str) -> dict:
    etcd = ((yaml.safe_load(text) or {}).get("services") or {}).get("etcd") or {}
    out = {"services.etcd.snapshot": etcd.get("snapshot")}
    for key, value in (etcd.get("backup_config") or {}).items():
        out[f"services.etcd.backup_config.{key}"] = value
    for key in ("creation", "retention"):  # the legacy form a hand-written file may still have
        if key in etcd:
            out[f"services.etcd.{key}"] = etcd[key]
    return out


def _flat(data, keys: tuple[str, ...]) -> dict:
    return {k: (data or {}).get(k) for k in keys if k in (data or {})}


@dataclass(frozen=True)
class Target:
    """Where copies go: a local folder (``host`` None) or a folder on an inventory host; and in which country."""

    path: str  # local: absolute, resolved; host: the absolute folder there
    country: str
    host: str | None = None

    def describe(self) -> str:
        return f"{self.host}:{self.path}" if self.host else self.path


def target(params) -> Target:
    """``kubernetes.etcd_backup`` resolved (its rules were checked when the file was loaded)."""
    b = params.kubernetes.etcd_backup
    if b is None:
        raise SnapshotError(f"{params.source}: kubernetes.etcd_backup is not set; say where snapshots are copied off the nodes, "
                            "e.g. {path: etcd-backups, country: " + params.environment.data_country + "} (a folder in the data "
                            "country: a snapshot holds every Secret of the cluster)")
    if b.host:
        return Target(b.path, params.host(b.host).location.country, b.host)
    return Target(str(backup_dir(params)), b.country or params.environment.data_country)


def _archive_roots() -> list[Path]:
    """Every archive the record of this run may go to: $RUNBOOK_ARCHIVE, the run's own (from its journal), the default."""
    from ..archive import default_root

    roots = [default_root()]
    journal = os.environ.get("RUNBOOK_JOURNAL")
    if journal:
        roots += [p.parent for p in Path(journal).parents if p.name == ".journal"][:1]
    return [r.resolve() for r in roots]


def backup_dir(params, create: bool = False) -> Path:
    """The local folder of ``kubernetes.etcd_backup``: refused inside the archive or readable by others; ``create`` makes it 0700."""
    return state.private_folder(params, params.kubernetes.etcd_backup.path, "kubernetes.etcd_backup.path",
                                "every Secret of the cluster", _archive_roots(), create, SnapshotError)


# -- snapshots on the nodes -------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeSnapshot:
    """One snapshot file on one node. ``name`` is what a restore takes (RKE1: without ``.zip``; RKE2: the file name)."""

    node: str
    name: str
    path: str
    size: int = 0
    created: str = ""  # ISO 8601, UTC

    def row(self) -> dict:
        return {"node": self.node, "snapshot": self.name, "file": self.path, "size": human_size(self.size), "created": self.created}


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def snapshot_hosts(params) -> list:
    """Where snapshots live: the etcd hosts (RKE1's etcd nodes, RKE2's servers that run etcd), inventory order."""
    return params.hosts_with("etcd")


def list_command(distribution: str) -> str:
    """What lists one node's snapshots. RKE2 has ``rke2 etcd-snapshot ls``; RKE1 none, so the folder is read."""
    if distribution == "rke2":
        return "rke2 etcd-snapshot ls"
    return f"find {RKE1_SNAPSHOTS} -maxdepth 1 -type f -printf '%f\\t%s\\t%T@\\n' 2>/dev/null || true"


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_listing(distribution: str, node: str, stdout: str) -> list[NodeSnapshot]:
    """The snapshots a node listed, oldest first. RKE1: ``find -printf`` lines; RKE2: ``rke2 etcd-snapshot ls``'s table."""
    out = []
    if distribution == "rke1":
        for line in stdout.splitlines():
            parts = line.split("\t")
            if len(parts) != 3 or parts[0].endswith((".part", ".rkestate")) or parts[0] == "pki.bundle.tar.gz":
                continue
            try:
                size, mtime = int(parts[1]), float(parts[2])
            except ValueError:
                continue
            out.append(NodeSnapshot(node, parts[0].removesuffix(".zip"), f"{RKE1_SNAPSHOTS}/{parts[0]}", size, _iso(mtime)))
    else:
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) < 4 or not parts[1].startswith("file://"):  # the header, S3 rows
                continue
            try:
                size = int(parts[2])
            except ValueError:
                continue
            out.append(NodeSnapshot(node, parts[0], parts[1].removeprefix("file://"), size, parts[3]))
    return sorted(out, key=lambda s: (s.created, s.name))


def list_snapshots(params, fleet) -> tuple[list[NodeSnapshot], dict[str, str]]:
    """Every snapshot on every etcd host (read-only), and the hosts that could not be asked, with why."""
    k = params.kubernetes
    results = fleet.run(list_command(k.distribution), hosts=snapshot_hosts(params), desc="etcd snapshots")
    found, errors = [], {}
    for node, r in results.items():
        if not r.ok:
            errors[node] = r.error or r.stderr.strip()[-300:]
            continue
        found += parse_listing(k.distribution, node, r.stdout)
    return found, errors


# -- taking one now ---------------------------------------------------------------------------------

def snapshot_name(prefix: str = "runbook", now: dt.datetime | None = None) -> str:
    """A name that sorts by time and is valid for both distributions: ``runbook-20261128t120000z``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{prefix}-{now.strftime('%Y%m%dt%H%M%Sz')}"


def rke1_save_argv(params, name: str) -> list[str]:
    """``rke etcd snapshot-save`` with the state folder's cluster.yml (it also puts cluster.rkestate in the snapshot)."""
    from .bringup import rke_binary

    return [rke_binary(params), "etcd", "snapshot-save", "--config", str(state.state_dir(params) / state.CLUSTER_YML), "--name", name]


def rke2_save_command(name: str) -> str:
    return f"rke2 etcd-snapshot save --name {shlex.quote(name)}"


def save_command(params, name: str) -> str:
    """The command that takes the snapshot, as a person would type it (RKE1 here, RKE2 on the first server)."""
    if params.kubernetes.distribution == "rke1":
        return " ".join(shlex.quote(a) for a in rke1_save_argv(params, name))
    return rke2_save_command(name)


def saved_path(output: str) -> str | None:
    """Where RKE2 saved a snapshot, from its log (``Saving etcd snapshot to <path>``)."""
    m = re.search(r"Saving etcd snapshot to (\S+?)(?:\"|\s|$)", output)
    return m.group(1) if m else None


def source_node(params):
    """The node whose copy a restore uses and whose copy is verified: RKE1 the first etcd node, RKE2 the first server."""
    if params.kubernetes.distribution == "rke1":
        return snapshot_hosts(params)[0]
    from .rke2 import first_server
    from .spec import spec_from_params

    return params.host(first_server(spec_from_params(params)).name)


@dataclass
class Taken:
    """A snapshot taken now: its copies on the nodes (the restore's source first), what the tool said, how long it took."""

    name: str
    snapshots: list[NodeSnapshot] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.snapshots)

    @property
    def source(self) -> NodeSnapshot | None:
        return self.snapshots[0] if self.snapshots else None


def take(params, fleet, name: str, on_line: Callable[[str], None] = print) -> Taken:
    """Take snapshot ``name`` now with the distribution's own tool; the tool's output goes to ``on_line`` as it comes."""
    import time

    t0 = time.monotonic()
    out = Taken(name)
    k = params.kubernetes
    if k.distribution == "rke1":
        from .bringup import run_streaming

        code = run_streaming(rke1_save_argv(params, name), state.state_dir(params), on_line, out.output)
        if code != 0:
            fatal = next((line for line in reversed(out.output) if line.startswith("FATA")), out.output[-1] if out.output else "")
            out.error = f"rke etcd snapshot-save exited {code}: {fatal}"
        else:
            listed, errors = list_snapshots(params, fleet)
            mine = {s.node: s for s in listed if s.name == name}
            out.snapshots = [mine[h.name] for h in snapshot_hosts(params) if h.name in mine]
            if not out.snapshots:
                out.error = (f"rke reported snapshot {name} saved, but no etcd node has {RKE1_SNAPSHOTS}/{name}.zip"
                             + (f" (not asked: {', '.join(f'{n}: {e}' for n, e in errors.items())})" if errors else ""))
    else:
        host = source_node(params)
        r = fleet.run_on(host, rke2_save_command(name), timeout=600)
        text = r.stdout + r.stderr
        for line in text.splitlines():
            out.output.append(line)
            on_line(line)
        path = saved_path(text)
        if not r.ok:
            out.error = f"{host.name}: rke2 etcd-snapshot save failed: {r.error}"
        elif path is None:
            out.error = f"{host.name}: rke2 etcd-snapshot save did not say where it saved the snapshot (no 'Saving etcd snapshot to')"
        else:
            st = fleet.run_on(host, f"stat -c '%s %Y' {shlex.quote(path)}")
            if not st.ok:
                out.error = f"{host.name}: the snapshot {path} is not there after the save: {st.error}"
            else:
                size, mtime = st.stdout.split()
                out.snapshots = [NodeSnapshot(host.name, path.rsplit("/", 1)[1], path, int(size), _iso(float(mtime)))]
    out.seconds = time.monotonic() - t0
    return out


# -- verifying it on its node -----------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotStatus:
    """``etcdutl snapshot status -w json``: etcd's hash of the data, its revision, its keys, its size."""

    hash: int
    revision: int
    total_keys: int
    total_size: int
    version: str = ""

    def row(self) -> dict:
        return {"hash": f"{self.hash:08x}", "revision": self.revision, "keys": self.total_keys, "size": human_size(self.total_size),
                "etcd storage version": self.version or "-"}


def parse_status(text: str) -> SnapshotStatus:
    """etcdutl's JSON (the last ``{...}`` line of ``text``); ValueError saying what is wrong with it."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip().startswith("{")), None)
    if line is None:
        raise ValueError("etcdutl printed no JSON status")
    try:
        data = json.loads(line)
    except ValueError as e:
        raise ValueError(f"etcdutl's status is not JSON ({e})") from None
    try:
        out = SnapshotStatus(int(data["hash"]), int(data["revision"]), int(data["totalKey"]), int(data["totalSize"]),
                             str(data.get("version", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"etcdutl's status lacks {e}: {line[:200]}") from None
    if out.revision < 1 or out.total_size < 1:
        raise ValueError(f"etcdutl reports an empty snapshot (revision {out.revision}, size {out.total_size})")
    return out


# Reads the etcd snapshot out of an RKE1 zip (entry /backup/NAME) or an RKE2 compressed one (entry NAME):
# python3 (on every Debian cloud image), else unzip.
_EXTRACT = """if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
m = [i for i in z.infolist() if i.filename.lstrip("/") in ("backup/" + sys.argv[2], sys.argv[2])]
if not m:
    sys.exit("no entry backup/%s in %s" % (sys.argv[2], sys.argv[1]))
with z.open(m[0]) as s, open(sys.argv[3], "wb") as d:
    shutil.copyfileobj(s, d)' "$f" "$n" "$d/$n"
elif command -v unzip >/dev/null 2>&1; then
  unzip -p "$f" "*$n" > "$d/$n"
else
  echo "neither python3 nor unzip on this node: one is needed to read the snapshot out of its zip" >&2; exit 4
fi"""


def verify_command(params, snap: NodeSnapshot) -> str:
    """A shell script for the snapshot's node: the file's SHA-256, then etcdutl's status of the etcd snapshot in it."""
    lines = ["set -e", f"f={shlex.quote(snap.path)}", 'test -f "$f" || { echo "no snapshot file $f" >&2; exit 3; }',
             'sha=$(sha256sum "$f" | cut -d" " -f1)', 'echo "sha256=$sha"']
    if snap.path.endswith(".zip"):
        scratch = RKE1_SCRATCH if params.kubernetes.distribution == "rke1" else snap.path.rsplit("/", 1)[0]
        entry = snap.path.rsplit("/", 1)[1].removesuffix(".zip")
        lines += [f"n={shlex.quote(entry)}", f"d=$(mktemp -d {scratch}/.runbook-etcd-verify.XXXXXX)", "trap 'rm -rf \"$d\"' EXIT",
                  _EXTRACT, f'{etcdutl_command(params)} snapshot status "$d/$n" -w json']
    else:
        lines.append(f'{etcdutl_command(params)} snapshot status "$f" -w json')
    return "\n".join(lines)


def parse_verify(stdout: str) -> tuple[str, SnapshotStatus]:
    m = re.search(r"^sha256=([0-9a-f]{64})$", stdout, re.M)
    if not m:
        raise ValueError("no SHA-256 of the file")
    return m.group(1), parse_status(stdout[m.end():])


@dataclass(frozen=True)
class Verified:
    """A snapshot checked on its node: its file's SHA-256 and etcdutl's status of its data."""

    snapshot: NodeSnapshot
    sha256: str
    status: SnapshotStatus

    def row(self) -> dict:
        return {"node": self.snapshot.node, "snapshot": self.snapshot.name, **self.status.row(), "created": self.snapshot.created,
                "file SHA-256": self.sha256}


def verify(params, fleet, snap: NodeSnapshot) -> Verified:
    """``etcdutl snapshot status`` on the snapshot's node; SnapshotError naming the node, the file and why when it fails."""
    r = fleet.run_on(params.host(snap.node), verify_command(params, snap), timeout=600)
    if not r.ok:
        detail = (r.stderr.strip().splitlines() or [r.error])[-1]
        raise SnapshotError(f"{snap.node}: {snap.path} does not verify: {detail[-400:]}")
    try:
        sha, status = parse_verify(r.stdout)
    except ValueError as e:
        raise SnapshotError(f"{snap.node}: {snap.path}: {e}; etcdutl said: {(r.stderr.strip() or r.stdout.strip())[-300:]}") from None
    return Verified(snap, sha, status)


# -- copying it off the node ------------------------------------------------------------------------

def etcd_integrity(f: BinaryIO) -> bool | None:
    """Whether etcd's integrity hash matches: a snapshot etcd wrote ends with the SHA-256 of the data before it.

    None when the file carries none (its size is not a multiple of 512 plus 32: not written by ``snapshot save``).
    """
    digest = hashlib.sha256()
    tail = b""
    size = 0
    while chunk := f.read(1 << 20):
        size += len(chunk)
        data = tail + chunk
        digest.update(data[:-32])
        tail = data[-32:]
    if size % 512 != 32:
        return None
    return digest.digest() == tail


def file_integrity(path: Path) -> bool | None:
    """:func:`etcd_integrity` of a copied snapshot, read out of its zip when it is one."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            entries = [i for i in z.infolist() if not i.filename.endswith(".rkestate")]
            if len(entries) != 1:
                return None
            with z.open(entries[0]) as f:
                return etcd_integrity(f)
    with open(path, "rb") as f:
        return etcd_integrity(f)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Copied:
    """A snapshot copied off its node: where to, the copy's SHA-256 (it must be the node's), etcd's integrity hash."""

    verified: Verified
    destination: str
    sha256: str
    integrity: bool | None

    @property
    def ok(self) -> bool:
        return self.sha256 == self.verified.sha256 and self.integrity is not False

    def row(self) -> dict:
        return {"snapshot": self.verified.snapshot.name, "from": f"{self.verified.snapshot.node}:{self.verified.snapshot.path}",
                "to": self.destination, "SHA-256 on the node": self.verified.sha256, "SHA-256 of the copy": self.sha256,
                "same": "yes" if self.sha256 == self.verified.sha256 else "NO",
                "etcd integrity hash": {True: "matches", False: "DOES NOT MATCH", None: "none in the file"}[self.integrity]}


def _sidecar(params, v: Verified, sha: str) -> bytes:
    return (json.dumps({"cluster": params.kubernetes.cluster_name, "distribution": params.kubernetes.distribution,
                        "snapshot": asdict(v.snapshot), "sha256": sha, "status": asdict(v.status),
                        "copied": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=2) + "\n").encode()


def copy_off(params, fleet, verified: Verified) -> Copied:
    """Copy the verified snapshot to ``kubernetes.etcd_backup`` over SFTP (0600 files, 0700 folder), then compare checksums.

    A copy whose SHA-256 differs from the node's is removed and SnapshotError raised; a good copy gets a
    sidecar ``<file>.json`` saying where it came from. Locally the copy is written as ``.part`` and
    renamed once checked, so a folder never holds a half copy under a snapshot's name.
    """
    where = target(params)
    snap = verified.snapshot
    base = snap.path.rsplit("/", 1)[1]
    node = params.host(snap.node)
    if where.host is None:
        folder = backup_dir(params, create=True) / params.kubernetes.cluster_name
        folder.mkdir(mode=0o700, exist_ok=True)
        final, part = folder / base, folder / f"{base}.part"
        _get(fleet, node, snap, part)
        sha = sha256_file(part)
        if sha != verified.sha256:
            part.unlink(missing_ok=True)
            raise SnapshotError(f"the copy of {snap.node}:{snap.path} has SHA-256 {sha}, the node's file {verified.sha256}: the "
                                "copy was damaged on the way and removed; run the copy again")
        integrity = file_integrity(part)
        os.replace(part, final)
        _write_private(folder / f"{base}{SIDECAR}", _sidecar(params, verified, sha))
        return Copied(verified, str(final), sha, integrity)
    host = params.host(where.host)
    folder = f"{where.path.rstrip('/')}/{params.kubernetes.cluster_name}"
    with tempfile.TemporaryDirectory(prefix="runbook-etcd-") as tmp:  # 0700: the relay through this machine
        local = Path(tmp) / base
        _get(fleet, node, snap, local)
        integrity = file_integrity(local)
        fleet.run_on(host, f"mkdir -p {shlex.quote(folder)} && chmod 700 {shlex.quote(where.path)} {shlex.quote(folder)}").check()
        remote = f"{folder}/{base}"
        fleet.put(host, local, f"{remote}.part", 0o600)
        r = fleet.run_on(host, f"sha256sum {shlex.quote(remote + '.part')}").check()
        sha = (r.stdout.split() or [""])[0]
        if sha != verified.sha256:
            fleet.run_on(host, f"rm -f {shlex.quote(remote + '.part')}")
            raise SnapshotError(f"the copy on {host.name}:{remote} has SHA-256 {sha}, the node's file {verified.sha256}: it was "
                                "removed; run the copy again")
        fleet.run_on(host, f"mv -f {shlex.quote(remote + '.part')} {shlex.quote(remote)}").check()
        side = Path(tmp) / f"{base}{SIDECAR}"
        _write_private(side, _sidecar(params, verified, sha))
        fleet.put(host, side, f"{remote}{SIDECAR}", 0o600)
    return Copied(verified, f"{host.name}:{remote}", sha, integrity)


def _get(fleet, node, snap: NodeSnapshot, local: Path) -> None:
    """The node's snapshot file into ``local`` (0600 before a byte is written) over the fleet's SFTP; any failure, a dead
    connection included, is a SnapshotError naming the node (``Fleet.sftp``)."""
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private before a byte is written
    os.close(fd)
    try:
        with fleet.sftp(node, f"cannot copy {snap.path} off the node") as sftp:
            sftp.get(snap.path, str(local))
    except HostError as e:
        local.unlink(missing_ok=True)
        raise SnapshotError(str(e)) from None
    local.chmod(0o600)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def copies(params) -> list[dict]:
    """The copies already in the local backup folder, from their sidecars (newest last); none for a host target."""
    b = params.kubernetes.etcd_backup
    if b is None or b.host:
        return []
    folder = backup_dir(params) / params.kubernetes.cluster_name
    rows = []
    for side in sorted(folder.glob(f"*{SIDECAR}")) if folder.is_dir() else []:
        try:
            data = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        copy = side.with_name(side.name.removesuffix(SIDECAR))
        status = data.get("status", {})
        rows.append({"snapshot": data.get("snapshot", {}).get("name", ""), "from": data.get("snapshot", {}).get("node", ""),
                     "created": data.get("snapshot", {}).get("created", ""), "revision": status.get("revision", ""),
                     "copy": str(copy), "present": "yes" if copy.exists() else "MISSING", "SHA-256": data.get("sha256", "")})
    return sorted(rows, key=lambda r: r["created"])


# -- what the runbook plans and applies -------------------------------------------------------------

def blockers(params) -> list[str]:
    """What stops the runbook before anything is planned: no place for the copies, no cluster brought up, a lost state file."""
    out = []
    try:
        target(params)
    except RunbookError as e:
        out.append(str(e))
    try:
        kubeconfig = state.kubeconfig_path(params)
    except RunbookError as e:  # the state folder is in the archive or readable by others
        return [*out, str(e)]
    if not kubeconfig.exists():
        out.append(f"no kubeconfig at {kubeconfig}: the cluster has not been brought up from these parameters (run "
                   "03-kubernetes-cluster first)")
    if params.kubernetes.distribution == "rke1":
        incident = state.lost_state(params)
        if incident:
            out.append(incident)
        elif not (state.state_dir(params) / state.CLUSTER_YML).exists():
            out.append(f"no {state.CLUSTER_YML} in {state.state_dir(params)}: rke needs the file the cluster was brought up with")
    return out


def plan_snapshot(params, name: str, blocked: list[str] = ()) -> list[Step]:
    """Two steps: take the snapshot (the distribution's tool), then verify it on its node and copy it off (checksums compared)."""
    where = f"cluster {params.kubernetes.cluster_name}"
    if blocked:
        return [Step(where, "etcd snapshot", "nothing until the blockers are fixed", None, blocked="; ".join(blocked))]
    source = source_node(params)
    if params.kubernetes.distribution == "rke1":
        nodes = [h.name for h in snapshot_hosts(params)]
        take_step = Step(where, "etcd snapshot", f"take snapshot {name} on every etcd node ({', '.join(nodes)}): "
                                                 f"{RKE1_SNAPSHOTS}/{name}.zip, with cluster.rkestate in it",
                         save_command(params, name), undo=f"rm -f {RKE1_SNAPSHOTS}/{name}.zip (on each etcd node)")
    else:
        take_step = Step(source.name, "etcd snapshot", f"take snapshot {name}-{source.name}-<time> in {RKE2_SNAPSHOTS}",
                         save_command(params, name), undo_note=f"rke2 etcd-snapshot delete {name}-{source.name}-<time>")
    dest = target(params)
    copy_step = Step(dest.host or "this machine", "etcd snapshot copy",
                     f"verify the snapshot on {source.name} (etcdutl snapshot status), copy it to {dest.describe()}/"
                     f"{params.kubernetes.cluster_name}/ (0600, folder 0700, in {dest.country}) and compare SHA-256",
                     f"sftp get from {source.name}; sha256sum on both sides",
                     undo_note="remove the copy and its .json beside it")
    return [take_step, copy_step]


@dataclass
class SnapshotRun:
    """What taking, verifying and copying one snapshot gave; ``error`` says where it stopped."""

    taken: Taken | None = None
    verified: Verified | None = None
    copied: Copied | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.copied is not None and self.copied.ok


def apply_snapshot(params, fleet, steps: list[Step], name: str, on_change: Callable[[Step], object] | None = None,
                   on_line: Callable[[str], None] = print) -> SnapshotRun:
    """Carry out :func:`plan_snapshot`: take, verify on the node, copy off; each step recorded once it succeeded."""
    out = SnapshotRun()
    if any(s.command is None for s in steps):
        out.error = "; ".join(s.blocked for s in steps if s.command is None)
        return out
    try:
        out.taken = take(params, fleet, name, on_line)
    except RunbookError as e:  # rke cannot be started: the step's failure, never a crashed cell
        out.error = str(e)
        return out
    if not out.taken.ok:
        out.error = out.taken.error
        return out
    if on_change:
        on_change(steps[0])
    try:
        out.verified = verify(params, fleet, out.taken.source)
        out.copied = copy_off(params, fleet, out.verified)
    except (RunbookError, OSError) as e:
        out.error = str(e)
        return out
    if not out.copied.ok:
        out.error = f"the copy at {out.copied.destination} does not pass: {out.copied.row()}"
        return out
    if on_change:
        on_change(steps[1])
    return out


def find_snapshot(params, listing: list[NodeSnapshot], name: str) -> NodeSnapshot | None:
    """Snapshot ``name`` (as listed, or its file name) on the node a restore reads it on."""
    source = source_node(params).name
    for s in listing:
        if s.node == source and name in (s.name, s.path.rsplit("/", 1)[1]):
            return s
    return None


def verdict(blocked: list[str], statuses: list[str], problems: list[str]) -> str:
    """*not ready* (blocked), *planned* (nothing applied), *incomplete* (a problem), else *done*."""
    if blocked:
        return "not ready"
    if problems:
        return "incomplete"
    if statuses and all(s in ("planned", "empty") for s in statuses):
        return "planned"
    if any(s in ("cancelled", "pending") for s in statuses):
        return "cancelled"
    return "done"
