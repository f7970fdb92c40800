"""The data-residency phase (152-FZ): where personal data is and where it goes, each with its declared location.

- ``settings.py``: the ``residency`` section (the archive's location, endpoints outside the inventory);
- ``assess.py``: every store and flow, from the parameters and the live facts, judged pass or fail;
- ``facts.py``: what is read from the hosts (resolvers, replication sources, the CDN volume's bricks).

Runbook ``14-data-residency`` reads and judges; it never changes anything.
"""

from ..phase import Phase, SuiteEntry
from .settings import Residency, rules

PHASE = Phase(name="residency", title="Data residency (152-FZ)", runbooks=("14-data-residency",), section="residency",
              model=Residency, required=True, rules=rules,
              after=("database", "storage", "cache", "logging", "edge", "foldin"),
              suite=(SuiteEntry("14-data-residency", apply=False),))
