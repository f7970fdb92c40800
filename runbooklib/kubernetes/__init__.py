"""The Kubernetes phase: the cluster defined once, rendered per distribution, linted before anything runs.

``spec.py`` builds a distribution-neutral :class:`~.spec.ClusterSpec` from the parameter file;
``rke1.py`` renders RKE1's cluster.yml and ``rke2.py`` RKE2's per-node configs (with the install
order), each with a reader that gives the spec back; ``lint.py`` lists everything wrong with a
parameter file's cluster or a hand-written cluster.yml. ``settings.py`` is the ``kubernetes`` section.
"""

from ..phase import Phase, SuiteEntry
from .settings import Kubernetes, rules

PHASE = Phase(name="kubernetes", title="Kubernetes cluster", section="kubernetes", model=Kubernetes, rules=rules,
              runbooks=("03-kubernetes-cluster", "10-capacity-fold-in", "11-upgrade", "incident/etcd-snapshot-restore"), after=("vm",),
              suite=(SuiteEntry("03-kubernetes-cluster", needs=("01-vm-preflight-after-baseline",)),))
