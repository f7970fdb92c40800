"""The storage phases: GlusterFS behind the edge (CDN), Rook/Ceph (block volumes).

- ``settings.py``: the ``storage`` section (``gluster``: the CDN volume; ``ceph``) and its rules;
- ``facts.py`` / ``operations.py``: the house shape for the CDN volume (facts in one round trip per host,
  operations per ensured state, applied in stages: hosts, volume, mounts);
- ``verify.py``: bricks online, heal info, a canary through every mount, the hostPath snippet;
- ``ceph_settings.py`` / ``rook.py``: block storage with Rook/Ceph (07): the replication policy, the
  objects and chart values, prerequisites over SSH and against the API, plan by ``kubectl diff``, verification.

The CDN volume needs only the VMs; block storage needs the cluster (hence ``after``).
"""

from ..phase import Phase, SuiteEntry
from .settings import Storage, rules

PHASE = Phase(name="storage", title="CDN and block storage", runbooks=("06-cdn-storage", "07-block-storage"), section="storage",
              model=Storage, rules=rules, after=("vm", "kubernetes"),
              suite=(SuiteEntry("06-cdn-storage", when="storage.gluster", needs=("02-vm-baseline",)),
                     SuiteEntry("07-block-storage", when="storage.ceph", needs=("03-kubernetes-cluster",))))
