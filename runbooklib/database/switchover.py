"""A planned switchover: the real-time replica becomes the primary, and no committed row is lost.

The order is what makes it lossless:

1. **freeze** the old primary: its heartbeat event off and read-only (MySQL: ``super_read_only``, which
   stops administrators too). From here no new transaction commits there; applications see errors,
   not lost writes. Its position is then final.
2. **catch up**: wait until the candidate has applied that final position (``MASTER_GTID_WAIT`` /
   ``WAIT_FOR_EXECUTED_GTID_SET``). If it does not within ``switchover.catch_up_timeout_seconds``, the
   old primary is made writable again and the switchover stops: nothing was lost, nothing moved.
3. **promote** the candidate: no source, writable, its heartbeat event on.
4. **re-point** the old primary (as a replica of the new one, from its own position) and the delayed
   replica (it keeps its delay: it continues from what it applied, GTIDs being global).
5. **drop-ins**: each server's file says its new role (read-only or not), checked by the server; no restart.

A run that stopped part-way (a host down, a link cut, the runner ended by a signal) leaves the site in one of
the states the order passes through; a run with the same parameters reads which (:func:`progress`) and goes
on from there, re-applying nothing: **frozen** (the old primary read-only, the candidate still its replica:
catch up, promote, ...), **promoted** (the candidate writable with no source, the old primary frozen with
none: re-point, drop-ins), **re-pointed** (the old primary replicates from the candidate: what is left of the
delayed replica's re-point and the drop-ins; nothing once all is in place).

The number of committed rows lost is then counted, table by table, between the frozen old primary and
the promoted one: it must be 0. Afterwards the parameter file must say the new roles
(``database.primary``/``database.replica``); until then ``05-database`` refuses to plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import HostError, RunbookError
from ..phase.steps import HostApply, Operation, Step, file_diff, operation
from .dialects import Source
from .load import checksum_generator, parse_checksums
from .operations import config_changes, desired_config, executor, sql_step, validated_write

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys", "runbooklib")


def require(p) -> tuple[str, str]:
    """(old primary, candidate), or a clear error before anything remote is touched."""
    db = p.database
    if db.switchover is None:
        raise RunbookError(f"{p.source}: database.switchover is not set; for this switchover set database.switchover: {{}} (the "
                           "candidate defaults to database.replica); nothing was run")
    candidate = db.switchover.candidate or db.replica
    return db.primary, candidate


def swapped(p):
    """The parameters as they must read after the switchover: the candidate is the primary, the old primary its replica."""
    old, candidate = require(p)
    db = p.database.model_copy(update={"primary": candidate, "replica": old})
    return p.model_copy(update={"database": db})


START, FROZEN, PROMOTED, REPOINTED = "not started", "frozen", "promoted", "re-pointed"


def progress(p, gathered) -> str:
    """How far a switchover from the old primary to the candidate got (both must answer):

    - ``re-pointed``: the old primary replicates from the candidate (what is left: the delayed replica, the drop-ins);
    - ``promoted``: the candidate has no source and is writable, the old primary is read-only with no source;
    - ``frozen``: the old primary is read-only with no source, the candidate still replicates from it;
    - ``not started``: anything else (the preflight says whether it can start).
    """
    old, candidate = require(p)
    fo, fc = gathered.facts[old], gathered.facts[candidate]
    cand_ip = str(p.host(candidate).address)
    so, sc = fo["replica"], fc["replica"]
    old_frozen = so is None and fo["sql"]["variables"].get("read_only") == "ON"
    if so is not None and so["source_host"] == cand_ip and sc is None:
        return REPOINTED
    if old_frozen and sc is None and fc["sql"]["variables"].get("read_only") != "ON" and not fc.get("failover_marker"):
        return PROMOTED
    if old_frozen and sc is not None and sc["source_host"] == str(p.host(old).address):
        return FROZEN
    return START


def preflight(p, d, gathered) -> list[str]:
    """Why the switchover must not start (or go on from where an earlier run stopped): every reason, each naming the server."""
    old, candidate = require(p)
    out = []
    for name in (old, candidate):
        if name in gathered.errors:
            out.append(f"{name}: unreachable: {gathered.errors[name]}")
    if old in gathered.errors:
        out.append(_lost_hint(old))
    if out:
        return out
    fo, fc = gathered.facts[old], gathered.facts[candidate]
    if not fo["sql"]["answering"]:
        out += [f"{old}: the server does not answer: {fo['sql']['error'][:200]}", _lost_hint(old)]
    if not fc["sql"]["answering"]:
        out.append(f"{candidate}: the server does not answer: {fc['sql']['error'][:200]}")
    if out:
        return out + _recoveries(gathered)
    where = progress(p, gathered)
    if where in (PROMOTED, REPOINTED):  # an earlier run promoted the candidate: what is left asks nothing more of it
        return _recoveries(gathered)
    if where == START:  # (frozen: an earlier run made the old primary read-only; this one goes on from there)
        if fo["replica"] is not None:
            out.append(f"{old}: it replicates from {fo['replica']['source_host']}, not from {candidate}: it is not the primary")
        elif fo["sql"]["variables"].get("read_only") == "ON":
            out.append(f"{old}: already read-only: the site takes no writes; finish the earlier switchover first")
    st = fc["replica"]
    if st is None:
        out.append(f"{candidate}: not a replica: it cannot take over without the primary's data")
    else:
        if st["source_host"] != str(p.host(old).address):
            out.append(f"{candidate}: replicates from {st['source_host']}, not from {old}")
        if st["io_running"] != "Yes" or st["sql_running"] != "Yes":
            out.append(f"{candidate}: replication is not running (IO {st['io_running']}, SQL {st['sql_running']}); start it first")
        if st["sql_delay"]:
            out.append(f"{candidate}: it has a delay of {st['sql_delay']} s: a switchover takes the real-time replica")
    return out + _recoveries(gathered)


def _recoveries(gathered) -> list[str]:
    return [f"{name}: a point-in-time recovery is in progress; finish it first" for name, f in gathered.facts.items()
            if f.get("recovery_marker") is not None]


def _lost_hint(old: str) -> str:
    return (f"{old}: a planned switchover cannot freeze a primary that does not answer; if {old} is lost, set "
            "database.switchover.failover: true to fail over to the candidate (what it never received is counted when "
            f"{old} is back)")


# -- the steps -------------------------------------------------------------------------------------

@operation("freeze writes", touches="the old primary: heartbeat event off, read-only", undo="writable again, heartbeat event on")
def freeze_writes(p, h, f) -> list[Step]:
    d = _d(p)
    return [sql_step(h, "freeze writes", f"{h.name} stops taking writes: heartbeat event off, read-only",
                     d.heartbeat_local(False) + d.read_only(True), "; ".join(d.read_only(False) + d.heartbeat_local(True)))]


@operation("catch up", touches="nothing (a wait)", undo="-")
def catch_up(p, h, f, resumed: bool = False) -> list[Step]:
    old, _ = require(p)
    d = _d(p)
    frozen = " (frozen by an earlier run)" if resumed else ""
    return [Step(h.name, "catch up", f"wait until {h.name} applied everything {old}{frozen} committed "
                                     f"(at most {p.database.switchover.catch_up_timeout_seconds} s)",
                 d.wait_for_position("<the old primary's final position>", p.database.switchover.catch_up_timeout_seconds),
                 None, "if it does not catch up, the old primary is made writable again and nothing else happens")]


@operation("promote", touches="the candidate: no source, writable, heartbeat event on", undo="none automatic: switch back with this runbook")
def promote(p, h, f) -> list[Step]:
    d = _d(p)
    return [sql_step(h, "promote", f"{h.name} becomes the primary: replication reset, writable, heartbeat event on",
                     d.promote() + d.heartbeat_local(True), None, "switch back with this runbook (candidate: the old primary)")]


@operation("re-point", touches="the old primary and the delayed replica: their source is the new primary",
           undo="re-point them at the old primary (05-database with the old parameters)")
def repoint(p, h, f, source: Source | None = None, own_position: bool = False) -> list[Step]:
    d = _d(p)
    delay = f"{source.delay} s delay kept" if source.delay else "no delay"
    statements = (d.adopt_own_position() if own_position else []) + d.configure_replica(source)
    return [sql_step(h, "re-point", f"{h.name} replicates from the new primary ({source.host}), {delay}", statements,
                     None, "re-point with 05-database and the old parameters")]


@operation("drop-in", touches="the drop-in of the old primary and the candidate (their read-only line), checked by the server",
           undo="put `…runbook-prev` back")
def drop_in(p, h, f) -> list[Step]:
    new = swapped(p)
    if not config_changes(new, h, f):
        return []
    d = _d(p)
    path = d.config_file
    want = desired_config(new, h)
    return [Step(h.name, "drop-in", f"{path}: {h.name} is now the {new.database.roles()[h.name]} (no restart: the running "
                                    "server already is)", validated_write(d, path, want),
                 f"cp {path}.runbook-prev {path}", diff=file_diff(path, f["config"], want))]


OPERATIONS: tuple[Operation, ...] = (freeze_writes, catch_up, promote, repoint, drop_in)


def _d(p):
    from .dialects import dialect

    return dialect(p.database.flavour)


def plan(p, gathered) -> list[Step]:
    """The switchover, in the order it runs (hosts interleaved: the order is the point), from where an earlier run
    stopped (:func:`progress`): what is in place is not done again."""
    old, candidate = require(p)
    db = p.database
    ho, hc = p.host(old), p.host(candidate)
    fo, fc = gathered.facts[old], gathered.facts[candidate]
    new_source = Source(str(hc.address), db.port, db.replication_user, 0)
    where = progress(p, gathered)
    # frozen by an earlier run: its heartbeat event is off too (else the freeze again: idempotent, and a replica must not tick)
    refreeze = where == FROZEN and (fo.get("heartbeat") or {}).get("event") == "ENABLED"
    steps = freeze_writes.ensure(p, ho, fo) if where == START or refreeze else []
    if where in (START, FROZEN):
        steps += catch_up.ensure(p, hc, fc, resumed=where == FROZEN) + promote.ensure(p, hc, fc)
    if where != REPOINTED:
        steps += repoint.ensure(p, ho, fo, source=new_source, own_position=True)
    if db.delayed_replica and db.delayed_replica in gathered.facts:
        fd = gathered.facts[db.delayed_replica]
        sd = fd["replica"]
        if where == START or sd is None or sd["source_host"] != new_source.host or sd["sql_delay"] != db.delay_seconds:
            steps += repoint.ensure(p, p.host(db.delayed_replica), fd,
                                    source=Source(new_source.host, db.port, db.replication_user, db.delay_seconds))
    steps += drop_in.ensure(p, ho, fo) + drop_in.ensure(p, hc, fc)
    return steps


def user_schemas(client, host) -> list[str]:
    rows = client.query(host, "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA")
    return [r["name"] for r in rows if r["name"] not in SYSTEM_SCHEMAS]


def table_sums(client, host, schemas: list[str]) -> dict[str, tuple[int, str]]:
    if not schemas:
        return {}
    r = client.shell(host, '$SQL -N < "$FILE_generator" | $SQL -N', {"generator.sql": checksum_generator(schemas)})
    return parse_checksums(r.check().stdout)


def apply(p, client, steps: list[Step], on_change: Callable[[Step], Any] | None = None) -> dict[str, Any]:
    """Run the switchover in order; stop at the first failure, and undo the freeze if the candidate never caught up."""
    old, candidate = require(p)
    d = client.dialect
    run = executor(client)
    out: dict[str, Any] = {"ok": True, "error": "", "applied": [], "final_position": None, "frozen": {}, "aborted": False,
                           "transactions_lost": None}
    if steps and not any(s.operation == "catch up" for s in steps):
        # an earlier run promoted the candidate: the old primary, still read-only, holds what it committed (the rows compared)
        try:
            out["frozen"] = table_sums(client, client.host(old), user_schemas(client, client.host(old)))
        except HostError as e:
            out.update(ok=False, error=f"{old}: reading its tables (the rows the candidate must hold) failed: {e}")
            return out
    for step in steps:
        host = client.host(step.host)
        if step.operation == "catch up":
            try:
                position = client.query(client.host(old), d.position_query())[0]["position"]
                out["final_position"] = position
                out["frozen"] = table_sums(client, client.host(old), user_schemas(client, client.host(old)))
                timeout = p.database.switchover.catch_up_timeout_seconds
                waited = client.query(host, d.wait_for_position(position, timeout), timeout=timeout + 30)
                caught_up = bool(waited) and waited[0].get("waited") == "0"
            except HostError as e:
                caught_up, out["error"] = False, str(e)
            if not caught_up:
                undo = client.execute(client.host(old), d.read_only(False) + d.heartbeat_local(True))
                if undo.ok and on_change:  # the record says the freeze it lists as applied is no longer in place
                    on_change(Step(old, "freeze writes", f"undone: {old} takes writes again, heartbeat event on ({candidate} did not "
                                                         "catch up)", None))
                out.update(ok=False, aborted=True, error=(out["error"] or f"{candidate} did not apply {old}'s final position "
                           f"{out['final_position']} within {p.database.switchover.catch_up_timeout_seconds} s")
                           + ("; the old primary is writable again, nothing else changed" if undo.ok else
                              f"; and making {old} writable again failed: {undo.error}: do it by hand ({'; '.join(d.read_only(False))})"))
                return out
            applied_now = client.query(host, f"SELECT {_applied_expr(d)} AS applied")[0]["applied"]
            out["transactions_lost"] = d.behind(applied_now, position)
        else:
            r = run(host, step)
            if not r.ok:
                out.update(ok=False, error=f"{step.host}: {step.operation} ({step.change}) failed: {r.error}")
                return out
        out["applied"].append(step)
        if on_change:
            on_change(step)
    return out


def _applied_expr(d) -> str:
    return "@@GLOBAL.gtid_slave_pos" if d.flavour == "mariadb" else "@@GLOBAL.gtid_executed"


def lost_rows(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> tuple[list[dict], int]:
    """Per table: rows on the frozen old primary and on the new primary; the committed rows missing on the new one."""
    rows, lost = [], 0
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table), after.get(table)
        missing = max(0, (b[0] if b else 0) - (a[0] if a else 0))
        lost += missing
        same = b == a
        rows.append({"table": table, "old primary (frozen)": f"{b[0]} rows" if b else "-", "new primary": f"{a[0]} rows" if a else "-",
                     "lost": missing, "verdict": "ok" if same else "bad"})
    return rows, lost


def verdict(status: str, result: dict[str, Any] | None, problems: list[str]) -> str:
    if result and result.get("aborted"):
        return "incomplete"
    if problems:
        return "incomplete"
    return {"applied": "switched", "planned": "planned", "empty": "nothing to do", "cancelled": "cancelled"}.get(status, status)


def results_rows(result: dict[str, Any]) -> list[dict]:
    return [{"host": s.host, "operation": s.operation, "change": s.change} for s in result.get("applied", [])]


__all__ = ["HostApply", "apply", "lost_rows", "plan", "preflight", "require", "swapped", "verdict"]
