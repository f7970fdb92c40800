"""The ``storage`` section: GlusterFS for CDN content, Rook/Ceph for block volumes."""

from __future__ import annotations

import re
from typing import Annotated, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Name, Section, need_host
from .ceph_settings import Ceph, ceph_rules


def _host_path(value: str) -> str:
    # written into shell commands and /etc/fstab: absolute, no spaces or shell characters
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path; write one that starts with /, like /cdn-data")
    if not re.fullmatch(r"/[A-Za-z0-9_./-]*", value) or "/../" in value + "/" or "//" in value:
        raise ValueError(f"{value!r}: use letters, digits and _ . - / only (no spaces, no .., no //), like /bricks/cdn")
    if value.rstrip("/") == "":
        raise ValueError("'/' is the root folder itself; name a folder of its own, like /cdn-data")
    return value.rstrip("/")


HostPath = Annotated[str, AfterValidator(_host_path)]
OptionKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)+$")]
OptionValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:,/-]+$")]


class Gluster(Section):
    """A replicated GlusterFS volume for the CDN's content: one brick per edge node, mounted on the edges and the workers.

    Replica 2 (two bricks) keeps two copies but cannot tell which copy is right when the two bricks
    were written apart (a network split): that is split-brain, repaired by hand. Naming a third host
    as ``arbiter`` makes it ``replica 3 arbiter 1``: the arbiter brick holds only file names and
    metadata, and lets the volume refuse the writes that would split it.
    """

    volume: Name = "cdn"
    bricks: Annotated[list[Name], Field(min_length=1)]
    arbiter: Optional[Name] = None  # a third host for an arbiter brick (metadata only): no split-brain
    brick_path: HostPath = "/bricks/cdn"
    mount_path: HostPath = "/cdn-data"
    # hosts that mount the volume (persisted in /etc/fstab); default: the brick hosts, then every worker
    mount_on: Optional[Annotated[list[Name], Field(min_length=1)]] = None
    # volume options set with `gluster volume set` (e.g. cluster.quorum-type: auto with an arbiter)
    options: dict[OptionKey, OptionValue] = {}
    # gluster refuses a brick on the root filesystem unless forced; production bricks live on a filesystem
    # of their own (XFS at /bricks). True lets the runbook force it (the lab's parameter files say so: its VMs
    # have one filesystem).
    allow_root_filesystem: bool = False
    # how long verification waits for `gluster volume heal <vol> info` to come back clean
    heal_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] = 120

    @property
    def servers(self) -> list[str]:
        """The hosts that run glusterd and hold a brick: the bricks, then the arbiter."""
        return list(self.bricks) + ([self.arbiter] if self.arbiter else [])


class Storage(Section):
    gluster: Optional[Gluster] = None
    ceph: Optional[Ceph] = None


def mount_hosts(p) -> list[str]:
    """The hosts that mount the volume: ``storage.gluster.mount_on``, or the brick hosts then every worker."""
    g = p.storage.gluster
    if g.mount_on is not None:
        return list(dict.fromkeys(g.mount_on))
    return list(dict.fromkeys(list(g.bricks) + [h.name for h in p.hosts_with("worker")]))


def gluster_rules(p) -> list[Problem]:
    g = p.storage.gluster
    out: list[Problem] = []
    for i, name in enumerate(g.bricks):
        out += need_host(p, f"storage.gluster.bricks[{i}]", name)
        if name in g.bricks[:i]:
            out.append(Problem(f"storage.gluster.bricks[{i}]", f"{name} is named twice; each brick needs a host of its own "
                                                                "(two bricks on one host are one failure away from losing both)"))
    if len(g.bricks) == 1:
        out.append(Problem("storage.gluster.bricks", f"one brick host ({g.bricks[0]}) keeps a single copy of the CDN's content; "
                                                      "a replicated volume needs two, one per edge node (like [edge1, edge2])"))
    elif len(g.bricks) > 2:
        out.append(Problem("storage.gluster.bricks", f"{len(g.bricks)} brick hosts: this runbook builds replica 2, one brick per "
                                                      "edge node; name two, and a third host as storage.gluster.arbiter"))
    if g.arbiter is not None:
        out += need_host(p, "storage.gluster.arbiter", g.arbiter)
        if g.arbiter in g.bricks:
            out.append(Problem("storage.gluster.arbiter", f"{g.arbiter} already holds a data brick; the arbiter needs a third host, "
                                                          "or one failure takes a data brick and the arbiter together"))
    for i, name in enumerate(g.mount_on or []):
        out += need_host(p, f"storage.gluster.mount_on[{i}]", name)
    if g.mount_path == g.brick_path or g.mount_path.startswith(g.brick_path + "/") or g.brick_path.startswith(g.mount_path + "/"):
        out.append(Problem("storage.gluster.mount_path", f"{g.mount_path} and storage.gluster.brick_path {g.brick_path} overlap; "
                                                         "files written into a brick behind gluster's back are not replicated"))
    return out


def rules(p) -> list[Problem]:
    s = p.storage
    if s is None:
        return []
    out: list[Problem] = []
    if s.gluster is not None:
        out += gluster_rules(p)
    if s.ceph is not None:
        out += ceph_rules(p)
    return out
