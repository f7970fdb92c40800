"""The VM phase: facts and readiness of every host (01), then the baseline Kubernetes needs (02).

- ``settings.py``: the ``vm`` section (thresholds, NTP servers, the deploy user);
- ``facts.py``: what is read from each host, in one SSH round trip;
- ``checks.py``: readiness rules per distribution (RKE1, RKE2), each saying why it exists;
- ``operations.py``: the baseline, one function per ensured state.
"""

from ..phase import Phase
from .settings import VM

PHASE = Phase(
    name="vm",
    title="VM preflight and baseline",
    runbooks=("01-vm-preflight", "02-vm-baseline"),
    section="vm",
    model=VM,
    required=True,
    after=("overview",),
)
