"""The registry phase: image pull access to Google's registry from outside Google Cloud (runbook 04).

- ``settings.py``: the ``registry`` section (server, key reference, namespaces, ServiceAccounts, mode);
- ``pullsecret.py``: the dockerconfigjson, RKE2's registries.yaml and whether a pod can pull;
- ``access.py``: the cluster's and the nodes' state, the plan, the apply and the verification.
"""

from ..phase import Phase, SuiteEntry
from .settings import Registry, rules

PHASE = Phase(name="registry", title="Registry access", runbooks=("04-registry-access",), section="registry", model=Registry,
              rules=rules, after=("kubernetes",), suite=(SuiteEntry("04-registry-access", needs=("03-kubernetes-cluster",)),))
