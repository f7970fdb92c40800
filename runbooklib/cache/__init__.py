"""The session cache phase: Redis on VMs (a primary and a replica) or in the cluster (Helm values).

- ``settings.py``: the ``cache`` section (the variant, the password reference, the client endpoint,
  the VMs or the chart's settings, the failover drill's inputs) and its rules;
- ``client.py``: ``redis-cli`` over SSH on the cache hosts, the password only in a file of mode 600
  read into ``REDISCLI_AUTH`` for that one command;
- ``facts.py`` / ``operations.py``: the house shape for the VM variant (facts in one round trip,
  operations per ensured state, the configuration checked by ``redis-server`` before a restart);
- ``status.py``: ``INFO replication`` parsed, the session read-back check;
- ``failover.py``: the incident runbook's steps (promote the replica, re-point the old primary);
- ``helm.py``: the in-cluster variant's chart values and Secret.
"""

from ..phase import Phase, SuiteEntry
from .settings import Cache, rules

PHASE = Phase(name="cache", title="Session cache (Redis)", runbooks=("08-session-cache", "incident/redis-failover"),
              section="cache", model=Cache, rules=rules, after=("vm",),
              suite=(SuiteEntry("08-session-cache", needs=("02-vm-baseline",)),))
