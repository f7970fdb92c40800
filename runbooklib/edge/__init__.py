"""The edge phase: NGINX edge nodes serving the CDN and passing traffic to the cluster."""

from ..phase import Phase
from .settings import Edge, rules

PHASE = Phase(name="edge", title="Edge nodes and load balancing", section="edge", model=Edge, rules=rules,
              after=("storage",))
