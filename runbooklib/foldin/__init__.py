"""The capacity fold-in, as a phase of the suite: the old ELK VMs become workers once logging has moved.

Its runbooks belong to other phases (the baseline to ``vm``, the fold-in and the etcd snapshot to
``kubernetes``); this phase only says when they run in the migration (after logging and the edge) and
in which order: the joining hosts baselined, the cluster's Nodes brought in line with the parameters,
then an etcd snapshot of the new shape to come back to. Run against a parameter file that does not
fold anything in, each finds nothing to do, and the snapshot is still taken.
"""

from ..phase import Phase, SuiteEntry

PHASE = Phase(name="foldin", title="Capacity fold-in (ELK VMs become workers)", after=("logging", "edge"),
              suite=(SuiteEntry("02-vm-baseline", label="02-vm-baseline-fold-in", needs=("02-vm-baseline",)),
                     SuiteEntry("10-capacity-fold-in", needs=("03-kubernetes-cluster",)),
                     SuiteEntry("incident/etcd-snapshot-restore", label="etcd-snapshot", when="kubernetes.etcd_backup",
                                needs=("03-kubernetes-cluster",))))
