"""Cordon and drain a node through the API, as ``kubectl drain`` does, with a list of what blocks it.

A drain marks the node unschedulable, then asks the API to *evict* every pod on it (the Eviction
API honours PodDisruptionBudgets; a plain delete would not), and waits until they are gone. What
``kubectl drain`` refuses by default is refused here too, and named, so that an engineer can decide:

- a pod no controller manages (nothing would recreate it);
- a pod with ``emptyDir`` data (it is lost with the pod), unless ``delete_emptydir_data``;
- a PodDisruptionBudget that allows no disruption now (the API answers 429; retried until the timeout).

DaemonSet pods and static (mirror) pods are left on the node, as ``--ignore-daemonsets`` does: their
controllers would put them back at once. Completed pods are deleted without ceremony.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIRROR = "kubernetes.io/config.mirror"


@dataclass
class DrainResult:
    node: str
    evicted: list[str] = field(default_factory=list)  # namespace/name
    blockers: list[dict] = field(default_factory=list)  # {pod, reason, fix}
    left: list[str] = field(default_factory=list)  # DaemonSet and mirror pods, left as kubectl leaves them
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.blockers


def _core(api):
    from kubernetes import client

    return client.CoreV1Api(api)


def cordon(api, node: str, unschedulable: bool = True) -> bool:
    """Mark the node (un)schedulable; True if that changed anything."""
    v1 = _core(api)
    if bool(v1.read_node(node).spec.unschedulable) == unschedulable:
        return False
    v1.patch_node(node, {"spec": {"unschedulable": unschedulable or None}})
    return True


def uncordon(api, node: str) -> bool:
    return cordon(api, node, unschedulable=False)


def pods_on(api, node: str) -> list:
    return _core(api).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items


def _controller(pod):
    return next((o for o in pod.metadata.owner_references or [] if o.controller), None)


def classify(pod, delete_emptydir_data: bool = False) -> tuple[str, str, str]:
    """What a drain does with one pod: ``("evict" | "leave" | "block", reason, fix)``."""
    meta, spec = pod.metadata, pod.spec
    name = f"{meta.namespace}/{meta.name}"
    if MIRROR in (meta.annotations or {}):
        return "leave", "a static pod (the kubelet runs it from a file)", ""
    owner = _controller(pod)
    if owner is not None and owner.kind == "DaemonSet":
        return "leave", f"managed by DaemonSet {owner.name}", ""
    if pod.status and pod.status.phase in ("Succeeded", "Failed"):
        return "evict", f"finished ({pod.status.phase})", ""
    if owner is None:
        return "block", "no controller manages it: nothing would recreate it elsewhere", \
            f"recreate it under a Deployment, or delete it yourself (`kubectl delete pod -n {meta.namespace} {meta.name}`) and run again"
    local = [v.name for v in spec.volumes or [] if v.empty_dir is not None]
    if local and not delete_emptydir_data:
        return "block", f"emptyDir volume(s) {', '.join(local)}: their data is lost with the pod", \
            f"if that data may be lost, set kubernetes.drain_delete_emptydir_data: true; else move {name}'s data first"
    return "evict", f"managed by {owner.kind} {owner.name}", ""


def preview(api, node: str, delete_emptydir_data: bool = False) -> list[dict]:
    """What a drain of ``node`` would do with each of its pods now: ``{node, pod, action, reason, fix}``."""
    rows = []
    for pod in pods_on(api, node):
        action, reason, fix = classify(pod, delete_emptydir_data)
        rows.append({"node": node, "pod": f"{pod.metadata.namespace}/{pod.metadata.name}", "action": action, "reason": reason, "fix": fix})
    return rows


def blockers(api, node: str, delete_emptydir_data: bool = False) -> list[dict]:
    """What would stop a drain of ``node`` now (PodDisruptionBudgets show only when evicting)."""
    return [{"pod": r["pod"], "reason": r["reason"], "fix": r["fix"]} for r in preview(api, node, delete_emptydir_data) if r["action"] == "block"]


def drain(api, node: str, timeout: float, on_line: Callable[[str], object] | None = None,
          delete_emptydir_data: bool = False, poll: float = 1.0) -> DrainResult:
    """Cordon ``node`` and evict its pods; stop at ``timeout`` seconds with the pods still there as blockers.

    A node with blocking pods is cordoned but nothing is evicted: half a drain helps no one.
    """
    from kubernetes import client

    say = on_line or (lambda _line: None)
    started = time.monotonic()
    result = DrainResult(node)
    if cordon(api, node):
        say(f"{node}: cordoned")
    v1 = _core(api)
    pods = pods_on(api, node)
    plan = {f"{p.metadata.namespace}/{p.metadata.name}": (p, *classify(p, delete_emptydir_data)) for p in pods}
    result.left = sorted(k for k, (_, action, *_rest) in plan.items() if action == "leave")
    result.blockers = [{"pod": k, "reason": r, "fix": f} for k, (_, action, r, f) in plan.items() if action == "block"]
    if result.blockers:
        say(f"{node}: not drained, {len(result.blockers)} pod(s) block it")
        result.seconds = time.monotonic() - started
        return result
    pending = {k: p for k, (p, action, *_rest) in plan.items() if action == "evict"}
    refused: dict[str, str] = {}
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        for key, pod in list(pending.items()):
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace))
            try:
                v1.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
            except client.ApiException as e:
                if e.status == 404:  # already gone
                    pass
                elif e.status == 429:  # a PodDisruptionBudget allows no disruption now: retry until the deadline
                    refused[key] = _message(e)
                    continue
                else:
                    raise
            refused.pop(key, None)
            result.evicted.append(key)
            del pending[key]
            say(f"{node}: evicted {key}")
        if pending:
            time.sleep(poll)
    remaining = _wait_gone(api, node, set(result.evicted), deadline, poll)
    result.blockers = (
        [{"pod": k, "reason": f"eviction refused: {refused.get(k, 'no answer before the timeout')}",
          "fix": "a PodDisruptionBudget allows no disruption now: scale the workload up or wait, then run again"} for k in pending]
        + [{"pod": k, "reason": f"evicted but still on the node after {timeout:.0f} s",
            "fix": "check its terminationGracePeriodSeconds and finalizers; raise kubernetes.drain_timeout_seconds"} for k in remaining])
    result.seconds = time.monotonic() - started
    say(f"{node}: drained in {result.seconds:.1f} s" if result.ok else f"{node}: drain incomplete, {len(result.blockers)} pod(s) remain")
    return result


def _wait_gone(api, node: str, evicted: set[str], deadline: float, poll: float) -> list[str]:
    """Evicted pods that are still on the node at the deadline (a pod goes after its grace period)."""
    while True:
        left = sorted(k for k in (f"{p.metadata.namespace}/{p.metadata.name}" for p in pods_on(api, node)) if k in evicted)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll)


def _message(e) -> str:
    import json

    try:
        return json.loads(e.body).get("message", "")[:200] or str(e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)
