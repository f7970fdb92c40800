"""Every place that can hold personal data, and every flow out of those places, judged against the data country.

:func:`assess` takes the parameters and the live facts (:mod:`runbooklib.residency.facts`) and returns
one :class:`Item` per store and flow, each with its declared location and the evidence for it. A
store, or a flow that carries personal data, passes only when its location is declared and in
``environment.data_country``. A flow that carries none (image pulls, DNS queries) is listed with its
location too, and fails only when that location is not declared.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Optional
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Place:
    """Where something is: an inventory host or a declared endpoint (or nothing known)."""

    name: str  # the host's or endpoint's name, or the address as written when unknown
    country: Optional[str]  # None: no declared location
    declared_by: str  # the parameter path that declares it, or why nothing does


@dataclass(frozen=True)
class Item:
    kind: str  # store, flow
    what: str  # database primary, log shipping, ...
    where: str  # host, endpoint or address (a flow: source -> destination)
    country: Optional[str]
    personal_data: bool
    status: str  # pass, fail
    evidence: str

    def row(self) -> dict:
        return asdict(self)


def locate(params, target: str) -> Place:
    """``target`` (a host name, an address or a DNS name) as an inventory host or a declared endpoint."""
    text = str(target).strip().lower().rstrip(".")
    try:
        text = str(ipaddress.ip_address(text))
    except ValueError:
        pass
    for i, h in enumerate(params.hosts):
        if text in (h.name, str(h.address)):
            return Place(h.name, h.location.country, f"inventory.hosts[{i}].location")
    r = params.residency
    for i, e in enumerate(r.endpoints if r is not None else []):
        if text == e.name or text in e.addresses:
            return Place(e.name, e.country, f"residency.endpoints[{i}]")
    return Place(target, None, "neither an inventory host nor a residency.endpoints entry")


def logging_targets(params) -> list[tuple[str, str]]:
    """Where logs are shipped and indexed: ``(what, host or address)`` pairs from the ``logging`` section.

    The one place that reads ``params.logging`` (its shape is the logging phase's).
    """
    lg = params.logging
    if lg is None:
        return []
    engine = "OpenSearch" if lg.engine == "opensearch" else "Elasticsearch"
    targets = [(f"log indices ({engine})", urlsplit(lg.endpoint).hostname)]
    if lg.api_endpoint and urlsplit(lg.api_endpoint).hostname != targets[0][1]:
        targets.append((f"log indices ({engine}, the runbook's way in)", urlsplit(lg.api_endpoint).hostname))
    return targets


def _judge(kind: str, what: str, where: str, place: Place, data_country: str, personal: bool, evidence: str) -> Item:
    if place.country is None:
        status, why = "fail", f"no declared location ({place.declared_by})"
    elif place.country != data_country and personal:
        status, why = "fail", f"in {place.country}, outside {data_country} ({place.declared_by})"
    elif place.country != data_country:
        status, why = "pass", f"in {place.country}: carries no personal data ({place.declared_by})"
    else:
        status, why = "pass", f"in {place.country} ({place.declared_by})"
    return Item(kind, what, where, place.country, personal, status, "; ".join(x for x in (why, evidence) if x))


def assess(params, live: dict | None = None) -> list[Item]:
    """The stores and flows of ``params``, with ``live`` facts as evidence (see :func:`runbooklib.residency.facts.gather`).

    ``live``: ``{"hosts": {host: {"nameservers": [...]}}, "unreachable": {host: why},
    "database": {host: {"source_host": ...}}, "gluster": {"bricks": [...]} }``, each part optional.
    """
    live = live or {}
    country = params.environment.data_country
    hosts_live = live.get("hosts") or {}
    unreachable = live.get("unreachable") or {}
    items: list[Item] = []

    def host_store(what: str, name: str, evidence: str = "") -> None:
        place = locate(params, name)
        if name in unreachable:
            items.append(Item("store", what, name, place.country, True, "fail",
                              f"cannot judge: {unreachable[name]} (the live facts are the evidence)"))
            return
        items.append(_judge("store", what, name, place, country, True, evidence))

    def runbook_store(what: str, evidence: str) -> None:
        here = params.residency.runbook_host if params.residency is not None else None
        if here is None:
            items.append(Item("store", what, "runbook host", None, True, "fail",
                              "no declared location: set residency.runbook_host.country (the machine that runs runbook)"))
        else:
            items.append(_judge("store", what, f"runbook host{' (' + here.site + ')' if here.site else ''}",
                                Place("runbook host", here.country, "residency.runbook_host"), country, True, evidence))

    def flow(what: str, source: str, target: str, personal: bool, evidence: str = "", pulls: bool = False) -> None:
        place = locate(params, target)
        where = f"{source} <- {place.name}" if pulls else f"{source} -> {place.name}"
        items.append(_judge("flow", what, where, place, country, personal, evidence))

    db = params.database
    dblive = live.get("database") or {}
    if db is not None:
        for name, role in db.roles().items():
            facts = dblive.get(name) or {}
            ev = "binlogs and dumps loaded by 05 live in its data directory " + db.datadir
            if facts.get("log_bin"):
                ev += f" (log_bin={facts['log_bin']})"
            host_store(f"database {role.replace('_', ' ')}", name, ev)
            if role != "primary":
                source = facts.get("source_host")
                if source:
                    flow("database replication source", name, source, True, f"live: {name} replicates from {source}", pulls=True)
                elif name not in unreachable and dblive:
                    flow("database replication source", name, db.primary, True,
                         f"from the parameters (live: {name} does not replicate yet)", pulls=True)
                else:
                    flow("database replication source", name, db.primary, True, "from the parameters", pulls=True)
        if db.initial_load is not None:
            runbook_store("database dump (initial load)", f"the dump {db.initial_load.dump}, on the machine that runs the runbook")

    cache = params.cache
    if cache is not None:
        if cache.vms is not None:
            host_store("session cache primary", cache.vms.primary, "sessions (RDB and AOF on disk)")
            host_store("session cache replica", cache.vms.replica, "a copy of the sessions")
            flow("session cache replication", cache.vms.replica, cache.vms.primary, True, "from the parameters", pulls=True)
        else:
            items.append(Item("store", "session cache (in the cluster)", "block storage", country, True, "pass",
                              "on the cluster's block StorageClass: its nodes are listed under block storage"))

    storage = params.storage
    if storage is not None and storage.ceph is not None:
        for n in storage.ceph.nodes:
            host_store("block storage node (Ceph OSD)", n.host, f"devices {', '.join(n.devices)} hold the volumes' data")
    if storage is not None and storage.gluster is not None:
        g = storage.gluster
        glive = live.get("gluster") or {}
        bricks = glive.get("bricks")
        for name in [*g.bricks, *([g.arbiter] if g.arbiter else [])]:
            host_store("CDN volume brick", name, f"{g.brick_path} of volume {g.volume}")
        for b in bricks or []:
            host = b.split(":")[0]
            if locate(params, host).name not in (*g.bricks, *([g.arbiter] if g.arbiter else [])):
                host_store("CDN volume brick (live, not in the parameters)", host, f"live: gluster volume info lists {b}")

    k = params.kubernetes
    if k is not None:
        for h in params.hosts_with("etcd"):
            host_store("etcd member and its local snapshots", h.name, "every Secret of the cluster")
        if k.etcd_backup is not None:
            from ..kubernetes.etcd_backup import target

            t = target(params)
            place = (locate(params, t.host) if t.host else
                     Place("runbook host", t.country, "kubernetes.etcd_backup.country"))
            items.append(_judge("flow", "etcd snapshot copies", f"etcd nodes -> {place.name}:{t.path}", place, country, True,
                                "snapshots hold every Secret"))
        else:
            items.append(Item("flow", "etcd snapshot copies", "etcd nodes -> ?", None, True, "fail",
                              "no declared location: kubernetes.etcd_backup is not set"))

    for what, target in logging_targets(params):
        host_store(what, target, "application logs hold personal data")
        flow("log shipping", "cluster nodes", target, True, what)

    runbook_store("run archive", "records hold parameters (redacted) and runbook outputs")

    reg = params.registry
    if reg is not None:
        from ..registry.pullsecret import GCR_HOSTS

        by_place: dict[str, list[str]] = {}
        for server in dict.fromkeys([reg.server, *GCR_HOSTS]):
            by_place.setdefault(locate(params, server).name, []).append(server)
        for servers in by_place.values():
            flow("registry pulls", "cluster nodes", servers[0], False,
                 f"{', '.join(servers)}: images come in, the pull credentials go out")

    resolvers: dict[str, list[str]] = {}
    for name, f in hosts_live.items():
        for ns in f.get("nameservers") or []:
            resolvers.setdefault(ns, []).append(name)
    if params.edge is not None:
        for ns in params.edge.dns.resolvers if params.edge.dns else []:
            resolvers.setdefault(str(ns), []).append("edge.dns.resolvers")
    for ns, who in resolvers.items():
        flow("DNS queries", ", ".join(who[:4]) + (f" and {len(who) - 4} more" if len(who) > 4 else ""), ns, False,
             "live: /etc/resolv.conf" if any(w in hosts_live for w in who) else "from the parameters")
    judged = {i.where for i in items if i.evidence.startswith("cannot judge")}
    for name, why in unreachable.items():  # a host whose resolvers could not be read is not judged: it fails, even with no store on it
        if name not in judged and any(h.name == name for h in params.hosts):
            items.append(Item("flow", "DNS queries", name, None, False, "fail", f"cannot judge: {why} (its /etc/resolv.conf is the evidence)"))
    return items


def verdict(items: list[Item]) -> tuple[str, list[str]]:
    """``compliant`` or ``not compliant``, with one problem per failed item."""
    problems = [f"{i.kind} {i.what} at {i.where}: {i.evidence}" for i in items if i.status == "fail"]
    return ("not compliant" if problems else "compliant"), problems


def summary(items: list[Item], data_country: str) -> dict:
    """The one-page summary: counts, and the places by country."""
    by_country: dict[str, int] = {}
    for i in items:
        by_country[i.country or "undeclared"] = by_country.get(i.country or "undeclared", 0) + 1
    return {"data_country": data_country, "stores": sum(i.kind == "store" for i in items),
            "flows": sum(i.kind == "flow" for i in items), "passed": sum(i.status == "pass" for i in items),
            "failed": sum(i.status == "fail" for i in items), "by_country": by_country}
