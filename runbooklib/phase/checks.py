"""Checks: rules judged on facts, one :class:`Check` per host and rule.

A :class:`Rule` says why it exists (shown in the runbook), which facts it reads, where it applies,
and which operations fix it. Judging yields a :class:`Status`: ``ok``, ``fail`` (with a reason that
says what to do), ``n/a`` where the rule does not apply, or ``unreachable`` when the host's facts
could not be read: never guessed.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .facts import Gathered


class Status(str, enum.Enum):
    OK = "ok"
    FAIL = "fail"
    NA = "n/a"
    UNREACHABLE = "unreachable"

    def __str__(self) -> str:
        return self.value


FAILING = (Status.FAIL, Status.UNREACHABLE)


@dataclass(frozen=True)
class Rule:
    """One readiness rule: ``check(params, host, facts) -> (ok, reason)``."""

    name: str
    why: str
    check: Callable[[Any, Any, dict], tuple[bool, str]]
    needs: tuple[str, ...] = ()  # the facts it reads: a fact that failed to parse makes it "cannot judge"
    applies: Callable[[Any, Any], bool] = lambda params, host: True
    scope: str = "all hosts"  # where it applies, for people
    fixed_by: tuple[str, ...] = ()  # names of the operations that make it pass


@dataclass(frozen=True)
class Check:
    """A rule judged on one host."""

    host: str
    rule: str
    status: Status
    reason: str = ""

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def row(self) -> dict:
        return {"host": self.host, "rule": self.rule, "status": str(self.status), "reason": self.reason}


def evaluate(rules: Sequence[Rule], params, gathered: Gathered) -> list[Check]:
    """Every rule on every host of ``params``, in inventory and rule order."""
    facts, errors = gathered.facts, gathered.errors
    fact_errors = gathered.fact_errors or {}
    out = []
    for host in params.hosts:
        f = facts.get(host.name)
        for rule in rules:
            if not rule.applies(params, host):
                out.append(Check(host.name, rule.name, Status.NA))
            elif f is None:
                out.append(Check(host.name, rule.name, Status.UNREACHABLE, errors.get(host.name, "no facts")))
            elif broken := [n for n in rule.needs if n in fact_errors.get(host.name, {})]:
                why = "; ".join(f"{n}: {fact_errors[host.name][n]}" for n in broken)
                out.append(Check(host.name, rule.name, Status.FAIL, f"cannot judge: {why}"))
            else:
                try:
                    ok, reason = rule.check(params, host, f)
                except Exception as e:  # a rule bug must not hide the others
                    ok, reason = False, f"cannot judge: {type(e).__name__}: {e}"
                out.append(Check(host.name, rule.name, Status.OK if ok else Status.FAIL, reason))
    return out


def failures(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.failing]


def fixed(before: Iterable[Check], after: Iterable[Check]) -> list[tuple[str, str]]:
    """(host, rule) pairs that failed before and pass now."""
    now = {(c.host, c.rule) for c in failures(after)}
    return sorted({(c.host, c.rule) for c in failures(before)} - now)


def unreachable(checks: Iterable[Check]) -> dict[str, str]:
    """Hosts whose facts could not be read, once each, with the reason."""
    out: dict[str, str] = {}
    for c in checks:
        if c.status is Status.UNREACHABLE:
            out.setdefault(c.host, c.reason)
    return out


def ready_hosts(checks: Sequence[Check]) -> list[str]:
    """Hosts on which no rule fails (and whose facts were read)."""
    hosts = list(dict.fromkeys(c.host for c in checks))
    bad = {c.host for c in failures(checks)}
    return [h for h in hosts if h not in bad]


def readiness_verdict(checks: Sequence[Check]) -> tuple[str, list[str]]:
    """``("ready", [])`` when every host passes every rule that applies, else ``("not ready", problems)``.

    One problem per host that is not ready, with why: unreachable hosts with their error, the others
    with their failing rules.
    """
    lost = unreachable(checks)
    problems = [f"{h}: unreachable: {e}" for h, e in lost.items()]
    for host in dict.fromkeys(c.host for c in checks):
        failed = [c.rule for c in checks if c.host == host and c.status is Status.FAIL]
        if host not in lost and failed:
            problems.append(f"{host}: not ready ({', '.join(failed)})")
    return ("not ready" if problems else "ready"), problems


def recap_by_host(checks: Sequence[Check]) -> list[dict]:
    """One line per host, Ansible-recap style: counts per status; an unreachable host is one line."""
    out = []
    for host in dict.fromkeys(c.host for c in checks):
        mine = [c for c in checks if c.host == host]
        counts = Counter(c.status for c in mine)
        if counts[Status.UNREACHABLE]:
            out.append({"host": host, "verdict": "unreachable", "ok": "", "failed": "", "n/a": "",
                        "first problem": next(c.reason for c in mine if c.status is Status.UNREACHABLE)})
            continue
        first = next((f"{c.rule}: {c.reason}" for c in mine if c.status is Status.FAIL), "")
        out.append({"host": host, "verdict": "ready" if not counts[Status.FAIL] else "not ready",
                    "ok": counts[Status.OK], "failed": counts[Status.FAIL], "n/a": counts[Status.NA],
                    "first problem": first})
    return out


def recap_by_rule(checks: Sequence[Check]) -> list[dict]:
    """One line per rule that fails somewhere: how many hosts, which, and the first reason."""
    out = []
    for rule in dict.fromkeys(c.rule for c in checks):
        bad = [c for c in checks if c.rule == rule and c.status is Status.FAIL]
        if bad:
            names = [c.host for c in bad]
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            out.append({"rule": rule, "hosts failing": len(bad), "hosts": shown, "first reason": bad[0].reason})
    return out


def matrix(checks: Sequence[Check]) -> tuple[list[str], list[str], dict[tuple[str, str], Status]]:
    hosts = list(dict.fromkeys(c.host for c in checks))
    rules = list(dict.fromkeys(c.rule for c in checks))
    return hosts, rules, {(c.host, c.rule): c.status for c in checks}


def matrix_rows(checks: Sequence[Check]) -> list[dict]:
    """host x rule, one row per host, for a table; an unreachable host is one cell, not one per rule."""
    hosts, rules, cells = matrix(checks)
    rows = []
    for h in hosts:
        if any(cells[(h, r)] is Status.UNREACHABLE for r in rules):
            rows.append({"host": h, **{r: ("unreachable" if i == 0 else "") for i, r in enumerate(rules)}})
        else:
            rows.append({"host": h, **{r: str(cells[(h, r)]) for r in rules}})
    return rows


COLOURS = {Status.OK: "#34a853", Status.FAIL: "#ea4335", Status.NA: "#dadce0", Status.UNREACHABLE: "#202124"}


def matrix_figure(checks: Sequence[Check], title: str = "Readiness"):
    """A host x rule grid with a legend for every state (ok, fail, n/a, unreachable)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    hosts, rules, cells = matrix(checks)
    order = list(Status)
    grid = [[order.index(cells[(h, r)]) for r in rules] for h in hosts]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(rules), 1.6 + 0.32 * len(hosts)))
    ax.imshow(grid, cmap=ListedColormap([COLOURS[s] for s in order]), vmin=0, vmax=len(order) - 1, aspect="auto")
    ax.set_xticks(range(len(rules)), rules, rotation=45, ha="right")
    ax.set_yticks(range(len(hosts)), hosts)
    ax.set_xticks([x - 0.5 for x in range(1, len(rules))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(hosts))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    failed = sum(1 for v in cells.values() if v is Status.FAIL)
    lost = len({h for (h, _), v in cells.items() if v is Status.UNREACHABLE})
    ax.set_title(f"{title}: {failed} failing checks" + (f", {lost} host(s) unreachable" if lost else ""))
    ax.legend(handles=[Patch(color=COLOURS[s], label=str(s)) for s in order], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
