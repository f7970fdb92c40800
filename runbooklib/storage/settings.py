"""The ``storage`` section: GlusterFS for CDN content, Rook/Ceph for block volumes."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from ..errors import Problem
from ..schema import Name, Section, need_host


class Gluster(Section):
    volume: Name = "cdn"
    bricks: Annotated[list[Name], Field(min_length=1)]
    brick_path: str = "/bricks/cdn"
    mount_path: str = "/cdn-data"


class Ceph(Section):
    pool_size: Annotated[int, Field(ge=1, le=7)] = 3
    failure_domain: Literal["host", "osd", "rack", "zone"] = "host"
    storage_class: str = "ceph-block"


class Storage(Section):
    gluster: Optional[Gluster] = None
    ceph: Optional[Ceph] = None


def rules(p) -> list[Problem]:
    s = p.storage
    if s is None:
        return []
    out: list[Problem] = []
    if s.gluster is not None:
        for i, name in enumerate(s.gluster.bricks):
            out += need_host(p, f"storage.gluster.bricks[{i}]", name)
    if s.ceph is not None and s.ceph.pool_size == 1 and p.environment.kind != "lab":
        out.append(Problem("storage.ceph.pool_size", "a pool of size 1 keeps one copy of every byte; use 3 "
                                                     "outside the lab (size 1 also needs requireSafeReplicaSize: false)"))
    return out
