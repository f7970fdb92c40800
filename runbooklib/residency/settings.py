"""The ``residency`` section: where the places outside the inventory are, for the data-residency report.

Inventory hosts already say where they are (``inventory.hosts[].location``). What the report also
needs is the location of everything else personal data can reach: the run archive (on the machine
that runs ``runbook``, or wherever its folder is kept), and every endpoint hosts talk to that is not an
inventory host (a log cluster, a backup store, a registry, the site's DNS and NTP servers). The machine
that runs ``runbook`` holds the run archive and local copies (an initial dump, etcd snapshot copies).

```yaml
residency:
  runbook_host: {country: RU, site: ops workstation}    # where runbook runs and keeps its archive
  endpoints:
    - {name: site-dns, addresses: [10.77.0.1], country: RU, what: DNS and NTP}
    - {name: google-registry, addresses: [europe-docker.pkg.dev, gcr.io], country: EU, what: container images}
```

A place with no declaration is not guessed: the report fails it as "no declared location".
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Location, Name, Section

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a DNS name; write one, like 10.0.0.5 or logs.example.org")
    return value


EndpointAddress = Annotated[str, AfterValidator(_address)]


class Endpoint(Section):
    """A place outside the inventory, by its addresses and names, and where it is."""

    name: Name
    addresses: Annotated[list[EndpointAddress], Field(min_length=1)]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code (EU for an EU multi-region)")]
    site: str = ""
    what: str = ""  # what it is (DNS, log cluster, backup store), shown in the report


class Residency(Section):
    # the machine that runs `runbook`: it keeps the run archive (parameters, outputs) and local copies
    runbook_host: Optional[Location] = None
    endpoints: list[Endpoint] = []


def rules(p) -> list[Problem]:
    r = p.residency
    if r is None:
        return []
    out: list[Problem] = []
    inventory = {str(h.address): h.name for h in p.hosts} | {h.name: h.name for h in p.hosts}
    seen: dict[str, str] = {}
    for i, e in enumerate(r.endpoints):
        if e.name in seen.values():
            out.append(Problem(f"residency.endpoints[{i}].name", f"endpoint {e.name} is declared twice; declare it once with all its addresses"))
        for j, a in enumerate(e.addresses):
            at = f"residency.endpoints[{i}].addresses[{j}]"
            if a in inventory:
                out.append(Problem(at, f"{a} is inventory host {inventory[a]}, whose location inventory.hosts declares; "
                                       "remove it here"))
            elif a in seen and seen[a] != e.name:
                out.append(Problem(at, f"{a} is also declared for endpoint {seen[a]}; an address has one location"))
            seen.setdefault(a, e.name)
    return out
