"""The logging phase: Fluentd to Elasticsearch or OpenSearch, with retention."""

from ..phase import Phase
from .settings import Logging, rules

PHASE = Phase(name="logging", title="Logging and retention", section="logging", model=Logging, rules=rules,
              after=("kubernetes",))
