"""The database phase: MySQL or MariaDB with a real-time and a delayed replica (CloudSQL's replacement).

- ``settings.py``: the ``database`` section (topology, delay, binlog retention, secrets, the initial
  load, and the incidents' inputs) and its rules;
- ``dialects/``: one module per flavour (MySQL 5.7, 8.0, 8.4, MariaDB) rendering the statements of
  each intention and reading replica status; ``gtid.py`` compares GTID sets and positions;
- ``client.py``: SQL over SSH as the administrator, passwords only in files of mode 600;
- ``facts.py`` / ``operations.py``: the house shape (facts in one round trip, operations per ensured state);
- ``status.py``: replication status and heartbeat lag, the lag figure;
- ``load.py``: the initial load from a dump, proved by row counts and checksums;
- ``recovery.py`` and ``switchover.py``: the two incident runbooks' steps.
"""

from ..phase import Phase, SuiteEntry
from .settings import Database, rules

PHASE = Phase(name="database", title="Database with a delayed replica",
              runbooks=("05-database", "incident/db-point-in-time-recovery", "incident/db-switchover"),
              section="database", model=Database, rules=rules, after=("vm",),
              suite=(SuiteEntry("05-database", needs=("02-vm-baseline",)),))
