"""The logging phase: Fluentd in the cluster, OpenSearch or Elasticsearch with retention, and sizing.

- ``settings.py``: the ``logging`` section (the engine and its endpoints, credentials as a reference, the
  typed fields, retention, sizing inputs) and its rules;
- ``fluentd.py``: the DaemonSet, its account and roles, the ``conf.d`` drop-in that parses and types the
  applications' JSON (reading ``log`` or ``message`` by the nodes' runtime), and the lint;
- ``preview.py``: what Fluentd makes of sample lines (its JSON parser and ``types`` casts, as data);
- ``search.py``: the index template, the ISM or ILM policy, applied with the engine's official client,
  and the range-query proof that the types matter;
- ``sizing.py``: disk, heap and shards from the daily volume, retention and replicas.
"""

from ..phase import Phase, SuiteEntry
from .settings import Logging, rules

PHASE = Phase(name="logging", title="Logging and retention", runbooks=("12-logging", "13-log-retention"), section="logging",
              model=Logging, rules=rules, after=("kubernetes",),
              suite=(SuiteEntry("12-logging", when="logging", needs=("03-kubernetes-cluster",)),
                     SuiteEntry("13-log-retention", when="logging", needs=("12-logging",))))
