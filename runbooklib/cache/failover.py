"""The failover drill of the VM variant: promote the replica, re-point the old primary when it answers.

Planned from the same facts as 08, with the candidate as the primary. Nothing is restarted: the
candidate is promoted at run time (``REPLICAOF NO ONE``, it keeps every session it holds) and its
drop-in rewritten to say so (validated by redis-server, the previous kept), so that a restart later
keeps the new roles. The old primary, once it answers again, is rewritten as the candidate's
replica and re-pointed at run time (it drops its own, older sessions and takes the new primary's).
An old primary that does not answer is left alone and named: re-run the runbook when it is back,
before any application talks to it (its drop-in still says primary).
"""

from __future__ import annotations

from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, file_diff, operation
from .facts import DROPIN
from .operations import ShellStep, desired_config, validated_write


def candidate(p) -> str:
    fo = p.cache.failover
    return (fo.candidate if fo and fo.candidate else None) or p.cache.vms.replica


def old_primary(p) -> str:
    return p.cache.vms.primary


@operation("promoted", touches="the candidate's role at run time (`REPLICAOF NO ONE`) and its drop-in (as the primary)",
           undo="`REPLICAOF <old primary> <port>` on the candidate, its drop-in's `….runbook-prev` put back")
def promoted(p, h, f) -> list[Step]:
    if h.name != candidate(p):
        return []
    out: list[Step] = []
    info = f["replication"]["info"]
    if not f["replication"]["answering"]:
        return [Step(h.name, "promoted", "promote the replica", None,
                     blocked=f"{h.name} does not answer ({f['replication']['error'][:150]}); start it first: it holds the sessions")]
    want = desired_config(p, h, primary=h.name)
    if f["dropin"] != want:
        out.append(ShellStep(h.name, "promoted", f"rewrite {DROPIN} as the primary (no replicaof)", validated_write(DROPIN),
                             f"mv -f {DROPIN}.runbook-prev {DROPIN}", diff=file_diff(DROPIN, f["dropin"], want), files=(("dropin", want),)))
    if info.get("role") != "master":
        link = info.get("master_link_status", "?")
        out.append(Step(h.name, "promoted", f"REPLICAOF NO ONE: {h.name} becomes the primary (its link to the old primary is {link})",
                        '[ "$(rcli REPLICAOF NO ONE)" = OK ]', undo_note="re-point it with REPLICAOF <old primary> <port>"))
    return out


@operation("old primary re-pointed", touches="the old primary's drop-in (as a replica) and its primary at run time (`REPLICAOF`)",
           undo="`REPLICAOF NO ONE` on it, its drop-in's `….runbook-prev` put back")
def old_primary_repointed(p, h, f) -> list[Step]:
    if h.name == candidate(p) or (p.cache.failover and not p.cache.failover.repoint_old_primary):
        return []
    if not f["replication"]["answering"]:
        return []  # named by the runbook; re-run when it answers
    new = p.host(candidate(p))
    port = p.cache.vms.port
    out: list[Step] = []
    want = desired_config(p, h, primary=new.name)
    if f["dropin"] != want:
        out.append(ShellStep(h.name, "old primary re-pointed", f"rewrite {DROPIN} as the replica of {new.name}", validated_write(DROPIN),
                             f"mv -f {DROPIN}.runbook-prev {DROPIN}", diff=file_diff(DROPIN, f["dropin"], want), files=(("dropin", want),)))
    info = f["replication"]["info"]
    if info.get("role") != "slave" or (info.get("master_host"), info.get("master_port")) != (str(new.address), str(port)):
        out.append(Step(h.name, "old primary re-pointed", f"REPLICAOF {new.address} {port}: replicate from {new.name} "
                                                          "(its own sessions are replaced by the new primary's)",
                        f'[ "$(rcli REPLICAOF {new.address} {port})" = OK ]', "rcli REPLICAOF NO ONE"))
    return out


OPERATIONS: tuple[Operation, ...] = (promoted, old_primary_repointed)


def plan(p, facts, fact_errors=None) -> list[Step]:
    return phase_steps.plan(OPERATIONS, p, facts, fact_errors)


def client_instructions(p) -> list[dict]:
    """How applications are re-pointed: the client endpoint now names the new primary."""
    new = p.host(candidate(p))
    name, port = p.cache.client_endpoint.rsplit(":", 1)
    return [
        {"where": "DNS", "change": f"{name} -> {new.address} (A record; TTL low, 30 s, so that clients follow)"},
        {"where": "application settings", "change": f"or, where the apps name the host: session store = {new.address}:{port}"},
        {"where": "parameter file", "change": f"swap cache.vms.primary and cache.vms.replica ({new.name} is the primary now), "
                                              "remove cache.failover, re-run 08-session-cache: it plans nothing"},
    ]
