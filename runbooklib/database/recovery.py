"""Point-in-time recovery with the delayed replica: freeze it, find the bad transaction, replay up to just before it.

The delayed replica holds the primary's transactions in its relay logs but applies each one only
``database.delay_seconds`` after the primary committed it. A mistake replicated to the primary and
the real-time replica is therefore, for that long, not yet on the delayed replica. The recovery:

1. **freeze**: stop the delayed replica's applier at once (the receiver keeps fetching), and leave a
   marker on the host so that ``05-database`` does not start it again behind the engineer's back;
2. **find** the bad transaction in the primary's binlog with ``mysqlbinlog``/``mariadb-binlog``:
   by its GTID, or the first transaction in a time window whose statements or row events mention
   the text the engineer gives (a table, a statement); the heartbeat's own transactions are skipped;
3. **rewind**: drop the delay and start the applier with an ``UNTIL`` that stops just before it
   (MySQL: ``SQL_BEFORE_GTIDS``; MariaDB: ``master_gtid_pos`` of the transaction before, inclusive);
4. **verify** the rows the engineer names, on the recovered replica and on the primary;
5. **export** the rescued tables on the delayed replica, or **promote** it.

Every step is planned, shown, confirmed and recorded like any other; nothing here runs on the primary
but reads (its binlogs, its position).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import HostError, RunbookError
from ..phase.steps import Operation, Step, operation, write_file
from .dialects import HEARTBEAT_SCHEMA, StopPoint
from .facts import RECOVERY_DROPIN, RECOVERY_MARKER
from .operations import ShellStep, sql_step

_AT = re.compile(r"^# at (\d+)\s*$")
_HEADER = re.compile(r"^#(\d{6})\s+(\d{1,2}:\d{2}:\d{2})\s+server id\s+(\d+)\s+end_log_pos\s+(\d+)")
_MARIADB_GTID = re.compile(r"\bGTID (\d+-\d+-\d+)(?: cid=\d+)?(?: (trans|ddl|standalone))?")
_MYSQL_GTID = re.compile(r"SET @@SESSION\.GTID_NEXT=\s*'([^']+)'")
_TABLE = re.compile(r"Table_map: `([^`]+)`\.`([^`]+)`|(?:INSERT INTO|UPDATE|DELETE FROM) `([^`]+)`\.`([^`]+)`", re.I)


@dataclass
class Transaction:
    """One transaction of the primary's binlog, as ``mysqlbinlog`` decodes it."""

    gtid: str
    log_file: str
    log_pos: int  # where the transaction starts (its GTID event)
    at: dt.datetime | None  # when the primary committed it (UTC)
    server_id: int
    tables: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)  # statements and decoded row events

    def summary(self, width: int = 160) -> str:
        lines = [line.removeprefix("#Q> ").strip() for line in self.text
                 if line.startswith(("#Q>", "### INSERT", "### UPDATE", "### DELETE"))
                 or (line.strip() and not line.startswith(("#", "/*", "SET ", "BEGIN", "COMMIT", "START TRANSACTION", "DELIMITER")))]
        return " | ".join(dict.fromkeys(lines))[:width] or "(no statement text)"

    def mentions(self, needle: str) -> bool:
        norm = needle.replace("`", "").lower()
        return any(norm in line.replace("`", "").lower() for line in self.text)

    @property
    def heartbeat_only(self) -> bool:
        return bool(self.tables) and all(t.startswith(HEARTBEAT_SCHEMA + ".") for t in self.tables)

    def row(self) -> dict[str, Any]:
        return {"gtid": self.gtid, "binlog": f"{self.log_file}:{self.log_pos}",
                "committed (UTC)": self.at.isoformat(sep=" ") if self.at else "-", "tables": ", ".join(sorted(self.tables)) or "-",
                "what": self.summary()}


def parse_binlog(text: str, log_file: str) -> list[Transaction]:
    """The transactions of one binlog file's decoded text (``--base64-output=decode-rows -vv``, TZ=UTC)."""
    out: list[Transaction] = []
    current: Transaction | None = None
    last_at = 0
    for line in text.splitlines():
        m = _AT.match(line)
        if m:
            last_at = int(m.group(1))
            continue
        header = _HEADER.match(line)
        if header:
            gtid = _MARIADB_GTID.search(line)
            if gtid:
                current = Transaction(gtid.group(1), log_file, last_at, _when(header), int(header.group(3)))
                out.append(current)
                continue
            if re.search(r"\sGTID\s+last_committed=", line) or re.search(r"\sGTID\s*$", line) or "\tGTID\t" in line:
                # MySQL: the GTID event's header; the id follows in SET @@SESSION.GTID_NEXT
                current = Transaction("", log_file, last_at, _when(header), int(header.group(3)))
                out.append(current)
                continue
        mysql = _MYSQL_GTID.search(line)
        if mysql and current is not None and not current.gtid:
            if mysql.group(1).upper() in ("AUTOMATIC", "ANONYMOUS"):
                out.pop()
                current = None
            else:
                current.gtid = mysql.group(1)
            continue
        if current is None:
            continue
        t = _TABLE.search(line)
        if t:
            schema, table = (t.group(1), t.group(2)) if t.group(1) else (t.group(3), t.group(4))
            current.tables.add(f"{schema}.{table}")
        if line.startswith(("#Q>", "###")) or not line.startswith("#"):
            current.text.append(line)
    return [t for t in out if t.gtid]


def _when(header: re.Match) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(f"{header.group(1)} {header.group(2)}", "%y%m%d %H:%M:%S")
    except ValueError:
        return None


def choose(transactions: list[Transaction], rec) -> tuple[Transaction | None, list[Transaction]]:
    """The bad transaction the parameters name, and every candidate that matched (shown to the engineer)."""
    if rec.gtid:
        hits = [t for t in transactions if t.gtid == rec.gtid]
        return (hits[0] if hits else None), hits
    since = rec.since.replace(tzinfo=None) if rec.since and rec.since.tzinfo is None else \
        (rec.since.astimezone(dt.timezone.utc).replace(tzinfo=None) if rec.since else None)
    until = rec.until.replace(tzinfo=None) if rec.until and rec.until.tzinfo is None else \
        (rec.until.astimezone(dt.timezone.utc).replace(tzinfo=None) if rec.until else None)
    hits = []
    for t in transactions:
        if t.heartbeat_only:
            continue
        if since and t.at and t.at < since.replace(microsecond=0):
            continue
        if until and t.at and t.at > until:
            continue
        if rec.find and not t.mentions(rec.find):
            continue
        hits.append(t)
    return (hits[0] if hits else None), hits


# -- reading the primary -------------------------------------------------------------------------

def binlog_script(d, rec) -> str:
    """On the primary: decode its binlogs (the window with a minute's margin before), in UTC, file by file."""
    window = ""
    if rec.since and not rec.gtid:
        start = (rec.since.astimezone(dt.timezone.utc).replace(tzinfo=None) if rec.since.tzinfo else rec.since) - dt.timedelta(minutes=1)
        window += f" --start-datetime={shlex.quote(start.strftime('%Y-%m-%d %H:%M:%S'))}"
    if rec.until and not rec.gtid:
        stop = (rec.until.astimezone(dt.timezone.utc).replace(tzinfo=None) if rec.until.tzinfo else rec.until) + dt.timedelta(seconds=1)
        window += f" --stop-datetime={shlex.quote(stop.strftime('%Y-%m-%d %H:%M:%S'))}"
    return ("base=$($SQL -N -e 'SELECT @@log_bin_basename'); dir=$(dirname \"$base\"); "
            "for f in $($SQL -N -e 'SHOW BINARY LOGS' | cut -f1); do echo \"@@BINLOG $f\"; "
            f"TZ=UTC {d.binlog_tool} --base64-output=decode-rows -vv{window} \"$dir/$f\"; done")


def read_binlogs(p, client, host_name: str | None = None, window=None) -> list[Transaction]:
    """Every transaction of a server's binlogs (the primary's by default) in the recovery's window (or all, for a GTID)."""
    host = client.host(host_name or p.database.primary)
    r = client.shell(host, binlog_script(client.dialect, window or p.database.recovery), timeout=max(600.0, client.fleet.ssh.command_timeout))
    if not r.ok:
        raise HostError(host.name, f"cannot read the binlogs with {client.dialect.binlog_tool}: {r.error}")
    out, name, chunk = [], None, []
    for line in r.stdout.splitlines():
        if line.startswith("@@BINLOG "):
            if name:
                out += parse_binlog("\n".join(chunk), name)
            name, chunk = line.split(None, 1)[1].strip(), []
        else:
            chunk.append(line)
    if name:
        out += parse_binlog("\n".join(chunk), name)
    return out


def stop_point(p, client, bad: Transaction) -> StopPoint:
    """Where the applier stops: before ``bad``. MariaDB asks the primary for the position just before its offset."""
    d = client.dialect
    query = d.position_before_query(bad.log_file, bad.log_pos)
    last_good = None
    if query:
        rows = client.query(client.host(p.database.primary), query)
        last_good = rows[0]["position"] if rows else None
        if not last_good or last_good == "NULL":
            raise RunbookError(f"{p.database.primary}: no GTID position before {bad.log_file}:{bad.log_pos}; is the binlog still there?")
    return StopPoint(before=bad.gtid, last_good=last_good, log_file=bad.log_file, log_pos=bad.log_pos)


def already_applied(d, variables: dict[str, str], status, bad: Transaction) -> bool:
    """Whether the delayed replica applied the bad transaction already (then there is nothing to rewind)."""
    return d.reached(str(d.applied_position(variables, status)), bad.gtid)


# -- the plans -------------------------------------------------------------------------------------

def recovery_dropin(d) -> str:
    return ("# runbooklib: point-in-time recovery in progress: the replica threads are not started at boot (a restart would\n"
            "# undo the freeze, or apply the bad transaction). 05-database removes this file once the recovery marker is gone.\n"
            f"[mysqld]\n{d.skip_replica_start}\n")


def marker_text(run_id: str, what: str) -> str:
    return (f"# runbooklib: point-in-time recovery in progress (run {run_id}): {what}\n"
            "# 05-database leaves this replica alone while this file exists. Remove it when the recovery is over.\n")


@operation("freeze", touches=f"the delayed replica's applier (stopped; not started at boot: `{RECOVERY_DROPIN}`), the marker `{RECOVERY_MARKER}`",
           undo=f"`START SLAVE SQL_THREAD` (MySQL 8: `START REPLICA SQL_THREAD`), remove the marker and `{RECOVERY_DROPIN}`")
def freeze(p, h, f, run_id: str = "") -> list[Step]:
    d = _d(p)
    st = f["replica"]
    steps = []
    if st is None:
        return [Step(h.name, "freeze", "stop the delayed replica's applier", None,
                     blocked=f"{h.name} is not replicating (no replica status): there is nothing to freeze or rewind")]
    if f.get("recovery_dropin") is None:  # first: a restart from here on keeps the replica still (the freeze holds)
        steps.append(Step(h.name, "freeze", f"{RECOVERY_DROPIN}: {d.skip_replica_start} (a restart keeps the applier stopped)",
                          write_file(RECOVERY_DROPIN, recovery_dropin(d)), f"rm -f {RECOVERY_DROPIN}"))
    if st["sql_running"] == "Yes":
        steps.append(sql_step(h, "freeze", "stop applying (the receiver keeps fetching from the primary)", [d.stop_applier()],
                              d.start_applier()))
    if f["recovery_marker"] is None:
        steps.append(Step(h.name, "freeze", f"mark {h.name}: a recovery is in progress (05-database leaves it alone)",
                          write_file(RECOVERY_MARKER, marker_text(run_id, "applier stopped")), f"rm -f {RECOVERY_MARKER}"))
    return steps


@operation("rewind", touches="the delayed replica: delay dropped to 0, applier run until just before the bad transaction",
           undo="stop the applier; the delay is restored by 05-database once the marker is removed")
def rewind(p, h, f, stop: StopPoint | None = None, bad: Transaction | None = None) -> list[Step]:
    d = _d(p)
    st = f["replica"]
    if stop is None or bad is None or st is None:
        return []
    until = d.apply_until(stop)
    where = f"just before {bad.gtid} ({bad.log_file}:{bad.log_pos})"
    if st["sql_running"] != "Yes" and st["sql_delay"] == 0 and _at_stop(d, f, stop):
        return []  # already stopped there
    statements = (d.set_delay(0) if st["sql_delay"] else [d.stop_replica() if d.flavour == "mariadb" else d.stop_applier()]) + until
    return [sql_step(h, "rewind", f"drop the delay ({st['sql_delay']} s -> 0) and apply up to {where}", statements, d.stop_applier())]


def _at_stop(d, f, stop: StopPoint) -> bool:
    applied = str(d.applied_position(f["sql"]["variables"], f["replica"]))
    if d.flavour == "mariadb":
        return bool(stop.last_good) and d.reached(applied, stop.last_good) and not d.reached(applied, stop.before or "")
    return bool(stop.before) and not d.reached(applied, stop.before)


@operation("export", touches="dump files of the rescued tables on the delayed replica (mode 600, in `recovery.export_dir`)",
           undo="remove the files")
def export(p, h, f, run_id: str = "") -> list[Step]:
    rec = p.database.recovery
    if rec.outcome != "export":
        return []
    d = _d(p)
    by_schema: dict[str, list[str]] = {}
    for t in rec.export_tables:
        schema, table = t.split(".")
        by_schema.setdefault(schema, []).append(table)
    steps = []
    for schema, tables in by_schema.items():
        path = f"{rec.export_dir}/recovery-{run_id}-{schema}.sql"
        command = (f"install -d -m 700 {shlex.quote(rec.export_dir)} && umask 077 && "
                   f"{d.dump_tool} --defaults-extra-file=\"$FILE_admin\" --single-transaction {shlex.quote(schema)} "
                   + " ".join(shlex.quote(t) for t in tables) + f" > {shlex.quote(path)} && sha256sum {shlex.quote(path)}")
        steps.append(ShellStep(h.name, "export", f"dump {', '.join(schema + '.' + t for t in tables)} to {path}", command, f"rm -f {path}"))
    return steps


@operation("promote", touches="the delayed replica: no source, writable, its heartbeat event on; the marker removed",
           undo="none automatic: rebuild it as a replica (05-database) if the promotion was a mistake")
def promote(p, h, f) -> list[Step]:
    rec = p.database.recovery
    if rec.outcome != "promote":
        return []
    d = _d(p)
    steps = [sql_step(h, "promote", f"{h.name} becomes a primary: replication reset, writable, heartbeat on",
                      d.promote() + d.heartbeat_local(True), None, "rebuild it as a replica with 05-database")]
    steps.append(Step(h.name, "promote", "remove the recovery marker and its drop-in", f"rm -f {RECOVERY_MARKER} {RECOVERY_DROPIN}", None))
    return steps


OPERATIONS: tuple[Operation, ...] = (freeze, rewind, export, promote)


def _d(p):
    from .dialects import dialect

    return dialect(p.database.flavour)


def delayed_host(p):
    return p.host(p.database.delayed_replica)


# -- waiting and verifying ---------------------------------------------------------------------

def wait_stopped(p, client, stop: StopPoint, timeout: float) -> dict[str, Any]:
    """Until the delayed replica's applier has stopped at the stop point; what it applied and whether the bad one is out."""
    d = client.dialect
    host = delayed_host(p)
    deadline = time.monotonic() + timeout
    while True:
        rows = client.query(host, d.status_statement)
        st = d.parse_replica_status(rows[0] if rows else None)
        variables = {r["Variable_name"]: r["Value"] for r in client.query(
            host, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('gtid_slave_pos', 'gtid_executed', 'gtid_binlog_pos')")}
        applied = str(d.applied_position(variables, st))
        stopped = st is not None and st["sql_running"] != "Yes"
        if stopped or time.monotonic() > deadline:
            bad_applied = d.reached(applied, stop.before) if stop.before else False
            return {"stopped": stopped, "applied": applied, "bad applied": bad_applied,
                    "error": (st or {}).get("sql_error", "") if st else "not a replica"}
        time.sleep(0.5)


def verify_rows(p, client) -> tuple[list[dict], list[str]]:
    """The rows the engineer named: counted on the recovered replica and on the primary; problems when not as expected."""
    rec = p.database.recovery
    rows, problems = [], []
    for check in rec.verify:
        where = f" WHERE {check.where}" if check.where else ""
        schema, table = check.table.split(".")
        query = f"SELECT COUNT(*) AS n FROM `{schema}`.`{table}`{where}"
        counts = {}
        for name in (p.database.delayed_replica, p.database.primary):
            try:
                counts[name] = int(client.query(client.host(name), query)[0]["n"])
            except (HostError, KeyError, ValueError, IndexError) as e:
                counts[name] = None
                problems.append(f"{name}: cannot count {check.table}{where}: {e}")
        got = counts[p.database.delayed_replica]
        ok = got is not None and (got == check.rows if check.rows is not None else got > 0)
        rows.append({"table": check.table, "where": check.where or "-", "expected": check.rows if check.rows is not None else ">= 1",
                     f"{p.database.delayed_replica} (recovered)": got, f"{p.database.primary} (primary)": counts[p.database.primary],
                     "verdict": "ok" if ok else "bad"})
        if not ok and got is not None:
            problems.append(f"{check.table}{where}: {got} row(s) on the recovered replica, expected {rows[-1]['expected']}")
    return rows, problems



# -- what the runbook calls ----------------------------------------------------------------------

def require(p):
    """The recovery's inputs, or a clear error before anything remote is touched."""
    rec = p.database.recovery if p.database else None
    if rec is None:
        raise RunbookError(f"{p.source}: database.recovery is not set; for this incident set database.recovery.gtid (the bad "
                           "transaction) or .find with .since (UTC), the rows to .verify, and .outcome (export with "
                           ".export_tables, or promote); nothing was run")
    if not p.database.delayed_replica:
        raise RunbookError(f"{p.source}: database.delayed_replica is not set: there is no delayed replica to recover from")
    return rec


def _steps(operation_fn, p, gathered, host, **extra) -> list[Step]:
    if host.name not in gathered.facts:
        return []
    return operation_fn.ensure(p, host, gathered.facts[host.name], **extra)


def plan_freeze(p, gathered, run_id: str) -> list[Step]:
    return _steps(freeze, p, gathered, delayed_host(p), run_id=run_id)


def plan_rewind(p, gathered, stop: StopPoint, bad: Transaction) -> list[Step]:
    return _steps(rewind, p, gathered, delayed_host(p), stop=stop, bad=bad)


def plan_outcome(p, gathered, run_id: str) -> list[Step]:
    host = delayed_host(p)
    f = gathered.facts.get(host.name, {})
    return export.ensure(p, host, f, run_id=run_id) + promote.ensure(p, host, f)


@dataclass
class Found:
    bad: Transaction | None
    candidates: list[Transaction]
    message: str
    problems: list[str]


def find(p, client, gathered) -> Found:
    """The bad transaction in the primary's binlog, checked against what the delayed replica applied."""
    rec = p.database.recovery
    if p.database.primary in gathered.errors or delayed_host(p).name in gathered.errors:
        return Found(None, [], "The primary or the delayed replica is unreachable: nothing can be searched.", [])
    transactions = read_binlogs(p, client)
    bad, hits = choose(transactions, rec)
    what = f"GTID {rec.gtid}" if rec.gtid else f"a transaction mentioning {rec.find!r}" if rec.find else "a transaction"
    if bad is None:
        return Found(None, hits, f"{len(transactions)} transaction(s) read: none is {what} in the window.",
                     [f"not found: no {what} in the primary's binlogs between {rec.since} and {rec.until or 'now'}; "
                      "widen the window, change recovery.find, or name the GTID"])
    f = gathered.facts[delayed_host(p).name]
    d = client.dialect
    if f["replica"] is not None and already_applied(d, f["sql"]["variables"], f["replica"], bad):
        return Found(bad, hits, f"The bad transaction {bad.gtid} ({bad.at} UTC) is already applied on the delayed replica.",
                     [f"too late: {delayed_host(p).name} already applied {bad.gtid}, committed {bad.at} UTC (more than "
                      f"{p.database.delay_seconds} s ago): there is nothing to rewind; restore from a backup"])
    return Found(bad, hits, f"Bad transaction: {bad.gtid} at {bad.log_file}:{bad.log_pos}, committed {bad.at} UTC: {bad.summary(120)}",
                 [])


def stop_problems(reached: dict[str, Any], bad: Transaction) -> list[str]:
    if reached["bad applied"]:
        return [f"the delayed replica applied the bad transaction {bad.gtid}: the stop point was wrong; do not use this replica"]
    if not reached["stopped"]:
        return [f"the delayed replica's applier did not reach the stop point in time (applied {reached['applied']}); "
                "raise recovery.catch_up_timeout_seconds and re-run (the freeze and the rewind are kept)"]
    if reached["error"]:
        return [f"the applier stopped on an error: {reached['error'][:300]}"]
    return []


def exported_files(p, client, run_id: str) -> list[dict[str, Any]]:
    rec = p.database.recovery
    pattern = shlex.quote(f"{rec.export_dir}/recovery-{run_id}-") + "*.sql"
    r = client.shell(delayed_host(p), f"for f in {pattern}; do echo \"$(stat -c '%s %a' \"$f\") $(sha256sum < \"$f\" | cut -d' ' -f1) $f\"; done")
    rows = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append({"file": parts[3], "bytes": int(parts[0]), "mode": parts[1], "sha256": parts[2]})
    return rows


def next_steps(p, outcome_status: str | None) -> str:
    rec, db = p.database.recovery, p.database
    if outcome_status != "applied":
        return "Nothing was finished in this run: see the plan and the problems above."
    if rec.outcome == "promote":
        return (f"{db.delayed_replica} is now a primary holding the data up to just before the mistake. Point the applications at it; "
                f"set database.primary: {db.delayed_replica} and rebuild {db.primary} and {db.replica or 'the other servers'} as its "
                "replicas (05-database), then remove database.recovery from the parameter file.")
    return (f"The rescued tables are on {db.delayed_replica} in {rec.export_dir} (listed above). Check them, load what is missing into "
            f"the primary {db.primary}, then remove {RECOVERY_MARKER} on {db.delayed_replica} and run 05-database: it restores the "
            "delay and restarts the applier. Remove database.recovery from the parameter file.")


def verdict(freeze_status: str, rewind_status: str | None, outcome_status: str | None, problems: list[str]) -> str:
    """``recovered`` when rewound and finished; ``frozen`` or ``planned`` along the way; ``incomplete`` with problems."""
    if problems:
        return "incomplete"
    if outcome_status == "applied" or (outcome_status == "empty" and rewind_status in ("applied", "empty")):
        return "recovered"
    if freeze_status == "planned" or rewind_status == "planned" or outcome_status == "planned":
        return "planned"
    return "frozen" if freeze_status in ("applied", "empty") else freeze_status
