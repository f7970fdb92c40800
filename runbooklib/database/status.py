"""Replication status and lag: what each server says, and what the heartbeat shows.

``Seconds_Behind_Master`` alone is not trusted: it is 0 while the receiver is disconnected and the
applier idle, and on a delayed replica it mixes the delay with real lag. The heartbeat is: the
primary's event writes ``UTC_TIMESTAMP(6)`` into ``runbooklib.heartbeat`` every second, the row
replicates like any data, and on each replica ``now - newest row`` is how far behind it applies
(the servers' clocks are kept by the VM phase's chrony). A delayed replica's lag is judged
against its target, the configured delay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ..phase.facts import Gathered
from .dialects import HEARTBEAT_TABLE, Dialect
from .operations import role

# a delayed replica applying this much earlier than its delay is not delaying (clock skew aside)
EARLY_TOLERANCE_SECONDS = 2.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.2f} days"


def report(p, d: Dialect, gathered: Gathered) -> list[dict[str, Any]]:
    """One row per database host: role, service, threads, source, delay, applied position, heartbeat lag, verdict.

    A host that did not answer over SSH is a row too, named, with why.
    """
    db = p.database
    primary_facts = gathered.facts.get(db.primary)
    primary_pos = str(d.executed_position(primary_facts["sql"]["variables"])) if primary_facts else ""
    rows = []
    for name, r in db.roles().items():
        row: dict[str, Any] = {"host": name, "role": r, "service": "-", "IO": "-", "SQL": "-", "source": "-",
                               "delay (configured)": "-", "remaining delay": "-", "applied": "-", "behind (transactions)": "-",
                               "heartbeat lag": "-", "verdict": "ok", "why": ""}
        if name in gathered.errors:
            row.update(verdict="bad", why=f"unreachable: {gathered.errors[name]}")
            rows.append(row)
            continue
        f = gathered.facts.get(name)
        if f is None:
            row.update(verdict="bad", why="no facts")
            rows.append(row)
            continue
        row["service"] = f["service"]["active"]
        lag = f["heartbeat"]["lag_seconds"]
        row["heartbeat lag"] = _duration(lag)
        problems = []
        if f["service"]["active"] != "active":
            problems.append(f"{d.service} is {f['service']['active']}")
        if not f["sql"]["answering"]:
            problems.append(f"the server does not answer ({f['sql']['error'][:160]})")
            row.update(verdict="bad", why="; ".join(problems))
            rows.append(row)
            continue
        variables = f["sql"]["variables"]
        st = f["replica"]
        if r == "primary":
            row["applied"] = str(d.executed_position(variables)) or "-"
            if st:
                problems.append(f"replicates from {st['source_host']}: not a primary")
            if variables.get("read_only") == "ON":
                problems.append("read-only: applications cannot write")
            if f["heartbeat"]["event"] != "ENABLED":
                problems.append(f"heartbeat event {f['heartbeat']['event'] or 'missing'}: replicas' lag cannot be measured (run 05-database)")
            elif lag is None or lag > 5:
                problems.append(f"heartbeat not written for {_duration(lag)}: is the event scheduler on?")
        else:
            want_delay = db.delay_seconds if r == "delayed replica" else 0
            if st is None:
                problems.append("not replicating (no replica configuration)")
            else:
                applied = str(d.applied_position(variables, st))
                primary = p.host(db.primary)
                row.update({"IO": st["io_running"], "SQL": st["sql_running"], "source": f"{st['source_host']}:{st['source_port']}",
                            "delay (configured)": _duration(st["sql_delay"]), "remaining delay": _duration(st["remaining_delay"]),
                            "applied": applied or "-"})
                if primary_pos:
                    row["behind (transactions)"] = d.behind(applied, primary_pos)
                if st["source_host"] != str(primary.address):
                    problems.append(f"replicates from {st['source_host']}, not the primary {db.primary} ({primary.address})")
                if st["io_running"] != "Yes":
                    problems.append(f"receiver {st['io_running']}" + (f": {st['io_error'][:200]}" if st["io_error"] else ""))
                if st["sql_running"] != "Yes":
                    problems.append("applier stopped" + (f": {st['sql_error'][:200]}" if st["sql_error"] else
                                                          (f" (UNTIL {st['until']})" if st["until"] not in ("", "None") else "")))
                if st["sql_delay"] != want_delay:
                    problems.append(f"delay {st['sql_delay']} s, the parameters say {want_delay} s")
            problems += _lag_problems(r, lag, want_delay, db.lag_alarm_seconds, f["heartbeat"]["newest"])
        row.update(verdict="bad" if problems else "ok", why="; ".join(problems))
        rows.append(row)
    return rows


def _lag_problems(r: str, lag: float | None, delay: int, alarm: float, newest: str) -> list[str]:
    if r == "replica":
        if lag is None:
            return ["no heartbeat applied yet"]
        return [f"applies {_duration(lag)} behind the primary (alarm at {alarm:g} s)"] if lag > alarm else []
    # no heartbeat yet (a fresh delayed replica), or one younger than the delay (just after a recovery or a longer
    # delay: the server holds every new transaction back for the configured delay, checked above): notes, not faults
    if lag is None or lag < delay - EARLY_TOLERANCE_SECONDS:
        return []
    if lag > delay + alarm:
        return [f"applies {_duration(lag)} behind: beyond its delay of {_duration(delay)} by more than {alarm:g} s"]
    return []


def problems(rows: Sequence[dict]) -> list[str]:
    """A problem per host whose verdict is bad, naming the host and what is wrong."""
    return [f"{r['host']} ({r['role']}): {r['why']}" for r in rows if r["verdict"] != "ok"]


def notes(p, rows: Sequence[dict], gathered: Gathered) -> list[str]:
    """What a reader should know that is not a fault (a delayed replica still waiting for its first heartbeat)."""
    out = []
    for r in rows:
        f = gathered.facts.get(r["host"])
        if r["role"] != "delayed replica" or not f or not f["sql"]["answering"]:
            continue
        lag, delay = f["heartbeat"]["lag_seconds"], p.database.delay_seconds
        if lag is None:
            out.append(f"{r['host']}: no heartbeat applied yet: it applies {_duration(delay)} late, so the first "
                       "heartbeat arrives that long after the primary wrote it")
        elif lag < delay - EARLY_TOLERANCE_SECONDS:
            out.append(f"{r['host']}: what it applied is {_duration(lag)} old, younger than its delay of {_duration(delay)} (after a "
                       "recovery or a longer delay): it holds every new transaction back until it is that old")
    return out


# -- lag over a window -------------------------------------------------------------------------

def sample_script(d: Dialect, seconds: int, every: float) -> str:
    """One command per host: every ``every`` seconds for ``seconds``, the local time and the heartbeat lag."""
    count = max(1, int(seconds / every))
    query = (f"SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), UTC_TIMESTAMP(6)) / 1000000 FROM {HEARTBEAT_TABLE}")
    return (f"for i in $(seq {count}); do t=$(date +%s.%N); v=$($SQL -N -e '{query}' 2>/dev/null | tail -1); "
            f"echo \"$t $v\"; sleep {every:g}; done")


def parse_samples(text: str) -> list[tuple[float, float | None]]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            t = float(parts[0])
        except ValueError:
            continue
        value = parts[1] if len(parts) > 1 else "NULL"
        out.append((t, None if value == "NULL" else float(value)))
    return out


def sample_lag(p, client, seconds: int = 20, every: float = 1.0) -> dict[str, Any]:
    """Sample every database host's heartbeat lag for ``seconds``, all hosts at once; samples and the hosts that failed."""
    hosts = [p.host(n) for n in p.database.roles()]
    script = sample_script(client.dialect, seconds, every)
    results = client.each(lambda h: client.shell(h, script, timeout=seconds + 60), hosts, desc="sample lag")
    start = None
    samples, failed = [], {}
    for name, r in results.items():
        if not r.ok:
            failed[name] = r.error
            continue
        for t, lag in parse_samples(r.stdout):
            samples.append({"host": name, "role": role(p, p.host(name)), "t": t, "lag": lag})
    if samples:
        start = min(s["t"] for s in samples)
        for s in samples:
            s["t"] = round(s["t"] - start, 2)
    return {"samples": samples, "failed": failed,
            "started": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(timespec="seconds") if start else None}


def lag_summary(p, sampled: dict) -> list[dict[str, Any]]:
    """Per host: samples, min, median, max lag; the delayed replica against its target."""
    rows = []
    for name, r in p.database.roles().items():
        values = sorted(s["lag"] for s in sampled["samples"] if s["host"] == name and s["lag"] is not None)
        target = p.database.delay_seconds if r == "delayed replica" else (0 if r == "replica" else None)
        row = {"host": name, "role": r, "samples": len(values), "min": _duration(values[0]) if values else "-",
               "median": _duration(values[len(values) // 2]) if values else "-", "max": _duration(values[-1]) if values else "-",
               "target": _duration(target) if target is not None else "-"}
        if name in sampled["failed"]:
            row["min"] = f"failed: {sampled['failed'][name][:120]}"
        rows.append(row)
    return rows


def lag_figure(p, sampled: dict):
    """Lag over the window: the primary and the real-time replica in seconds; the delayed replica against its target."""
    import matplotlib.pyplot as plt

    delayed = p.database.delayed_replica
    fig, axes = plt.subplots(1, 2 if delayed else 1, figsize=(11 if delayed else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    for name, r in p.database.roles().items():
        if r == "delayed replica":
            continue
        pts = [(s["t"], s["lag"]) for s in sampled["samples"] if s["host"] == name and s["lag"] is not None]
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], marker=".", label=f"{name} ({r})")
    ax.axhline(p.database.lag_alarm_seconds, color="tab:red", linestyle=":", label=f"alarm {p.database.lag_alarm_seconds:g} s")
    ax.set(title="Heartbeat lag: primary and real-time replica", xlabel="seconds into the window", ylabel="lag (s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    if delayed:
        ax = axes[0][1]
        delay = p.database.delay_seconds
        unit, scale = ("days", 86400) if delay >= 172_800 else (("h", 3600) if delay >= 7200 else ("s", 1))
        pts = [(s["t"], s["lag"]) for s in sampled["samples"] if s["host"] == delayed and s["lag"] is not None]
        if pts:
            ax.plot([t for t, _ in pts], [v / scale for _, v in pts], marker=".", color="tab:purple", label=f"{delayed} (delayed replica)")
        else:
            ax.text(0.5, 0.5, "no heartbeat applied yet\n(the first arrives one delay after setup)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.axhline(delay / scale, color="black", linestyle="--", label=f"target: the delay, {_duration(delay)}")
        ax.set(title="Delayed replica against its target", xlabel="seconds into the window", ylabel=f"lag ({unit})")
        ax.set_ylim(bottom=0, top=max([delay / scale * 1.25] + [v / scale * 1.1 for _, v in pts]))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def colour(rows: Sequence[dict], column: str = "verdict", good: str = "ok"):
    """The ``status`` of :meth:`runbooklib.notebook.Run.table`: the ``column`` cell green when it says ``good``, red otherwise."""
    return lambda i, col: ("ok" if rows[i][column] == good else "bad") if col == column else ""
