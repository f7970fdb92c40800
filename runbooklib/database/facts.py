"""The database phase's facts: what each database host runs and how its server is set up, in one round trip.

Every fact is a shell command (SQL goes through ``$SQL``, the administrator's client that
:class:`~runbooklib.database.client.DatabaseClient` logs in with an option file of mode 600) and a
pure parser of its output, tested on recorded outputs (``tests/data/database/facts/``). A server
that does not answer is a fact too (``sql.answering`` false, with the client's words), never a guess:
operations then plan their idempotent statements as if nothing were done.
"""

from __future__ import annotations

import base64
from typing import Optional, TypedDict

from ..phase.facts import Fact, FactSet, Gathered
from ..phase.facts import sections as _sections
from .client import parse_batch
from .dialects import Dialect, ReplicaStatus

# a point-in-time recovery in progress on this host: 05-database leaves its replication alone
RECOVERY_MARKER = "/etc/mysql/runbooklib-recovery-in-progress"
# while a recovery lasts, the frozen replica does not start its threads at boot (a restart would undo the freeze, and
# after the rewind, with no delay, apply the bad transaction); read by MySQL's and MariaDB's Debian configuration alike
RECOVERY_DROPIN = "/etc/mysql/conf.d/zz-runbooklib-recovery.cnf"
# a failover promoted this server: which primary it replaced, and the position it had then (the old primary's
# own transactions past it, when it comes back, are what the site lost)
FAILOVER_MARKER = "/etc/mysql/runbooklib-promoted-by-failover"


class Server(TypedDict):
    installed: bool
    version: str


class Service(TypedDict):
    active: str  # active, inactive, failed, activating, unknown
    enabled: str  # enabled, disabled, unknown


class Sql(TypedDict):
    """What the server says when asked, or why it did not answer."""

    answering: bool
    error: str
    variables: dict[str, str]


class Heartbeat(TypedDict):
    event: Optional[str]  # ENABLED, DISABLED, SLAVESIDE_DISABLED / REPLICA_SIDE_DISABLED; None: no event
    lag_seconds: Optional[float]  # seconds since the newest heartbeat row here; None: no row (or no table)
    newest: str


class HostFacts(TypedDict):
    server: Server
    service: Service
    datadir_initialised: bool
    config: Optional[str]  # the drop-in's content; None: absent
    sql: Sql
    replica: Optional[ReplicaStatus]
    root_password_set: Optional[bool]  # None: unknown (the server did not answer)
    replication_users: Optional[dict[str, bool]]  # account host -> holds REPLICATION SLAVE; None: unknown
    heartbeat: Heartbeat
    loads: Optional[list[str]]  # sha256 of the dumps loaded by the runbook; None: unknown
    recovery_marker: Optional[str]  # the marker's content when a recovery is in progress
    recovery_dropin: Optional[str]  # the recovery's drop-in (no replica threads at boot); None: absent
    failover_marker: Optional[str]  # the marker's content when a failover promoted this server


# -- parsers -----------------------------------------------------------------------------------

def parse_server(text: str) -> Server:
    s = _sections(text)
    version = " ".join(line.strip() for line in s.get("", []) if line.strip())
    return {"installed": bool(version), "version": version}


def parse_service(text: str) -> Service:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"active": lines[0] if lines else "unknown", "enabled": lines[1] if len(lines) > 1 else "unknown"}


def parse_flag(text: str) -> bool:
    return "yes" in text.split()


def parse_file(text: str) -> Optional[str]:
    """``present <base64>`` or ``absent``."""
    parts = text.split()
    if not parts or parts[0] == "absent":
        return None
    return base64.b64decode(parts[1]).decode(errors="replace") if len(parts) > 1 else ""


def _answer(text: str) -> tuple[bool, str, list[dict[str, str]]]:
    """The client's output for one query: (answered, its error text, rows)."""
    s = _sections(text)
    rc = next((line.split(":", 1)[1].strip() for line in s.get("rc", []) if line.startswith("rc:")), "0")
    body = "\n".join(s.get("", []))
    if rc != "0":
        return False, " ".join(body.split())[-300:] or f"the client exited {rc}", []
    return True, "", parse_batch(body)


def parse_sql(text: str) -> Sql:
    ok, error, rows = _answer(text)
    return {"answering": ok, "error": error,
            "variables": {r.get("Variable_name", ""): r.get("Value", "") for r in rows}}


def parse_status_row(text: str) -> Optional[dict[str, str]]:
    """The raw status row (the dialect reads it); None when not a replica or the server did not answer."""
    ok, _, rows = _answer(text)
    return rows[0] if ok and rows else None


def parse_single(text: str) -> Optional[str]:
    ok, _, rows = _answer(text)
    if not ok:
        return None
    return next(iter(rows[0].values()), None) if rows else ""


def parse_users(text: str) -> Optional[dict[str, bool]]:
    ok, _, rows = _answer(text)
    return {r["host"]: r.get("replication") == "Y" for r in rows} if ok else None


def parse_heartbeat(text: str) -> Heartbeat:
    s = _sections(text)
    ok_event, _, event_rows = _answer("\n".join(s.get("", []) + ["--rc--"] + s.get("rc", [])))
    ok_lag, _, lag_rows = _answer("\n".join(s.get("lag", []) + ["--rc--"] + s.get("lagrc", [])))
    lag = lag_rows[0].get("lag_seconds") if ok_lag and lag_rows else None
    return {"event": event_rows[0]["status"] if ok_event and event_rows else None,
            "lag_seconds": float(lag) if lag not in (None, "", "NULL") else None,
            "newest": (lag_rows[0].get("newest") or "") if ok_lag and lag_rows else ""}


def parse_loads(text: str) -> Optional[list[str]]:
    ok, error, rows = _answer(text)
    if not ok:
        return [] if "doesn't exist" in error or "Unknown database" in error else None
    return [r["dump_sha256"] for r in rows]


def parse_marker(text: str) -> Optional[str]:
    return parse_file(text)


# -- the fact table, for one dialect -----------------------------------------------------------

def _q(sql: str) -> str:
    """A query through the client, its exit code after a marker (an error is an answer too)."""
    escaped = sql.replace("'", "'\\''")
    return f"$SQL -e '{escaped}' 2>&1; rc=$?; echo --rc--; echo rc:$rc"


def _file(path: str) -> str:
    return f"if [ -f {path} ]; then echo present $(base64 -w0 < {path}); else echo absent; fi"


def facts(d: Dialect, datadir: str, replication_user: str) -> tuple[Fact, ...]:
    """The facts of one flavour's database hosts."""
    variables = ", ".join(f"'{v}'" for v in d.variables())
    return (
        Fact("server", "the server binary and its version", f"command -v {d.server} >/dev/null && {d.server} --version",
             parse_server, {"installed": False, "version": ""}),
        Fact("service", "the service: active, enabled", f"systemctl is-active {d.service}; systemctl is-enabled {d.service}",
             parse_service, {"active": "unknown", "enabled": "unknown"}),
        Fact("datadir_initialised", "system tables in the data directory", f"test -d {datadir}/mysql && echo yes",
             parse_flag, False),
        Fact("config", "the replication drop-in", _file(d.config_file), parse_file, None),
        Fact("sql", "global variables (or why the server does not answer)",
             _q(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({variables})"), parse_sql,
             {"answering": False, "error": "not read", "variables": {}}),
        Fact("replica", "replica status", _q(d.status_statement), parse_status_row, None),
        Fact("root_password_set", "root has a password (the hash stays on the server)", _q(d.root_password_query()),
             parse_single, None),
        Fact("replication_users", "replication accounts", _q(d.replication_user_query(replication_user)), parse_users, None),
        Fact("heartbeat", "the heartbeat event and the newest heartbeat row",
             _q(d.heartbeat_event_query()) + "; echo --lag--; " + _q(d.heartbeat_query()).replace("--rc--", "--lagrc--"),
             parse_heartbeat, {"event": None, "lag_seconds": None, "newest": ""}),
        Fact("loads", "dumps the runbook loaded (their sha256)", _q("SELECT dump_sha256 FROM runbooklib.loads"),
             parse_loads, None),
        Fact("recovery_marker", "a point-in-time recovery in progress", _file(RECOVERY_MARKER), parse_marker, None),
        Fact("recovery_dropin", "the recovery's drop-in (replica threads not started at boot)", _file(RECOVERY_DROPIN), parse_marker, None),
        Fact("failover_marker", "a failover promoted this server", _file(FAILOVER_MARKER), parse_marker, None),
    )


def fact_set(params, d: Dialect) -> FactSet:
    return FactSet(facts(d, params.database.datadir, params.database.replication_user))


def database_hosts(params) -> list:
    """The hosts of the database section, in role order (primary, replica, delayed replica)."""
    roles = params.database.roles()
    return [params.host(name) for name in roles]


def gather(params, client, hosts: list | None = None) -> Gathered:
    """Facts of every database host, in parallel, one round trip each: ``(facts, errors, fact_errors)``.

    The status parsing is the dialect's: ``facts[host]["replica"]`` is a :class:`ReplicaStatus` or None.
    """
    d = client.dialect
    got = fact_set(params, d).gather(client.transport(), hosts if hosts is not None else database_hosts(params),
                                     desc="database facts")
    for f in got.facts.values():
        f["replica"] = d.parse_replica_status(f["replica"])
        flag = f["root_password_set"]
        f["root_password_set"] = None if flag is None else flag == "1"
    return got
