"""The ``storage`` section: GlusterFS for CDN content, Rook/Ceph for block volumes."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from ..errors import Problem
from ..schema import Name, Section, need_host
from .ceph_settings import Ceph, ceph_rules


class Gluster(Section):
    volume: Name = "cdn"
    bricks: Annotated[list[Name], Field(min_length=1)]
    brick_path: str = "/bricks/cdn"
    mount_path: str = "/cdn-data"


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
    if s.ceph is not None:
        out += ceph_rules(p)
    return out
