"""The edge phase: NGINX edge nodes serving the CDN and passing traffic to the cluster, behind DNS round-robin.

- ``settings.py``: the ``edge`` section (names, ports, the ingress, health of upstreams, DNS, the load,
  the failure drill's inputs) and its rules;
- ``render.py``: the nginx configuration in Debian's layout (the CDN and the port-80 proxy in
  ``conf.d``, the TLS passthrough by SNI in a top-level ``stream {}`` file);
- ``facts.py`` / ``operations.py``: the house shape; the configuration is checked by ``nginx -t`` on
  the node before anything runs it, the reload is checked and rolled back when the edge does not answer;
- ``dns.py``: the round-robin records as a BIND zone snippet, resolution checked from the runbook host
  and from the VMs;
- ``probe.py`` and ``load.py``: traffic through each edge node, and a bounded load with percentiles.
"""

from ..phase import Phase, SuiteEntry
from .settings import Edge, rules

PHASE = Phase(name="edge", title="Edge nodes and load balancing", runbooks=("09-edge-load-balancing", "incident/edge-node-failure"),
              section="edge", model=Edge, rules=rules, after=("storage",),
              suite=(SuiteEntry("09-edge-load-balancing", needs=("06-cdn-storage",)),))
