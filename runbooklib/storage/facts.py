"""The CDN storage's facts: what each brick and mount host has of GlusterFS, in one round trip per host.

Every fact is a shell command and a pure parser of its output, tested on recorded outputs
(``tests/data/storage/facts/``). ``gluster`` answers only where glusterd runs: elsewhere its facts
are empty (no pool, no volume), never guessed.
"""

from __future__ import annotations

import base64
import posixpath
import re
import shlex
from typing import Optional, TypedDict
from xml.etree import ElementTree

from ..phase.facts import Fact, FactSet, Gathered
from .settings import mount_hosts

SERVER_PACKAGE = "glusterfs-server"
CLIENT_PACKAGE = "glusterfs-client"


class Packages(TypedDict):
    server: str  # the installed version, "" when not installed
    client: str


class Service(TypedDict):
    active: str
    enabled: str


class Peer(TypedDict):
    uuid: str
    hostname: str
    state: str  # Connected, Disconnected


class Brick(TypedDict):
    host: str
    path: str
    arbiter: bool


class Volume(TypedDict):
    name: str
    type: str  # Replicate, Distribute, ...
    status: str  # Created, Started, Stopped
    bricks: list[Brick]
    options: dict[str, str]  # Options Reconfigured: what was set on the volume


class BrickFolder(TypedDict):
    parent_exists: bool  # the brick's parent folder (gluster makes the brick folder itself, not its parents)
    on_root: bool  # the brick would sit on the root filesystem (gluster then needs force)
    filesystem: str  # the mount point the brick would sit on


class Mounted(TypedDict):
    source: str  # host:/volume, "" when nothing is mounted there
    fstype: str


# -- parsers -----------------------------------------------------------------------------------

def parse_packages(text: str) -> Packages:
    """``dpkg-query -W -f='${Package} ${Status} ${Version}\\n'`` lines: the versions of the installed ones."""
    out: Packages = {"server": "", "client": ""}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1:4] == ["install", "ok", "installed"]:
            if parts[0] == SERVER_PACKAGE:
                out["server"] = parts[4]
            elif parts[0] == CLIENT_PACKAGE:
                out["client"] = parts[4]
    return out


def parse_service(text: str) -> Service:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"active": lines[0] if lines else "unknown", "enabled": lines[1] if len(lines) > 1 else "unknown"}


def parse_pool(text: str) -> Optional[list[Peer]]:
    """``gluster pool list``: every member but the host itself (``localhost``); None when glusterd did not answer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].split()[:1] == ["UUID"]:
        return None
    out: list[Peer] = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[1] != "localhost":
            out.append({"uuid": parts[0], "hostname": parts[1], "state": parts[2]})
    return out


def parse_volume(text: str) -> Optional[Volume]:
    """``gluster volume info <vol>``; None when the volume does not exist (or glusterd did not answer)."""
    fields: dict[str, str] = {}
    bricks: list[Brick] = []
    options: dict[str, str] = {}
    in_options = False
    for line in text.splitlines():
        if not line.strip():
            continue
        if in_options:
            key, _, value = line.partition(":")
            options[key.strip()] = value.strip()
            continue
        m = re.match(r"Brick\d+:\s*(\S+?):(/\S*)(\s+\(arbiter\))?\s*$", line.strip())
        if m:
            bricks.append({"host": m.group(1), "path": m.group(2), "arbiter": bool(m.group(3))})
        elif line.strip() == "Options Reconfigured:":
            in_options = True
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    if "Volume Name" not in fields:
        return None
    return {"name": fields["Volume Name"], "type": fields.get("Type", ""), "status": fields.get("Status", ""),
            "bricks": bricks, "options": options}


def parse_brick_folder(text: str) -> BrickFolder:
    """``parent yes|no``, ``device <brick's> <root's>``, ``fs <mount point>``."""
    values = dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)
    devices = values.get("device", "").split()
    if len(devices) != 2:
        raise ValueError(f"no device line in {text!r}")
    return {"parent_exists": values.get("parent", "").strip() == "yes", "on_root": devices[0] == devices[1],
            "filesystem": values.get("fs", "").strip()}


def parse_mounted(text: str) -> Mounted:
    """``findmnt -n -o SOURCE,FSTYPE --mountpoint <path>``: empty when nothing is mounted there."""
    parts = text.split()
    return {"source": parts[0], "fstype": parts[1]} if len(parts) >= 2 else {"source": "", "fstype": ""}


def parse_file(text: str) -> Optional[str]:
    """``present <base64>`` or ``absent``."""
    parts = text.split()
    if not parts or parts[0] == "absent":
        return None
    return base64.b64decode(parts[1]).decode(errors="replace") if len(parts) > 1 else ""


# -- what is read after the apply (verification) -----------------------------------------------

class BrickStatus(TypedDict):
    host: str
    path: str
    online: bool
    pid: str
    port: str


def parse_volume_status(xml: str) -> Optional[dict]:
    """``gluster volume status <vol> --xml``: bricks and self-heal daemons, each online or not; None when it failed."""
    try:
        root = ElementTree.fromstring(xml.strip())
    except ElementTree.ParseError:
        return None
    if (root.findtext("opRet") or "-1").strip() != "0":
        return {"error": (root.findtext("opErrstr") or "").strip() or "gluster volume status failed", "bricks": [], "daemons": []}
    bricks, daemons = [], []
    for node in root.iter("node"):
        entry = {"host": node.findtext("hostname") or "", "path": node.findtext("path") or "",
                 "online": (node.findtext("status") or "0").strip() == "1", "pid": node.findtext("pid") or "",
                 "port": node.findtext("port") or ""}
        if entry["path"].startswith("/"):
            bricks.append(entry)
        else:
            daemons.append({"daemon": entry["host"], "host": entry["path"], "online": entry["online"], "pid": entry["pid"]})
    return {"error": "", "bricks": bricks, "daemons": daemons}


def parse_heal_info(text: str) -> list[dict]:
    """``gluster volume heal <vol> info``: per brick its status, the number of entries to heal and the first few."""
    out: list[dict] = []
    current: Optional[dict] = None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        m = re.match(r"Brick (\S+?):(/\S*)$", s)
        if m:
            current = {"host": m.group(1), "path": m.group(2), "status": "", "entries": None, "pending": []}
            out.append(current)
        elif current is None:
            continue
        elif s.startswith("Status:"):
            current["status"] = s.split(":", 1)[1].strip()
        elif s.startswith("Number of entries:"):
            value = s.split(":", 1)[1].strip()
            current["entries"] = int(value) if value.isdigit() else None
        elif len(current["pending"]) < 10:
            current["pending"].append(s)
    return out


# -- the fact set ------------------------------------------------------------------------------

def _file(path: str) -> str:
    return f"if [ -f {path} ]; then echo present $(base64 -w0 < {path}); else echo absent; fi"


def _brick_folder(path: str) -> str:
    parent = shlex.quote(posixpath.dirname(path) or "/")
    # the nearest folder that exists: gluster compares the brick's device with the root's
    return (f"if [ -d {parent} ]; then echo parent yes; else echo parent no; fi; p={shlex.quote(path)}; "
            "while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
            "echo device $(stat -c %d \"$p\") $(stat -c %d /); echo fs $(findmnt -n -o TARGET --target \"$p\")")


def facts(volume: str, brick_path: str, mount_path: str) -> tuple[Fact, ...]:
    vol, mnt = shlex.quote(volume), shlex.quote(mount_path)
    return (
        Fact("packages", "the GlusterFS server and client packages", "dpkg-query -W -f='${{Package}} ${{Status}} ${{Version}}\\n' "
             f"{SERVER_PACKAGE} {CLIENT_PACKAGE}", parse_packages, {"server": "", "client": ""}),
        Fact("service", "glusterd: active, enabled", "systemctl is-active glusterd; systemctl is-enabled glusterd",
             parse_service, {"active": "unknown", "enabled": "unknown"}),
        Fact("pool", "the trusted pool as this host sees it (gluster pool list)", "timeout 20 gluster pool list", parse_pool, None),
        Fact("volume", "the volume's bricks, status and options (gluster volume info)", f"timeout 20 gluster volume info {vol}",
             parse_volume, None),
        Fact("brick_folder", "the brick's parent folder and filesystem", _brick_folder(brick_path), parse_brick_folder,
             {"parent_exists": False, "on_root": False, "filesystem": ""}),
        Fact("mounted", "what is mounted at the mount path", f"findmnt -n -o SOURCE,FSTYPE --mountpoint {mnt}", parse_mounted,
             {"source": "", "fstype": ""}),
        Fact("fstab", "/etc/fstab", _file("/etc/fstab"), parse_file, None),
        # glusterd keeps every volume's definition on disk: a volume that exists is known even while glusterd is down
        Fact("volume_defined", "the volume's definition in glusterd's working directory",
             f"test -f /var/lib/glusterd/vols/{vol}/info && echo yes || echo no", lambda text: text.strip() == "yes", False),
    )


def fact_set(params) -> FactSet:
    g = params.storage.gluster
    return FactSet(facts(g.volume, g.brick_path, g.mount_path))


def storage_hosts(params) -> list:
    """The hosts the CDN storage touches: the brick hosts and the arbiter, then the hosts that mount it."""
    names = list(dict.fromkeys(params.storage.gluster.servers + mount_hosts(params)))
    return [params.host(n) for n in names]


def gather(params, fleet, hosts: list | None = None) -> Gathered:
    """Facts of every storage host, in parallel, one round trip each."""
    return fact_set(params).gather(fleet, hosts if hosts is not None else storage_hosts(params), desc="gluster facts")
