"""The VM phase: facts and readiness of every host (01), then the baseline Kubernetes needs (02).

- ``settings.py``: the ``vm`` section (thresholds, NTP servers, the deploy user);
- ``facts.py``: what is read from each host, in one SSH round trip;
- ``checks.py``: readiness rules per distribution (RKE1, RKE2), each saying why it exists;
- ``operations.py``: the baseline, one function per ensured state.
"""

from ..phase import Phase, SuiteEntry
from .settings import VM

PHASE = Phase(
    name="vm",
    title="VM preflight and baseline",
    runbooks=("01-vm-preflight", "02-vm-baseline"),
    section="vm",
    model=VM,
    required=True,
    after=("overview",),
    # the preflight twice around the baseline: first a report of what the baseline must fix, then the gate
    suite=(SuiteEntry("01-vm-preflight", apply=False, allow_not_ready=True), SuiteEntry("02-vm-baseline"),
           SuiteEntry("01-vm-preflight", label="01-vm-preflight-after-baseline", apply=False, needs=("02-vm-baseline",))),
)
