"""What the residency report reads from the hosts (nothing is changed).

- every host: the resolvers in ``/etc/resolv.conf`` (where its DNS queries go);
- the database hosts (with ``database``): each replica's live replication source, through the
  database phase's own facts (:func:`runbooklib.database.facts.gather`);
- the first brick host (with ``storage.gluster``): the volume's bricks as ``gluster volume info`` lists them.
"""

from __future__ import annotations

from ..phase.facts import Fact, FactSet


def parse_nameservers(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver") and len(line.split()) > 1]


def parse_bricks(text: str) -> list[str]:
    """``Brick1: edge1:/bricks/cdn`` lines of ``gluster volume info`` (an arbiter's ``(arbiter)`` dropped)."""
    out = []
    for line in text.splitlines():
        head, _, rest = line.strip().partition(": ")
        if head.startswith("Brick") and head[5:].isdigit() and rest:
            out.append(rest.split()[0])
    return out


HOST_FACTS = (Fact("nameservers", "resolvers of /etc/resolv.conf", "cat /etc/resolv.conf 2>/dev/null || true", parse_nameservers, []),)


def gluster_facts(volume: str) -> tuple[Fact, ...]:
    return (Fact("bricks", f"bricks of volume {volume}", f"gluster volume info {volume} 2>&1 || true", parse_bricks, []),)


def gather(run) -> dict:
    """The live part of :func:`runbooklib.residency.assess.assess`'s input, from ``run``'s connections."""
    params = run.params
    fleet = run.fleet()
    got = FactSet(HOST_FACTS).gather(fleet, params.hosts, desc="residency facts")
    live: dict = {"hosts": got.facts, "unreachable": dict(got.errors)}
    if params.database is not None:
        from ..database import facts as dbfacts
        from ..database.client import DatabaseClient
        from ..database.dialects import dialect

        client = DatabaseClient.for_run(run, dialect(params.database.flavour))
        db = dbfacts.gather(params, client)
        live["database"] = {h: {"source_host": (f.get("replica") or {}).get("source_host") or "",
                                "log_bin": (f.get("sql") or {}).get("variables", {}).get("log_bin", "")}
                            for h, f in db.facts.items()}
        live["unreachable"].update(db.errors)
    g = params.storage.gluster if params.storage is not None else None
    if g is not None:
        first = params.host(g.bricks[0])
        gl = FactSet(gluster_facts(g.volume)).gather(fleet, [first], desc="gluster bricks")
        live["gluster"] = {"bricks": (gl.facts.get(first.name) or {}).get("bricks", [])}
        live["unreachable"].update(gl.errors)
    return live
