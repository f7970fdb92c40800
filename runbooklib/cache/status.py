"""What the cache hosts say about replication, and the session read-back check (VM variant)."""

from __future__ import annotations

import json
import secrets as _random
import shlex
import time
from typing import Any

from .facts import parse_info, replicas_of


def report(p, gathered, primary: str | None = None) -> list[dict[str, Any]]:
    """One row per cache host from ``INFO replication``: role, link, offsets and the replica's lag behind the primary in bytes."""
    primary = primary or p.cache.vms.primary
    facts = gathered.facts
    primary_offset = None
    pinfo = (facts.get(primary) or {}).get("replication", {}).get("info", {})
    if pinfo.get("master_repl_offset", "").isdigit():
        primary_offset = int(pinfo["master_repl_offset"])
    rows = []
    for name in p.cache.roles():
        want = "primary" if name == primary else "replica"
        if name in gathered.errors:
            rows.append({"host": name, "should be": want, "role": "-", "link": "-", "offset": "-", "lag (bytes)": "-",
                         "replicas": "-", "status": f"unreachable: {gathered.errors[name][:120]}"})
            continue
        f = facts[name]
        rep = f["replication"]
        if not rep["answering"]:
            rows.append({"host": name, "should be": want, "role": "-", "link": "-", "offset": "-", "lag (bytes)": "-",
                         "replicas": "-", "status": f"not answering: {rep['error'][:120] or f['service']['active']}"})
            continue
        info = rep["info"]
        role = "primary" if info.get("role") == "master" else "replica"
        offset = info.get("slave_repl_offset") if role == "replica" else info.get("master_repl_offset")
        lag = "-"
        if role == "replica" and primary_offset is not None and (offset or "").isdigit():
            lag = max(primary_offset - int(offset), 0)
        link = (f"{info.get('master_link_status', '?')} to {info.get('master_host')}:{info.get('master_port')}"
                if role == "replica" else "-")
        replicas = ", ".join(f"{r.get('ip')}:{r.get('port')} {r.get('state')}" for r in replicas_of(info)) or "-"
        problem = ""
        if role != want:
            problem = f"is a {role}, should be the {want}"
        elif role == "replica" and info.get("master_link_status") != "up":
            problem = f"link {info.get('master_link_status')} to the primary"
        rows.append({"host": name, "should be": want, "role": role, "link": link, "offset": offset or "-", "lag (bytes)": lag,
                     "replicas": replicas, "status": problem or "ok"})
    return rows


def problems(rows: list[dict]) -> list[str]:
    return [f"{r['host']} {r['status']}" for r in rows if r["status"] != "ok"]


def colour(rows: list[dict], column: str = "status", good: str = "ok"):
    """The ``status`` of :meth:`runbooklib.notebook.Run.table`: the ``column`` cell green when it says ``good``, red otherwise."""
    return lambda i, col: ("ok" if rows[i][column] == good else "bad") if col == column else ""


def session_check(p, client, primary: str | None = None, replica: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Write a session as an application would (``SET key value EX ttl`` on the primary), read it back on the replica.

    Returns the key, whether the replica returned the same value, how long it took, and the TTL the
    replica reports (a session must expire there too). The key is deleted on the primary afterwards.
    """
    primary = client.host(primary or p.cache.vms.primary)
    replica = client.host(replica or p.cache.vms.replica)
    key = f"session:runbooklib-check-{_random.token_hex(6)}"
    value = json.dumps({"user_id": 0, "check": "08-session-cache", "at": int(time.time())}, separators=(",", ":"))
    ttl = p.cache.session_ttl_seconds
    out: dict[str, Any] = {"key": key, "written on": primary.name, "read on": replica.name, "ttl": ttl}
    w = client.cli(primary, "SET", key, value, "EX", str(ttl))
    if not w.ok or w.stdout.strip() != "OK":
        return {**out, "result": f"write failed on {primary.name}: {(w.error or w.stdout).strip()[:200]}"}
    started, got = time.monotonic(), None
    script = f"rcli GET {shlex.quote(key)}; echo --ttl--; rcli TTL {shlex.quote(key)}"
    while time.monotonic() - started < timeout:
        r = client.shell(replica, script)
        body, _, ttl_text = r.stdout.partition("--ttl--")
        got = body.rstrip("\n")
        if r.ok and got == value:
            out.update({"seconds": round(time.monotonic() - started, 3), "ttl on replica": ttl_text.strip(), "result": "ok"})
            break
        time.sleep(0.1)
    else:
        out["result"] = f"{replica.name} did not return the session within {timeout:g} s (it returned {got!r:.80})"
    client.cli(primary, "DEL", key)
    return out


def info(client, host_name: str) -> dict[str, str]:
    """``INFO replication`` of one host, parsed (empty when it does not answer)."""
    r = client.cli(client.host(host_name), "INFO", "replication")
    return parse_info(r.stdout) if r.ok else {}


def settled(p, client, gather, primary: str | None = None, timeout: float = 30.0):
    """Facts gathered again until every replica's link is up (a replica's first sync takes a moment), or ``timeout``: ``(gathered, rows)``."""
    deadline = time.monotonic() + timeout
    while True:
        gathered = gather(p, client)
        rows = report(p, gathered, primary)
        if not problems(rows) or time.monotonic() > deadline or gathered.errors:
            return gathered, rows
        time.sleep(0.5)


def endpoint_check(p, client, from_host: str, primary: str | None = None, read_on: str | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
    """A session written through ``cache.client_endpoint`` as an application on ``from_host`` would, read back on ``read_on``.

    The endpoint's name is resolved on ``from_host`` (its resolver: DNS, /etc/hosts). ``result`` is
    ``ok``; or ``not checked: …`` when the name does not resolve there (nothing to judge from that
    host); or names the host the endpoint reaches when that is not the primary (clients would write
    to a replica, which refuses writes, or to a lost host), which is a problem.
    """
    primary_host = client.host(primary or p.cache.vms.primary)
    name, port = p.cache.client_endpoint.rsplit(":", 1)
    source = client.host(from_host)
    out: dict[str, Any] = {"endpoint": p.cache.client_endpoint, "resolved on": source.name}
    r = client.shell(source, f"getent ahostsv4 {shlex.quote(name)} | awk 'NR==1 {{print $1}}'")
    address = r.stdout.strip() if r.ok else ""
    out["address"] = address or "-"
    if not address:
        return {**out, "result": f"not checked: {name} does not resolve on {source.name} (set its DNS record or the apps' setting)"}
    if address != str(primary_host.address) or port != str(p.cache.vms.port):
        others = {str(h.address): h.name for h in client.fleet.hosts}
        return {**out, "result": f"{p.cache.client_endpoint} reaches {others.get(address, address)}:{port}, not the primary "
                                 f"{primary_host.name} ({primary_host.address}:{p.cache.vms.port}): re-point the clients"}
    key = f"session:runbooklib-endpoint-{_random.token_hex(6)}"
    value = json.dumps({"user_id": 0, "check": "client endpoint", "at": int(time.time())}, separators=(",", ":"))
    via = (f'REDISCLI_AUTH="$(cat "$FILE_auth")" redis-cli --no-auth-warning -h {shlex.quote(name)} -p {int(port)} '
           f"SET {shlex.quote(key)} {shlex.quote(value)} EX {p.cache.session_ttl_seconds}")
    w = client.shell(source, via)
    if not w.ok or w.stdout.strip() != "OK":
        return {**out, "result": f"write through {p.cache.client_endpoint} failed: {(w.error or w.stdout).strip()[:200]}"}
    reader = client.host(read_on or primary_host.name)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        got = client.cli(reader, "GET", key).stdout.rstrip("\n")
        if got == value:
            client.cli(primary_host, "DEL", key)
            return {**out, "read on": reader.name, "result": "ok"}
        time.sleep(0.1)
    client.cli(primary_host, "DEL", key)
    return {**out, "read on": reader.name, "result": f"{reader.name} did not return the session written through the endpoint"}


def endpoint_problem(row: dict[str, Any]) -> list[str]:
    """The endpoint check's problem, if any (a name that does not resolve where checked is a note, not a problem)."""
    return [] if row["result"] == "ok" or row["result"].startswith("not checked") else [row["result"]]
