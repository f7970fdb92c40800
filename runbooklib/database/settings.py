"""The ``database`` section: the CloudSQL replacement, a primary with a real-time and a delayed replica."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from ..errors import Problem
from ..schema import Name, Port, SecretField, Section, need_host


class Database(Section):
    flavour: Literal["mariadb", "mysql-8.0", "mysql-8.4"] = "mariadb"
    primary: Name
    replica: Optional[Name] = None
    delayed_replica: Optional[Name] = None
    delay_seconds: Annotated[int, Field(ge=0, le=2**31 - 1)] = 2_592_000
    binlog_retention_seconds: Annotated[int, Field(ge=0)] = 2_678_400
    port: Port = 3306
    root_password: SecretField
    replication_password: SecretField


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
    if db.delayed_replica and db.binlog_retention_seconds < db.delay_seconds:
        out.append(Problem("database.binlog_retention_seconds",
                           f"{db.binlog_retention_seconds} s is shorter than database.delay_seconds {db.delay_seconds}; "
                           "the primary must keep binlogs at least as long as the delay"))
    return out
