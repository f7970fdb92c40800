"""The initial load: a dump exported from CloudSQL into the new primary, then proved on every server.

A dump from MySQL with GTIDs on (CloudSQL's exports, ``mysqldump`` by default) starts with
``SET @@SESSION.SQL_LOG_BIN = 0`` and ``SET @@GLOBAL.GTID_PURGED = '...'``: loaded as it is, the
rows would never reach a replica (nothing is binlogged), and MariaDB refuses ``GTID_PURGED``
outright. Those statements are left out of the copy that is loaded (each one named in the plan);
everything else is loaded unchanged, binlogged, so the replicas receive it like any write.

Proof is counted, not assumed: per table the row count and a content checksum (the CRC32 of each
row's columns with NULL markers, XORed over the rows: the same query works on MySQL and MariaDB
and does not depend on storage details as ``CHECKSUM TABLE`` does) on the primary and on every
replica once it has applied the load, and on the source when the export came with its checksums
(``source_checksums``, made with :func:`checksum_generator` on the source). A mismatch names the
table and the server.

The dump holds personal data: it travels over SFTP into the administrator's 700 folder on the
primary (in the data country, as the host is) and is removed after the load.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HostError, RunbookError
from ..phase.steps import Operation, Step, operation
from .client import secret_folder
from .dialects import sql_string

_LEAVE_OUT = re.compile(r"^\s*SET\s+@@(?:SESSION\.)?SQL_LOG_BIN\s*=|^\s*SET\s+@@GLOBAL\.GTID_PURGED\s*=", re.I)
_DATABASE = re.compile(r"^\s*(?:CREATE\s+DATABASE\s+(?:/\*!\d+\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:\*/\s*)?|USE\s+)`([^`]+)`", re.I)


@dataclass
class Dump:
    """What the runbook knows of a dump before loading it."""

    path: Path
    sha256: str
    size: int
    databases: list[str]
    left_out: list[str] = field(default_factory=list)  # "line N: SET @@SESSION.SQL_LOG_BIN= 0" ...
    names_databases: bool = True  # False: the dump has no CREATE DATABASE/USE, it goes into initial_load.database


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") if path.suffix == ".gz" else \
        open(path, encoding="utf-8", errors="surrogateescape")


def _statements_left_out(lines):
    """Yield (line number, line, left out?) for each line; a left-out statement ends at its ';'."""
    skipping = False
    for number, line in enumerate(lines, 1):
        if not skipping and _LEAVE_OUT.match(line):
            skipping = True
        yield number, line, skipping
        if skipping and line.rstrip().endswith(";"):
            skipping = False


def inspect(p) -> Dump:
    """Read the dump named by ``database.initial_load``: its hash, its databases, the statements left out."""
    load = p.database.initial_load
    path = (p.source_dir / load.dump).resolve() if not Path(load.dump).is_absolute() else Path(load.dump)
    if not path.is_file():
        raise RunbookError(f"database.initial_load.dump: {path} is not a file; name the dump exported from the source")
    digest, size, databases, left_out = hashlib.sha256(), 0, [], []
    with open(path, "rb") as raw:
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    with _open(path) as text:
        for number, line, skipped in _statements_left_out(text):
            if skipped:
                left_out.append(f"line {number}: {line.strip()[:80]}")
            m = _DATABASE.match(line)
            if m and m.group(1) not in databases:
                databases.append(m.group(1))
    if not databases and not load.database:
        raise RunbookError(f"database.initial_load: {path.name} names no database (exported without --databases); set "
                           "database.initial_load.database to the database to load it into")
    named = bool(databases)
    return Dump(path, digest.hexdigest(), size, databases or [load.database], left_out, named)


def write_loadable(dump: Dump, out: Path, database: str | None = None) -> Path:
    """The copy that is loaded: the dump without the statements that would keep it out of the binlog."""
    with _open(dump.path) as src, open(out, "w", encoding="utf-8", errors="surrogateescape") as dst:
        out.chmod(0o600)
        if database:
            dst.write(f"CREATE DATABASE IF NOT EXISTS `{database}`;\nUSE `{database}`;\n")
        for _, line, skipped in _statements_left_out(src):
            if not skipped:
                dst.write(line)
    return out


# -- the plan ------------------------------------------------------------------------------------

@operation("initial load", touches="the dump's databases on the primary (replicated); `runbooklib.loads` records it",
           undo="`DROP DATABASE` each of the dump's databases on the primary (replicated), delete its row in `runbooklib.loads`")
def initial_load(p, h, f, dump: Dump | None = None) -> list[Step]:
    if dump is None or h.name != p.database.primary:
        return []
    if f["loads"] is not None and dump.sha256 in f["loads"]:
        return []
    left = f"; {len(dump.left_out)} statement(s) left out so that it replicates" if dump.left_out else ""
    return [Step(h.name, "initial load", f"load {dump.path.name} ({dump.size / 1e6:.1f} MB, sha256 {dump.sha256[:12]}) into "
                                         f"{', '.join(dump.databases)}{left}",
                 "$SQL < <the dump> (copied into ~/.runbooklib-db, removed after)", None,
                 f"DROP DATABASE {', '.join(dump.databases)} on {h.name} (replicated)")]


OPERATIONS: tuple[Operation, ...] = (initial_load,)


def plan(p, facts: dict[str, dict], dump: Dump | None) -> list[Step]:
    f = facts.get(p.database.primary)
    if dump is None or f is None:
        return []
    return initial_load.ensure(p, p.host(p.database.primary), f, dump)


def apply(p, client, steps, dump: Dump, on_change=None) -> dict[str, Any]:
    """Copy the loadable dump to the primary, load it, record it; ``{"ok", "error", "position"}``."""
    if not steps:
        return {"ok": True, "error": "", "position": None}
    with tempfile.TemporaryDirectory(prefix="runbooklib-load-") as workdir:
        return _apply(p, client, steps[0], dump, Path(workdir), on_change)


def _apply(p, client, step: Step, dump: Dump, workdir: Path, on_change) -> dict[str, Any]:
    host = client.host(p.database.primary)
    local = write_loadable(dump, workdir / f"{dump.sha256[:12]}.sql", None if dump.names_databases else dump.databases[0])
    remote = None
    try:
        with client.fleet.sftp(host, "cannot copy the dump") as sftp:
            folder = secret_folder(sftp)  # a dump holds the application's data: the same private folder
            remote = f"{folder}/load-{dump.sha256[:12]}.sql"
            sftp.put(str(local), remote)
            sftp.chmod(remote, 0o600)
    except HostError as e:  # names the host
        return {"ok": False, "error": str(e), "position": None}
    except OSError as e:
        return {"ok": False, "error": f"{host.name}: cannot copy the dump: {e}", "position": None}
    finally:
        local.unlink(missing_ok=True)
    record = (f"CREATE TABLE IF NOT EXISTS runbooklib.loads (dump_sha256 CHAR(64) NOT NULL PRIMARY KEY, file VARCHAR(255) NOT NULL, "
              f"loaded_at DATETIME NOT NULL); INSERT INTO runbooklib.loads VALUES ({sql_string(dump.sha256)}, "
              f"{sql_string(dump.path.name)}, UTC_TIMESTAMP())")
    script = (f"trap 'rm -f {shlex.quote(remote)}' EXIT; $SQL < {shlex.quote(remote)} && "
              f"$SQL -e {shlex.quote(record)} && $SQL -N -e {shlex.quote(client.dialect.position_query())}")
    r = client.shell(host, script, timeout=max(600.0, client.fleet.ssh.command_timeout))
    if not r.ok:
        return {"ok": False, "error": f"{host.name}: the load failed: {r.error}", "position": None}
    if on_change:
        on_change(step)
    return {"ok": True, "error": "", "position": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""}


# -- checksums -----------------------------------------------------------------------------------

def checksum_generator(databases: list[str]) -> str:
    """SQL that writes, for every base table of ``databases``, the query of its row count and content checksum.

    Run it on any server and run its output there too: ``mysql -N < gen.sql | mysql -N`` prints
    ``schema.table<TAB>rows<TAB>checksum`` per table. The same on the source gives ``source_checksums``.
    """
    names = ", ".join(sql_string(d) for d in databases)
    col = "CONCAT('`', REPLACE(c.COLUMN_NAME, '`', '``'), '`')"
    return (
        "SET SESSION group_concat_max_len = 1048576;\n"
        "SELECT CONCAT('SELECT ', QUOTE(CONCAT(c.TABLE_SCHEMA, '.', c.TABLE_NAME)), ', COUNT(*), "
        "COALESCE(BIT_XOR(CAST(CRC32(CONCAT_WS(''#'', ', "
        f"GROUP_CONCAT({col} ORDER BY c.ORDINAL_POSITION SEPARATOR ', '), ', CONCAT(', "
        f"GROUP_CONCAT(CONCAT('ISNULL(', {col}, ')') ORDER BY c.ORDINAL_POSITION SEPARATOR ', '), "
        "'))) AS UNSIGNED)), 0) FROM `', REPLACE(c.TABLE_SCHEMA, '`', '``'), '`.`', REPLACE(c.TABLE_NAME, '`', '``'), '`;') "
        "FROM information_schema.COLUMNS c JOIN information_schema.TABLES t "
        "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
        f"WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA IN ({names}) "
        "GROUP BY c.TABLE_SCHEMA, c.TABLE_NAME ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME;\n")


def parse_checksums(text: str) -> dict[str, tuple[int, str]]:
    """``schema.table<TAB>rows<TAB>checksum`` lines -> {table: (rows, checksum)}."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            out[parts[0]] = (int(parts[1]), parts[2])
    return out


def checksums(client, host, databases: list[str]) -> dict[str, tuple[int, str]]:
    r = client.shell(host, '$SQL -N < "$FILE_generator" | $SQL -N', {"generator.sql": checksum_generator(databases)},
                     timeout=max(600.0, client.fleet.ssh.command_timeout))
    return parse_checksums(r.check().stdout)


def source_checksums(p) -> dict[str, tuple[int, str]] | None:
    load = p.database.initial_load
    if not load or not load.source_checksums:
        return None
    path = (p.source_dir / load.source_checksums).resolve()
    if not path.is_file():
        raise RunbookError(f"database.initial_load.source_checksums: {path} is not a file")
    return parse_checksums(path.read_text())


def wait_applied(p, client, position: str, timeout: float) -> dict[str, str]:
    """Wait until each replica applied ``position`` (the primary's after the load); what each one did.

    A replica whose delay is longer than ``timeout`` is not waited for: it applies the load one delay
    later, and is reported as pending with when.
    """
    d = client.dialect
    out: dict[str, str] = {}

    def one(host) -> str:
        r = p.database.roles()[host.name]
        if r == "delayed replica" and p.database.delay_seconds > timeout:
            due = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + p.database.delay_seconds))
            return f"pending: applies the load about {due} (its delay)"
        wait = int(timeout + (p.database.delay_seconds if r == "delayed replica" else 0))
        try:
            rows = client.query(host, d.wait_for_position(position, wait), timeout=wait + 30)
        except HostError as e:
            return f"failed: {e}"
        return "applied" if rows and rows[0].get("waited") == "0" else f"not applied within {wait} s"

    replicas = [p.host(n) for n, r in p.database.roles().items() if r != "primary"]
    out.update(client.each(one, replicas, desc="wait for the replicas"))
    return out


def compare(p, by_host: dict[str, dict[str, tuple[int, str]]], source: dict[str, tuple[int, str]] | None,
            applied: dict[str, str]) -> tuple[list[dict], list[str]]:
    """One row per table: rows and checksum on the source (when known), the primary and each replica; problems naming table and host."""
    primary = p.database.primary
    tables = sorted(set(by_host.get(primary, {})) | set(source or {}))
    rows, problems = [], []
    for table in tables:
        reference = (source or {}).get(table) or by_host.get(primary, {}).get(table)
        row: dict[str, Any] = {"table": table}
        if source is not None:
            row["source"] = _cell(source.get(table))
        bad = []
        for host, sums in by_host.items():
            row[host] = _cell(sums.get(table))
            if sums.get(table) != reference:
                bad.append(host)
        for host, state in applied.items():
            if host not in by_host:
                row[host] = state
        row["match"] = "ok" if not bad else "MISMATCH: " + ", ".join(bad)
        if bad:
            against = "the source" if source is not None else f"the primary {primary}"
            problems.append(f"{table}: rows or checksum on {', '.join(bad)} differ from {against} "
                            f"({_cell(reference)} there; " + "; ".join(f"{h}: {_cell(by_host[h].get(table))}" for h in bad) + ")")
        rows.append(row)
    return rows, problems


def _cell(value: tuple[int, str] | None) -> str:
    return "missing" if value is None else f"{value[0]} rows, {value[1]}"
