"""The ``database`` section: the CloudSQL replacement, a primary with a real-time and a delayed replica.

Besides the topology and the server settings it holds what the two incident runbooks need for one
run (``recovery``, ``switchover``: set them for the incident, remove them afterwards) and the
initial load (``initial_load``: a dump as exported from CloudSQL, loaded once).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Name, Port, SecretField, Section, need_host

# a recovery started near the end of the delay needs the binlogs that are about to expire: keep a day more
RETENTION_MARGIN_SECONDS = 86_400
FLAVOURS = ("mariadb", "mysql-5.7", "mysql-8.0", "mysql-8.4")


def _table(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}", value):
        raise ValueError(f"{value!r} is not a table; write schema.table, like shop.orders")
    return value


def _condition(value: str) -> str:
    # an engineer's WHERE clause, run read-only on the recovered replica and the primary: one expression
    if ";" in value or "--" in value or "/*" in value or not value.strip():
        raise ValueError(f"{value!r}: write one SQL condition without ';' or comments, like \"id BETWEEN 1 AND 100\"")
    return value


def _gtid(value: str) -> str:
    mysql = r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(:[A-Za-z_][A-Za-z0-9_]*)?:\d+"
    if not re.fullmatch(rf"\d+-\d+-\d+|{mysql}", value):
        raise ValueError(f"{value!r} is not a GTID; write MariaDB's domain-server-sequence (0-1-23) or MySQL's uuid:N")
    return value


Table = Annotated[str, AfterValidator(_table)]
# a folder on a database host, written into shell commands: absolute, no spaces or shell characters
HostPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")]


class RowCheck(Section):
    """Rows the engineer expects after a recovery: the count of ``table`` rows matching ``where``."""

    table: Table
    where: Optional[Annotated[str, AfterValidator(_condition)]] = None
    rows: Optional[Annotated[int, Field(ge=0)]] = None  # the count expected; unset: at least one row


class Recovery(Section):
    """An incident: rewind a replicated mistake with the delayed replica. Set it for that run only.

    Name the bad transaction by its GTID, or let the runbook find it in the primary's binlog: the
    first transaction between ``since`` and ``until`` (UTC) whose statements or row events mention
    ``find`` (a table name, a statement's words).
    """

    gtid: Optional[Annotated[str, AfterValidator(_gtid)]] = None
    find: Optional[str] = None
    since: Optional[dt.datetime] = None
    until: Optional[dt.datetime] = None
    verify: list[RowCheck] = []
    # export: dump the rescued tables on the delayed replica (they stay on that host, in the data
    # country); promote: the recovered replica becomes the primary (the others are re-pointed by hand)
    outcome: Literal["export", "promote"] = "export"
    export_tables: list[Table] = []
    export_dir: HostPath = "/var/backups/runbooklib"
    # how long the applier may take to reach the stop point once the delay is dropped
    catch_up_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = 600


class Switchover(Section):
    """A planned switchover to the real-time replica (or, with ``failover``, a failover from a lost primary). Set it for that run only."""

    candidate: Optional[Name] = None  # default: database.replica
    catch_up_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    # the primary is lost (its VM down, its server not answering): promote the candidate without it, and
    # fence the old primary when it is back (a run with the same parameters). Refused while the primary answers.
    failover: bool = False


class InitialLoad(Section):
    """A dump to load into the new primary once (as exported from CloudSQL, or by mysqldump)."""

    dump: str  # a local file, relative to the parameter file (.sql or .sql.gz)
    database: Optional[Name] = None  # the database to load into when the dump names none (no --databases)
    # optional: per table "schema.table<TAB>rows<TAB>checksum", made on the source with the runbook's
    # checksum query (runbooklib.database.load.checksum_generator); compared with the primary and replicas
    source_checksums: Optional[str] = None
    catch_up_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = 120


class Database(Section):
    flavour: Literal["mariadb", "mysql-5.7", "mysql-8.0", "mysql-8.4"] = "mariadb"
    primary: Name
    replica: Optional[Name] = None
    delayed_replica: Optional[Name] = None
    delay_seconds: Annotated[int, Field(ge=0, le=2**31 - 1)] = 2_592_000
    binlog_retention_seconds: Annotated[int, Field(ge=0)] = 2_678_400
    port: Port = 3306
    datadir: HostPath = "/var/lib/mysql"
    replication_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")] = "repl"
    root_password: SecretField
    replication_password: SecretField
    # the real-time replica's heartbeat lag above which the status report names it
    lag_alarm_seconds: Annotated[float, Field(gt=0)] = 30.0
    initial_load: Optional[InitialLoad] = None
    recovery: Optional[Recovery] = None
    switchover: Optional[Switchover] = None

    def roles(self) -> dict[str, str]:
        """host name -> its database role (primary, replica, delayed replica), in that order."""
        out = {self.primary: "primary"}
        if self.replica:
            out[self.replica] = "replica"
        if self.delayed_replica:
            out[self.delayed_replica] = "delayed replica"
        return out


def rules(p) -> list[Problem]:
    db = p.database
    if db is None:
        return []
    out: list[Problem] = []
    seen: dict[str, str] = {}
    for path, name in (("database.primary", db.primary), ("database.replica", db.replica),
                       ("database.delayed_replica", db.delayed_replica)):
        if name is None:
            continue
        out += need_host(p, path, name, "database")
        if name in seen:
            out.append(Problem(path, f"{name} is also {seen[name]}; each database role needs its own host"))
        seen.setdefault(name, path)
    if db.delayed_replica and db.delay_seconds == 0:
        out.append(Problem("database.delay_seconds", "a delayed replica needs a delay above 0 (the seed used 2592000, 30 days)"))
    if db.delayed_replica and db.binlog_retention_seconds < db.delay_seconds + RETENTION_MARGIN_SECONDS:
        out.append(Problem("database.binlog_retention_seconds",
                           f"{db.binlog_retention_seconds} s is shorter than database.delay_seconds {db.delay_seconds} plus a "
                           f"day ({RETENTION_MARGIN_SECONDS} s); the primary must keep binlogs at least as long as the delay, "
                           "and a recovery started near its end needs a margin: set at least "
                           f"{db.delay_seconds + RETENTION_MARGIN_SECONDS}"))
    if db.switchover and db.switchover.candidate:
        out += need_host(p, "database.switchover.candidate", db.switchover.candidate, "database")
        if db.switchover.candidate == db.primary:
            out.append(Problem("database.switchover.candidate", f"{db.primary} is already the primary; name a replica"))
        elif db.switchover.candidate == db.delayed_replica:
            out.append(Problem("database.switchover.candidate",
                               f"{db.delayed_replica} is the delayed replica: it is up to database.delay_seconds behind, and a "
                               "switchover to it would lose or wait for every transaction since; name the real-time replica"))
    if db.switchover and not (db.switchover.candidate or db.replica):
        out.append(Problem("database.switchover", "no candidate: set database.replica (the real-time replica) or switchover.candidate"))
    if db.recovery:
        r = db.recovery
        if not db.delayed_replica:
            out.append(Problem("database.recovery", "a point-in-time recovery replays the delayed replica; set database.delayed_replica"))
        if not (r.gtid or r.find or r.since):
            out.append(Problem("database.recovery", "name the bad transaction: gtid, or find (text to look for in the binlog) "
                                                   "with since/until (UTC)"))
        if r.since and r.until and r.until <= r.since:
            out.append(Problem("database.recovery.until", f"{r.until} is not after recovery.since {r.since}"))
        if r.outcome == "export" and not r.export_tables:
            out.append(Problem("database.recovery.export_tables", "outcome export needs the tables to export (schema.table)"))
        if r.gtid and (re.fullmatch(r"\d+-\d+-\d+", r.gtid) is None) != (db.flavour != "mariadb"):
            form = "domain-server-sequence (0-1-23)" if db.flavour == "mariadb" else "uuid:N"
            out.append(Problem("database.recovery.gtid", f"{r.gtid!r} is not a {db.flavour} GTID; write {form}"))
    return out
