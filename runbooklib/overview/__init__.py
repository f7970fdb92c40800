"""The overview phase: the parameters as a person reads them, and the tools this machine has.

- ``inventory.py``: the host table and the roles-per-host figure;
- ``localtools.py``: the command-line tools later phases need on the operator's machine.
"""

from ..phase import Phase, SuiteEntry

PHASE = Phase(name="overview", title="Environment overview", runbooks=("00-environment-overview",),
              suite=(SuiteEntry("00-environment-overview", apply=False),))
