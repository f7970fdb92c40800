"""The storage phases' settings: GlusterFS behind the edge (CDN) and Rook/Ceph (block volumes)."""

from ..phase import Phase
from .settings import Storage, rules

PHASE = Phase(name="storage", title="CDN and block storage", runbooks=("07-block-storage",), section="storage",
              model=Storage, rules=rules, after=("vm", "kubernetes"))
