"""DNS round-robin: the zone records the site's DNS should hold, and checks that the names resolve to every edge node.

The records are rendered as a BIND zone snippet (the common currency between teams: any DNS
server or provider imports it), one A record per edge node for every public name, with the TTL of
the parameters. The TTL is how long a client may keep using an address after its edge node died:
roughly half the new connections of a client holding both addresses go to the dead one until then,
unless the client tries the next address.

Resolution is checked from the runbook host against the resolvers the parameters name (a plain DNS
query over UDP, no library) and from the VMs themselves with ``getent ahostsv4`` (what their
applications see through their resolv.conf).
"""

from __future__ import annotations

import random
import shlex
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, without the final dot
    ttl: int
    address: str
    host: str  # the edge node it points at

    def zone_line(self) -> str:
        return f"{self.name + '.':<40} {self.ttl:>6} IN A {self.address}  ; {self.host}"


def records(p, without: tuple[str, ...] = ()) -> list[Record]:
    """One A record per edge node (except ``without``) for every name the edge answers for."""
    e = p.edge
    ttl = e.dns.ttl_seconds if e.dns else 300
    nodes = [p.host(n) for n in e.hosts if n not in without]
    return [Record(name, ttl, str(h.address), h.name) for name in e.names() for h in nodes]


def zone_snippet(p, without: tuple[str, ...] = ()) -> str:
    """The records as a BIND zone snippet, to hand to the site's DNS (or to paste into its zone file)."""
    e = p.edge
    zone = e.dns.zone if e.dns else "(set edge.dns.zone)"
    head = [f"; edge round-robin for {p.environment.name}, written by runbooklib (09-edge-load-balancing)",
            f"; zone {zone}: one A record per edge node; TTL = how long a dead node's address may still be used"]
    if without:
        head.append(f"; without {', '.join(without)} (taken out of the round-robin)")
    return "\n".join(head + [r.zone_line() for r in records(p, without)]) + "\n"


def parse_zone_snippet(text: str) -> list[tuple[str, int, str]]:
    """(name, ttl, address) of the A records in a zone snippet like :func:`zone_snippet`'s."""
    out = []
    for line in text.splitlines():
        fields = line.split(";", 1)[0].split()
        if len(fields) == 5 and fields[2:4] == ["IN", "A"]:
            out.append((fields[0].rstrip("."), int(fields[1]), fields[4]))
    return out


# -- asking a resolver -------------------------------------------------------------------------

class DnsError(Exception):
    pass


RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def query_a(resolver: str, name: str, timeout: float = 2.0, port: int = 53) -> tuple[list[str], int | None]:
    """The A records a resolver answers for ``name`` and their TTL (one UDP query, no recursion asked of us)."""
    qid = random.randrange(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (resolver, port))
            data, _ = s.recvfrom(4096)
        except OSError as e:
            raise DnsError(f"{resolver}: no answer for {name} ({e})") from None
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        raise DnsError(f"{resolver}: answer to another question")
    if flags & 0xF:
        raise DnsError(f"{resolver}: {RCODES.get(flags & 0xF, flags & 0xF)} for {name}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses, ttl = [], None
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, rclass, rttl, length = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rclass == 1 and length == 4:
            addresses.append(socket.inet_ntoa(data[pos:pos + 4]))
            ttl = rttl if ttl is None else min(ttl, rttl)
        pos += length
    return addresses, ttl


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def resolver_rows(p, timeout: float = 2.0) -> list[dict]:
    """Each name asked of each resolver in ``edge.dns.resolvers``: the addresses and TTL it answers, against the edge nodes."""
    want = {r.address for r in records(p)}
    rows = []
    for resolver in (p.edge.dns.resolvers if p.edge.dns else []):
        for name in p.edge.names():
            try:
                got, ttl = query_a(str(resolver), name, timeout)
                missing = sorted(want - set(got))
                extra = sorted(set(got) - want)
                verdict = "ok" if not missing and not extra else "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else []) + ([f"not an edge node: {', '.join(extra)}"] if extra else []))
            except DnsError as e:
                got, ttl, verdict = [], None, str(e)
            rows.append({"from": f"runbook host via {resolver}", "name": name, "addresses": ", ".join(sorted(got)),
                         "ttl": "" if ttl is None else ttl, "result": verdict})
    return rows


def vm_rows(p, fleet, hosts: list) -> list[dict]:
    """Each name resolved on each of ``hosts`` with ``getent ahostsv4`` (the VMs' own resolver configuration)."""
    want = {r.address for r in records(p)}
    names = p.edge.names()
    script = "; ".join(f"echo @@{n}; getent ahostsv4 {shlex.quote(n)} | awk '$2 == \"STREAM\" {{print $1}}'" for n in names)
    rows = []
    for host, r in fleet.run(script, hosts=hosts, desc="resolve on the VMs").items():
        if r.exit_code is None:
            rows += [{"from": host, "name": n, "addresses": "", "ttl": "", "result": f"unreachable: {r.error}"} for n in names]
            continue
        got: dict[str, list[str]] = {}
        current = None
        for line in r.stdout.splitlines():
            if line.startswith("@@"):
                current = line[2:]
                got[current] = []
            elif current and line.strip():
                got[current].append(line.strip())
        for n in names:
            seen = set(got.get(n, []))
            missing = sorted(want - seen)
            rows.append({"from": host, "name": n, "addresses": ", ".join(sorted(seen)), "ttl": "",
                         "result": "ok" if seen == want else (f"missing {', '.join(missing)}" if missing else
                                                              f"not an edge node: {', '.join(sorted(seen - want))}")})
    return rows
