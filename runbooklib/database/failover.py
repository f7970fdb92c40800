"""A failover: the primary is lost (its VM down, its server not answering) and the real-time replica takes over.

A planned switchover (:mod:`.switchover`) freezes the old primary first; a lost primary cannot be
frozen, so the engineer says so explicitly (``database.switchover.failover: true``; refused while the
primary answers) and the same runbook, ``incident/db-switchover``, runs in two parts:

While the old primary is down, **fail over**:

1. **stop receiving** on the candidate (its receiver would reconnect to the old primary if it came back);
2. **apply received**: wait until the candidate has applied everything its receiver got
   (``switchover.catch_up_timeout_seconds``; if not, its receiver starts again and nothing else changed);
3. **mark** it: a file on it names the primary it replaced and the position it has applied
   (``FAILOVER_MARKER``), then **promote** it (as a switchover does): a run stopped between the two finds
   a replica still, and fails over again;
4. **re-point** the delayed replica at it, its delay kept, and write the candidate's drop-in (a later
   run does either again if an earlier one stopped short of it).

Transactions another replica received from the old primary but the candidate never did are counted
then (lost at promotion) and make the verdict ``incomplete``. A delayed replica that was down then, and
had *applied* such transactions, is re-pointed only if the old primary's binlog shows them to be
heartbeat ticks (its position then goes back to the promotion's); otherwise it is named, with what it
holds, and left with its data (the new primary's binlog cannot continue from its position).

Once the old primary is back (the VM boots it writable, with its heartbeat event on), the same run again
**fences and rejoins** it:

1. **fence**: read-only, heartbeat event off; from here it commits nothing;
2. **count** its own transactions past the promotion position, from the GTIDs in its binlog: those that
   touch data are committed rows the new primary never got. If there is any, the run stops there, the
   old primary fenced, and names them (GTID, tables, rows) so that the engineer saves them from its binlog;
   none (only heartbeat ticks, written between its boot and the fence), and
3. **rejoin**: its binlog history is dropped back to the promotion position and it replicates from the
   new primary; its drop-in says read-only.

A run once all is in place plans nothing. Afterwards the parameter file must say the new roles, as after a switchover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import HostError
from ..phase.steps import Operation, Step, operation, write_file
from . import recovery, switchover
from .dialects import Source
from .facts import FAILOVER_MARKER
from .gtid import GtidPosition, GtidSet, MariadbGtid
from .operations import executor, sql_step

WAITING, FAILOVER, REJOIN, DONE, BLOCKED = "waiting for the old primary", "failover", "fence and rejoin", "done", "blocked"


def _d(p):
    from .dialects import dialect

    return dialect(p.database.flavour)


def marker_text(old: str, position: str, run_id: str = "") -> str:
    return (f"# runbooklib: this server was promoted by a failover (run {run_id or '-'}): {old} was lost\n"
            "# incident/db-switchover (failover) reads it to fence the old primary and count what it held\n"
            f"old_primary={old}\nposition={position}\nat={dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n")


def parse_marker(text: str | None) -> dict[str, str]:
    """The marker's ``key=value`` lines ({} when there is no marker)."""
    out = {}
    for line in (text or "").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _down(gathered, name: str) -> str | None:
    """Why the server is lost (unreachable, or its server not answering); None: it answers."""
    if name in gathered.errors:
        return f"unreachable: {gathered.errors[name]}"
    f = gathered.facts.get(name)
    if f is None:
        return "no facts"
    if not f["sql"]["answering"]:
        return f"the server does not answer: {f['sql']['error'][:200]}"
    return None


def situation(p, gathered) -> tuple[str, list[str]]:
    """Where a failover stands: (one of FAILOVER, WAITING, REJOIN, DONE, BLOCKED; why it is blocked)."""
    db = p.database
    old, candidate = switchover.require(p)
    old_ip, cand_ip = str(p.host(old).address), str(p.host(candidate).address)
    why_cand = _down(gathered, candidate)
    if why_cand:
        return BLOCKED, [f"{candidate}: {why_cand}: the candidate must answer to take over"]
    fc = gathered.facts[candidate]
    st = fc["replica"]
    marker = parse_marker(fc.get("failover_marker"))
    promoted = st is None and fc["sql"]["variables"].get("read_only") != "ON" and marker.get("old_primary") == old
    out = [f"{name}: a point-in-time recovery is in progress; finish it first"
           for name, f in gathered.facts.items() if f.get("recovery_marker") is not None]
    if out:
        return BLOCKED, out
    why_old = _down(gathered, old)
    if why_old:
        if promoted:
            return WAITING, []
        if st is None:
            return BLOCKED, [f"{candidate}: not a replica, and no failover from {old} promoted it: nothing to fail over to"]
        if st["source_host"] != old_ip:
            return BLOCKED, [f"{candidate}: replicates from {st['source_host']}, not from {old}"]
        if st["sql_delay"]:
            return BLOCKED, [f"{candidate}: it has a delay of {st['sql_delay']} s: a failover takes the real-time replica"]
        if st["sql_running"] != "Yes":
            return BLOCKED, [f"{candidate}: its applier is not running ({st['sql_error'][:200] or 'stopped'}): what it received "
                             "would not be applied; fix it first"]
        return FAILOVER, []
    fo = gathered.facts[old]
    if promoted:
        sto = fo["replica"]
        if sto is None:
            return REJOIN, []
        if sto["source_host"] == cand_ip:
            if fo["sql"]["variables"].get("read_only") == "ON" and sto["sql_running"] == "Yes":
                return DONE, []
            return BLOCKED, [f"{old}: replicates from {candidate} but is not read-only or its applier stopped "
                             f"(SQL {sto['sql_running']}: {sto['sql_error'][:200]}); see 05-database"]
        return BLOCKED, [f"{old}: replicates from {sto['source_host']}, neither {candidate} nor nothing"]
    if st is not None and st["source_host"] == old_ip:
        return BLOCKED, [f"{old}: it answers and {candidate} replicates from it: the primary is not lost. Remove "
                         "database.switchover.failover and run the planned switchover (it loses nothing); if "
                         f"{old} must be taken out while it answers, stop its server first"]
    return BLOCKED, [f"{candidate}: not a replica of {old} and not promoted by a failover from it (marker "
                     f"{FAILOVER_MARKER}: {marker or 'absent'}); {db.primary} answers: nothing to fail over"]


# -- the steps -------------------------------------------------------------------------------------

@operation("stop receiving", touches="the candidate's receiver (IO thread): stopped", undo="`START SLAVE IO_THREAD` (MySQL 8: REPLICA)")
def stop_receiving(p, h, f) -> list[Step]:
    d, (old, _) = _d(p), switchover.require(p)
    return [sql_step(h, "stop receiving", f"{h.name} stops fetching from {old} (it would reconnect to {old} if that came back)",
                     [d.stop_receiver()], d.start_receiver())]


@operation("apply received", touches="nothing (a wait)", undo="-")
def apply_received(p, h, f) -> list[Step]:
    d, (old, _) = _d(p), switchover.require(p)
    timeout = p.database.switchover.catch_up_timeout_seconds
    return [Step(h.name, "apply received", f"wait until {h.name} applied everything it received from {old} (at most {timeout} s)",
                 d.wait_for_position("<what its receiver got>", timeout), None,
                 "if it does not, its receiver starts again and nothing else happens")]


@operation("mark promotion", touches=f"the file `{FAILOVER_MARKER}` on the new primary", undo=f"`rm -f {FAILOVER_MARKER}`")
def mark(p, h, f) -> list[Step]:
    old, _ = switchover.require(p)
    return [Step(h.name, "mark promotion", f"{h.name} notes that it replaced {old}, and its position then (read when {old} is back)",
                 write_file(FAILOVER_MARKER, marker_text(old, "<its applied position>")), f"rm -f {FAILOVER_MARKER}")]


@operation("fence", touches="the old primary, back: heartbeat event off, read-only",
           undo="none automatic: it must not take writes while another server is the primary")
def fence(p, h, f) -> list[Step]:
    d = _d(p)
    if f["sql"]["variables"].get("read_only") == "ON" and f["heartbeat"]["event"] not in ("ENABLED",):
        return []
    return [sql_step(h, "fence", f"{h.name} (the old primary, back) takes no more writes: heartbeat event off, read-only",
                     d.heartbeat_local(False) + d.read_only(True), None, "it must stay read-only while another server is the primary")]


@operation("count", touches="nothing (reads the old primary's binlogs)", undo="-")
def count(p, h, f, position: str = "") -> list[Step]:
    _, candidate = switchover.require(p)
    return [Step(h.name, "count", f"count {h.name}'s own transactions past {position} (when {candidate} was promoted); "
                                  "any that touches data stops the rejoin", recovery.binlog_script(_d(p), _ALL), None,
                 "a read")]


@operation("rejoin", touches="the old primary: its binlog history dropped back to the promotion position, replicates from the new primary",
           undo="none automatic: its dropped binlogs held only heartbeat ticks (counted); rebuild it from the new primary if need be")
def rejoin(p, h, f, position: str = "", source: Source | None = None) -> list[Step]:
    d, (_, candidate) = _d(p), switchover.require(p)
    return [sql_step(h, "rejoin", f"{h.name} drops its own history past {position} (no data: counted) and replicates from "
                                  f"{candidate} ({source.host})", d.restart_from(position) + d.configure_replica(source), None,
                     "rebuild it from the new primary")]


OPERATIONS: tuple[Operation, ...] = (stop_receiving, apply_received, mark, switchover.promote, switchover.repoint, fence, count, rejoin,
                                     switchover.drop_in)
_ALL = types.SimpleNamespace(since=None, until=None, gtid=None)  # a binlog read without a window


def plan(p, gathered, mode: str) -> list[Step]:
    """The steps of the failover (the old primary down) or of the fence and rejoin (it is back), in the order they run."""
    db = p.database
    old, candidate = switchover.require(p)
    ho, hc = p.host(old), p.host(candidate)
    fc = gathered.facts[candidate]
    new_source = Source(str(hc.address), db.port, db.replication_user, 0)
    delayed = []  # the delayed replica follows the new primary, its delay kept (again, if an earlier run stopped short)
    if db.delayed_replica and db.delayed_replica in gathered.facts:
        fd = gathered.facts[db.delayed_replica]
        if mode == FAILOVER or (fd["replica"] or {}).get("source_host") != new_source.host:
            delayed = switchover.repoint.ensure(p, p.host(db.delayed_replica), fd, source=dataclasses.replace(new_source, delay=db.delay_seconds))
    if mode == FAILOVER:
        # marked before the promotion: a run stopped between the two finds a replica still, and fails over again
        steps = stop_receiving.ensure(p, hc, fc) + apply_received.ensure(p, hc, fc) + mark.ensure(p, hc, fc)
        return steps + switchover.promote.ensure(p, hc, fc) + delayed + switchover.drop_in.ensure(p, hc, fc)
    if mode not in (WAITING, REJOIN, DONE):
        return []
    steps = delayed + switchover.drop_in.ensure(p, hc, fc)
    if mode == REJOIN:
        fo = gathered.facts[old]
        position = parse_marker(fc.get("failover_marker"))["position"]
        steps += (fence.ensure(p, ho, fo) + count.ensure(p, ho, fo, position=position)
                  + rejoin.ensure(p, ho, fo, position=position, source=new_source) + switchover.drop_in.ensure(p, ho, fo))
    return steps


# -- counting what the old primary holds -----------------------------------------------------------

def own_past(d, transactions: list, promoted: str) -> list:
    """The transactions past the promotion position: what the old primary committed that the new primary never got."""
    if d.flavour == "mariadb":
        at = GtidPosition.parse(promoted).last
        out = []
        for t in transactions:
            g = MariadbGtid.parse(t.gtid)
            if g.seq > (at[g.domain].seq if g.domain in at else 0):
                out.append(t)
        return out
    have = GtidSet.parse(promoted)
    return [t for t in transactions if not have.contains(GtidSet.parse(t.gtid))]


def row_events(t) -> int:
    """Rows a transaction changed, from its decoded row events (``### INSERT INTO``, ``### UPDATE``, ``### DELETE FROM``)."""
    return sum(1 for line in t.text if line.startswith(("### INSERT INTO", "### UPDATE", "### DELETE FROM")))


def diverged(transactions: list) -> dict[str, Any]:
    """What the old primary holds past the promotion: its data transactions (with their rows, per table) and heartbeat ticks."""
    data = [t for t in transactions if not t.heartbeat_only]
    rows_by_table: Counter = Counter()
    tx_by_table: Counter = Counter()
    for t in data:
        for table in sorted(t.tables) or ["(no table: a statement)"]:
            tx_by_table[table] += 1
        rows_by_table[", ".join(sorted(t.tables)) or "(no table: a statement)"] += row_events(t)
    table = [{"table": name, "transactions": tx_by_table[name], "rows": rows_by_table.get(name, 0), "verdict": "bad"}
             for name in sorted(tx_by_table)]
    return {"transactions": len(data), "rows": sum(row_events(t) for t in data), "heartbeat_ticks": len(transactions) - len(data),
            "table": table, "gtids": [t.gtid for t in data], "listed": [t.row() for t in data[:50]]}


# -- applying --------------------------------------------------------------------------------------

def _retrieved(client, host) -> str:
    d = client.dialect
    rows = client.query(host, d.status_statement)
    st = d.parse_replica_status(rows[0] if rows else None)
    return st["retrieved"] if st else ""


def _past_promotion(p, client, host, promoted: str | None, old: str, candidate: str) -> tuple[str, str]:
    """Whether the delayed replica can be re-pointed at the new primary: ``(why not, "")``, ``("", "")`` (as it is), or
    ``("", position)``: first reset its position to the promotion's.

    A replica down during the failover (or one whose delay had passed) may have applied transactions of the
    old primary that the candidate never got; the new primary's binlog cannot continue from its position
    (MariaDB and MySQL refuse it, error 1236). The old primary's binlog says what they are: heartbeat ticks
    only (what its event writes every second) are no data, and the replica restarts from the promotion
    position, as a rejoined old primary does; anything else is committed data the new primary never got,
    and the replica is left as it is, with its data, named, with what it holds.
    """
    d = client.dialect
    try:
        if not promoted:  # a later run: the promotion position is in the new primary's marker
            promoted = parse_marker(client.shell(client.host(candidate), f"cat {FAILOVER_MARKER}").check().stdout).get("position", "")
        rows = client.query(host, f"SELECT {switchover._applied_expr(d)} AS applied")
    except (HostError, KeyError) as e:
        return f"{host.name}: cannot read what it applied against the promotion position ({e}); not re-pointed, nothing else done", ""
    applied = (rows[0].get("applied") or "") if rows else ""  # empty: a delayed replica that has applied nothing yet
    ahead = d.behind(promoted, applied) if promoted and applied else 0
    if not ahead:
        return "", ""
    lost = f"{host.name} applied {ahead} transaction(s) of {old} past the promotion at {promoted} (it is at {applied}) that {candidate} never got"
    try:
        past = [t for t in own_past(d, recovery.read_binlogs(p, client, old, _ALL), promoted) if not d.behind(applied, t.gtid)]
    except HostError as e:
        return (f"{lost}; whether they are only {old}'s heartbeat ticks is in {old}'s binlog, which cannot be read now ({e}). It is NOT "
                f"re-pointed: run this runbook again once {old} answers"), ""
    data = [t for t in past if not t.heartbeat_only]
    if not data and len(past) >= ahead:
        return "", promoted
    found = diverged(data)
    tables = ", ".join(f"{r['table']} ({r['rows']} rows)" for r in found["table"]) or "transactions not found in its binlog"
    return (f"{lost}: {len(data) or ahead} hold data ({tables}): lost at the promotion. It is NOT re-pointed ({candidate}'s binlog cannot "
            f"continue from there; it keeps its data and its old source, {old}): save those transactions from {old}'s binlog "
            f"({d.binlog_tool}) if the business needs them, apply them on {candidate}, then rebuild {host.name} from {candidate} "
            "as a new replica"), ""


def _own_heartbeat(client, host, within: float = 15.0) -> float | None:
    """Seconds until a freshly promoted server writes its first heartbeat (its event scheduler activates the
    event on its next round, not at once); None when it did not within ``within`` s (verification then names it).
    Until then the newest row is the lost primary's last one, which would read as a stopped heartbeat."""
    d, t0 = client.dialect, time.monotonic()
    while True:
        with contextlib.suppress(HostError, IndexError, ValueError):
            if float(client.query(host, d.heartbeat_query())[0]["lag_seconds"]) < 2:
                return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > within:
            return None
        time.sleep(0.5)


def apply(p, client, steps: list[Step], run_id: str = "", on_change: Callable[[Step], Any] | None = None) -> dict[str, Any]:
    """Run the steps in order; stop at the first failure; the waits, the marker and the count are done here."""
    db = p.database
    old, candidate = switchover.require(p)
    d = client.dialect
    run = executor(client)
    out: dict[str, Any] = {"ok": True, "error": "", "applied": [], "promoted_at": None, "lost_at_promotion": None,
                           "received_elsewhere": {}, "diverged": None, "aborted": False}
    for step in steps:
        host = client.host(step.host)
        if step.operation == "re-point" and step.host == db.delayed_replica:
            stop, reset = _past_promotion(p, client, host, out["promoted_at"], old, candidate)
            if stop:
                out.update(ok=False, error=stop)
                return out
            if reset:  # past the promotion it applied only the old primary's heartbeat ticks: it restarts from there
                step = dataclasses.replace(step, statements=(*d.restart_from(reset), *step.statements),
                                           change=f"{step.change}; first its position goes back to the promotion's ({reset}): "
                                                  f"past it, it had applied only heartbeat ticks of {old}")
        if step.operation == "apply received":
            timeout = db.switchover.catch_up_timeout_seconds
            try:
                received = _retrieved(client, host)
                waited = client.query(host, d.wait_for_position(received, timeout), timeout=timeout + 30) if received else [{"waited": "0"}]
                caught_up = bool(waited) and waited[0].get("waited") == "0"
            except HostError as e:
                caught_up, out["error"] = False, str(e)
            if not caught_up:
                undo = client.execute(host, [d.start_receiver()])
                out.update(ok=False, aborted=True, error=(out["error"] or f"{candidate} did not apply what it received ({received}) "
                                                          f"within {timeout} s") + ("; its receiver runs again, nothing else changed" if undo.ok
                                                                                    else f"; restarting its receiver failed: {undo.error}"))
                return out
            applied = client.query(host, f"SELECT {switchover._applied_expr(d)} AS applied")[0]["applied"]
            out["promoted_at"] = applied
            # what another replica received from the old primary that the candidate never did: lost at promotion
            lost = 0
            for other in (db.delayed_replica,):
                if not other:
                    continue
                try:
                    theirs = _retrieved(client, client.host(other))
                except HostError as e:
                    out["received_elsewhere"][other] = f"unknown: {e}"
                    continue
                missing = d.behind(applied, theirs) if theirs else 0
                out["received_elsewhere"][other] = missing
                lost += missing
            out["lost_at_promotion"] = lost
        elif step.operation == "mark promotion":
            step = dataclasses.replace(step, command=write_file(FAILOVER_MARKER, marker_text(old, out["promoted_at"] or "", run_id)))
            r = run(host, step)
            if not r.ok:
                out.update(ok=False, error=f"{step.host}: {step.operation} failed: {r.error}")
                return out
        elif step.operation == "count":
            try:
                position = parse_marker(client.shell(client.host(candidate), f"cat {FAILOVER_MARKER}").check().stdout)["position"]
                past = own_past(d, recovery.read_binlogs(p, client, old, _ALL), position)
            except (HostError, KeyError) as e:
                out.update(ok=False, error=f"{old}: cannot count its transactions past the promotion: {e}; it stays fenced, nothing else done")
                return out
            out["diverged"] = found = diverged(past)
            if found["transactions"]:
                tables = ", ".join(f"{r['table']} ({r['rows']} rows)" for r in found["table"])
                out.update(ok=False, error=(f"{old} holds {found['transactions']} committed transaction(s), {found['rows']} row(s), that never "
                                            f"reached {candidate}: {tables}; GTIDs {', '.join(found['gtids'][:10])}"
                                            f"{' ...' if len(found['gtids']) > 10 else ''}. It is fenced (read-only) and NOT rejoined: save "
                                            f"those rows from its binlog ({d.binlog_tool}), apply what the business needs on {candidate}, "
                                            f"then rebuild {old} from {candidate}"))
                return out
        else:
            r = run(host, step)
            if not r.ok:
                out.update(ok=False, error=f"{step.host}: {step.operation} ({step.change}) failed: {r.error}")
                return out
            if step.operation == "promote":
                out["heartbeat_after_s"] = _own_heartbeat(client, host)
        out["applied"].append(step)
        if on_change:
            on_change(step)
    return out


def problems(mode: str, result: dict[str, Any] | None, p) -> list[str]:
    """What the verdict lists: loss (never hidden), a failure, the old primary not yet fenced."""
    old, candidate = switchover.require(p)
    out = []
    if result:
        if not result["ok"]:
            out.append(result["error"])
        for other, missing in result.get("received_elsewhere", {}).items():
            if missing:
                out.append(f"{missing} transaction(s) of {old} reached {other} but not {candidate}: lost at the promotion"
                           if isinstance(missing, int) else f"{other}: what it received is {missing}")
    return out


def pending(mode: str, result: dict[str, Any] | None, p) -> str:
    """What remains to be done, for the engineer (printed, and a note of the verdict)."""
    old, candidate = switchover.require(p)
    if mode in (FAILOVER, WAITING) and (mode == WAITING or (result and result["ok"])):
        return (f"PENDING: {old} is down. When it is back it boots WRITABLE with its heartbeat on: keep applications away from it and "
                f"run this runbook again with the same parameters at once: it fences {old}, counts what it committed that {candidate} "
                "never got, and rejoins it only if that is nothing")
    return ""


def verdict(mode: str, status: str, result: dict[str, Any] | None, found: list[str]) -> str:
    if found or (result and not result["ok"]):
        return "incomplete"
    if mode == BLOCKED:
        return "incomplete"
    if mode == WAITING:
        return "failed over"
    if mode == DONE or status == "empty":
        return "nothing to do"
    if status == "applied":
        return "failed over" if mode == FAILOVER else "rejoined"
    return {"planned": "planned", "cancelled": "cancelled"}.get(status, status)


__all__ = ["BLOCKED", "DONE", "FAILOVER", "REJOIN", "WAITING", "apply", "diverged", "own_past", "plan", "situation", "verdict"]
