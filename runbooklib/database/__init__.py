"""The database phase: MySQL or MariaDB with a real-time and a delayed replica (CloudSQL's replacement)."""

from ..phase import Phase
from .settings import Database, rules

PHASE = Phase(name="database", title="Database with a delayed replica", section="database", model=Database,
              rules=rules, after=("vm",))
