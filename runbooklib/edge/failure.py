"""incident/edge-node-failure: one edge node down, the other serving, what clients see, the options, the way back.

In a drill the runbook stops nginx on the node itself (``systemctl stop nginx``, a confirmed step
with its undo); in an incident the node is already down and the runbook only observes it. Either
way the way back is a confirmed step too: ``systemctl start nginx`` with the same check as runbook
09 (the node answers its configuration on port 80 and accepts on its TLS port), or, when the node
itself does not answer SSH, a blocked step saying to power it on first.
"""

from __future__ import annotations

from ..phase.steps import Step
from ..ssh import HostResult
from .dns import records, zone_snippet
from .operations import answer_check
from .render import render

OPERATION_DOWN = "edge node failed (drill)"
OPERATION_BACK = "edge node back"


def node_state(p, fleet, node: str) -> dict:
    """What the node says over SSH: nginx active or not; ``reachable`` False when SSH does not answer."""
    r: HostResult = fleet.run("systemctl is-active nginx", hosts=[p.host(node)], desc=f"{node}: nginx").get(node)
    if r is None or r.exit_code is None:
        return {"node": node, "reachable": False, "nginx": "unknown", "detail": r.error if r else "no answer"}
    return {"node": node, "reachable": True, "nginx": r.stdout.strip() or "unknown", "detail": ""}


def down_steps(p, state: dict) -> list[Step]:
    """The drill's failure: stop nginx on the node (nothing when it is already stopped)."""
    node = state["node"]
    if not state["reachable"] or state["nginx"] != "active":
        return []
    return [Step(node, OPERATION_DOWN, f"stop nginx on {node}: from now on its address ({p.host(node).address}) refuses "
                                       "HTTP and TLS, as a failed edge node would", "systemctl stop nginx", "systemctl start nginx")]


def back_steps(p, state: dict) -> list[Step]:
    """Bring the node back: start nginx and check it answers; a node without SSH is a blocked step."""
    node = state["node"]
    if not state["reachable"]:
        return [Step(node, OPERATION_BACK, f"bring {node} back", None,
                     blocked=f"{node} does not answer SSH ({state['detail']}): power the VM on (or repair it), then re-run "
                             "this runbook to start nginx and verify both edge nodes")]
    if state["nginx"] == "active":
        return []
    config_id = render(p).config_id
    wait = f"for i in $(seq 20); do if {answer_check(p, config_id)}; then exit 0; fi; sleep 0.5; done"
    return [Step(node, OPERATION_BACK, f"start nginx on {node} and check it answers configuration {config_id} on its ports",
                 f"systemctl start nginx && {wait}; echo 'nginx started but {node} does not answer its configuration "
                 f"{config_id}: run 09-edge-load-balancing' >&2; exit 1", "systemctl stop nginx")]


def client_rows(p, node: str, during_rows: list[dict]) -> list[dict]:
    """What a client holding the round-robin record sees until the TTL expires, measured during the failure."""
    ttl = records(p)[0].ttl if records(p) else 0
    out = []
    for r in during_rows:
        if r["edge"] == "all":
            continue
        dead = r["edge"] == node
        out.append({"address of": r["edge"], "new connections": r["requests"], "failed": r["errors"],
                    "share failed": f"{r['error %']} %",
                    "what a client sees": (f"refused or timed out for up to {ttl} s (the TTL) after the record changes; a client "
                                           "that tries the next address (browsers, most HTTP libraries) recovers at once, "
                                           "one that does not shows an error") if dead else "served as before"})
    return out


def option_rows(p, node: str) -> list[dict]:
    """The three ways out, with what each costs."""
    ttl = records(p)[0].ttl if records(p) else 0
    return [
        {"option": "remove the record", "how": f"take {node}'s A records out of the zone (the snippet below), reload the DNS",
         "clients": f"new lookups stop getting {node} at once; cached answers keep it for up to {ttl} s (the TTL)",
         "when": "the node stays down longer than the TTL"},
        {"option": "wait", "how": "leave DNS as it is while the node is repaired",
         "clients": "about half the new connections of clients that do not retry fail, for as long as the node is down",
         "when": f"the node is back within minutes, or the TTL ({ttl} s) is long compared with the repair"},
        {"option": "bring the node back", "how": f"start nginx on {node} (the next step of this runbook), or power the VM on",
         "clients": "every address serves again; nothing to undo in DNS",
         "when": "always, once the cause is known; then put any removed record back"},
    ]


def zone_without(p, node: str) -> str:
    return zone_snippet(p, without=(node,))


def apply_steps(fleet, steps, on_change=None):
    """Run the drill's steps (one node), recorded as they succeed."""
    from ..phase import steps as phase_steps

    return phase_steps.apply(fleet, steps, on_change=on_change, desc="edge failure")
