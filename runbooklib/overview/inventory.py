"""The inventory as a person reads it: a table of hosts and a roles-per-host figure."""

from __future__ import annotations

from ..params import Params
from ..schema import DATA_ROLES, ROLES


def inventory_rows(params: Params) -> list[dict]:
    return [{"host": h.name, "address": str(h.address), "ssh": f"{h.user}@:{h.ssh_port}",
             "roles": h.roles, "location": f"{h.location.country}/{h.location.site}" if h.location.site else h.location.country,
             "labels": h.labels}
            for h in params.hosts]


def role_counts(params: Params) -> dict[str, int]:
    return {role: len(params.hosts_with(role)) for role in ROLES}


def topology_figure(params: Params):
    """A host x role matrix: a filled cell where a host has a role; data-holding roles in red."""
    import matplotlib.pyplot as plt

    hosts = params.hosts
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(ROLES), 0.8 + 0.32 * len(hosts)))
    for y, h in enumerate(hosts):
        for x, role in enumerate(ROLES):
            if role in h.roles:
                ax.scatter(x, y, s=160, marker="s", color="#c5221f" if role in DATA_ROLES else "#1a73e8")
    ax.set_xticks(range(len(ROLES)), ROLES)
    ax.set_yticks(range(len(hosts)), [f"{h.name} ({h.location.country})" for h in hosts])
    ax.set_xlim(-0.6, len(ROLES) - 0.4)
    ax.set_ylim(len(hosts) - 0.5, -0.5)
    ax.grid(True, color="#eeeeee")
    ax.set_axisbelow(True)
    kind = params.environment.kind
    title = f"{params.environment.name} ({kind}): roles per host"
    if kind == "lab":
        title += "  [lab simulation]"
    ax.set_title(title)
    ax.set_xlabel("red: can hold personal data (must stay in " + params.environment.data_country + ")")
    fig.tight_layout()
    return fig
