"""The Kubernetes phase: the cluster definition rendered from the parameter file (``rke1.py``)."""

from ..phase import Phase
from .settings import Kubernetes, rules

PHASE = Phase(name="kubernetes", title="Kubernetes cluster", section="kubernetes", model=Kubernetes, rules=rules,
              after=("vm",))
