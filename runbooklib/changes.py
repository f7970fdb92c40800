"""Change records: approving a plan, following one change across runs, and the difference between two runs.

- :func:`approve` signs a plan run's digest with the approver's SSH key and archives the approval
  (``runbook approve``); the rules an apply checks it with are in :mod:`runbooklib.approvals`.
- :func:`timeline` lists every record of one change (``--change ID``, e.g. a ticket): plans, approvals,
  applies, retries, interactive sessions, in the archive's order (``runbook change show``).
- :func:`diff` compares two runs (``runbook diff``): the run itself, the parameters (redacted), the plan
  steps and the changes applied, host names mapped by role when the two runs are on different sites.
"""

from __future__ import annotations

import datetime as dt
import difflib
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import approvals as A
from .errors import ArchiveError

# -- approving -----------------------------------------------------------------------------------

def plan_recap(manifest: dict) -> list[str]:
    """What an approver reads before signing: the plan run, then each part's steps per host."""
    m = manifest
    lines = [f"plan run {m['run_id']}: {m['notebook']} on {m['environment']['name']} ({m['environment']['kind']}), "
             f"planned by {m.get('operator')} at {m.get('started_at')}",
             f"  parameters {m['params']['path']} (sha256 {m['params']['sha256'][:12]}), commit "
             f"{((m.get('git') or {}).get('commit') or 'none')[:12]}" + (" (dirty)" if (m.get("git") or {}).get("dirty") else ""),
             f"  plan digest {m.get('plan_digest')}"]
    for i, part in enumerate(m.get("plans") or [], 1):
        hosts = Counter(s["host"] for s in part["steps"])
        lines.append(f"  part {i}: {part['title']}: {part['count']} step(s) on {len(hosts)} host(s)")
        lines += [f"    {s['host']}: {s['operation']}: {s['change']}" for s in part["steps"][:200]]
        if part["count"] > 200:
            lines.append(f"    ... and {part['count'] - 200} more")
    return lines


def approve(archive, run: str, key: Path, params=None, change: str = "", now: dt.datetime | None = None) -> dict:
    """Sign plan run ``run`` with ``key`` and archive the approval; returns its manifest.

    ``params``: the environment's parameters as they are now (default: the plan's parameter file); the
    allowed-signers file named there decides who the approver is. Refused, with nothing archived, when
    the run is not a plan, the environment asks for no approvals, the parameters changed since the plan,
    or the key is not an allowed signer.
    """
    from .params import load_params
    from .runner import new_run_id

    plan = archive.manifest(run)
    where = f"run {plan.get('run_id')}"
    if plan.get("record") == A.RECORD:
        raise A.ApprovalError(f"{where} is an approval; approve the plan run it approves ({plan.get('approves')})")
    if plan.get("mode") != "plan" or plan.get("status") != "succeeded":
        raise A.ApprovalError(f"{where} is a {plan.get('mode')} run that {plan.get('status')}; only a plan run that "
                              "succeeded can be approved (run the runbook without --apply)")
    if (plan.get("git") or {}).get("dirty"):
        raise A.ApprovalError(f"{where} was planned from a checkout with uncommitted changes: the code that would run is not "
                              "the commit the record names. Commit them, plan again, and approve that plan")
    digest = A.manifest_plan_digest(plan)
    if not digest:
        raise A.ApprovalError(f"{where} planned no change (nothing to approve)")
    if digest != plan.get("plan_digest"):
        raise A.ApprovalError(f"{where}: its plan digest does not match its steps; the record was altered (`runbook verify`)")
    params = params or load_params(plan["params"]["path"])
    env = plan["environment"]["name"]
    if params.environment.name != env:
        raise A.ApprovalError(f"{params.source} describes environment {params.environment.name}, the plan was made for {env}")
    rules = params.environment.approvals
    if rules is None:
        raise A.ApprovalError(f"{params.source}: environment {env} requires no approvals (environment.approvals is not "
                              "set); nothing to sign")
    if params.sha256 != plan["params"]["sha256"]:
        raise A.ApprovalError(f"{params.source} changed since plan run {plan['run_id']} (sha256 {plan['params']['sha256'][:12]} "
                              f"then, {params.sha256[:12]} now): its approval could never match an apply; plan again")
    signers = params.path(rules.allowed_signers)
    problem = A.allowed_signers_problem(signers)
    if problem:
        raise A.ApprovalError(f"environment.approvals.allowed_signers: {problem}")
    message = A.signed_message(plan["run_id"], digest, plan["notebook"], env)
    signature = A.sign(message, key)
    names = A.principals(signature, signers)
    if not names:
        raise A.ApprovalError(f"the key {key} is not in the allowed signers of {env} ({signers}); nothing was archived. "
                              f"Whoever keeps that file adds a line: `<you@example.org> namespaces=\"{A.NAMESPACE}\" <your public key>`")
    approver = names[0]
    ok, why = A.verifies(message, signature, approver, signers)
    if not ok:
        raise A.ApprovalError(f"the signature by {approver} does not verify against {signers}: {why}")
    now = now or dt.datetime.now(dt.timezone.utc)
    approval_id = new_run_id(now)
    manifest = {
        "record": A.RECORD, "run_id": approval_id, "approves": plan["run_id"], "plan_digest": digest,
        "notebook": plan["notebook"], "environment": plan["environment"], "simulated": plan.get("simulated", False),
        "approver": approver, "operator": approver, "mode": "approval", "status": "approved",
        "change": change or plan.get("change") or "",
        "plan": {"operator": plan.get("operator"), "params_sha256": plan["params"]["sha256"],
                 "git_commit": (plan.get("git") or {}).get("commit"),
                 "parts": [{"title": p["title"], "steps": p["count"], "digest": p["digest"]} for p in plan["plans"]]},
        "signed_message": message.decode(), "namespace": A.NAMESPACE,
        "started_at": now.isoformat(timespec="milliseconds"), "ended_at": now.isoformat(timespec="milliseconds"),
        "duration_s": 0.0, "changes": [],
    }
    base = archive.record_base(env, now.strftime("%Y-%m-%d"), approval_id, plan["notebook"] + ".approval")
    mpath = archive.commit(manifest, {"signature": (base.with_name(base.name + ".sig"), signature)}, base=base)
    return json.loads(mpath.read_text())


# -- one change across runs ------------------------------------------------------------------------

def _manifests(archive):
    for entry in archive._ledger_entries():
        try:
            yield archive.read_manifest(entry)
        except (ArchiveError, ValueError):
            continue


def timeline(archive, change: str) -> list[dict]:
    """Every record of ``change``, in the archive's order: plans, approvals, applies and their retries."""
    if not change.strip():
        raise ArchiveError("give a change id (the --change a run was made with)")
    rows = []
    for m in _manifests(archive):
        if m.get("change") != change:
            continue
        if m.get("record") == A.RECORD:
            kind, what = "approval", f"approves plan {m['approves']} ({sum(p['steps'] for p in m['plan']['parts'])} steps)"
        else:
            kind = "apply" if m.get("mode") == "apply" else "plan"
            parts = m.get("plans") or []
            per_host = Counter(c.get("host", "?") for c in m.get("changes") or [])
            what = (f"{len(m.get('changes') or [])} change(s)" + (": " + ", ".join(f"{h} ({n})" for h, n in per_host.items()) if per_host else "")
                    if kind == "apply" else f"{sum(p['count'] for p in parts)} step(s) planned")
        rows.append({"seq": m.get("seq"), "at": m.get("started_at"), "record": kind + (" (interactive)" if m.get("interactive") else ""),
                     "run": m.get("run_id"), "runbook": m.get("notebook"), "environment": (m.get("environment") or {}).get("name"),
                     "who": m.get("approver") or m.get("operator"), "result": _result(m), "what": what})
    return rows


def _result(m: dict) -> str:
    if m.get("record") == A.RECORD:
        return "approved"
    verdict = (m.get("verdict") or {}).get("verdict")
    failure = m.get("failure") or {}
    text = m.get("status", "?") + (f", {verdict}" if verdict else "")
    return text + (f" ({failure.get('ename')}: {str(failure.get('evalue'))[:120]})" if failure else "")


# -- the difference between two runs -------------------------------------------------------------

@dataclass
class RunDiff:
    a: dict
    b: dict
    host_map: dict[str, str]  # a's host name -> b's, by role, where the sites differ
    run: list[tuple[str, str, str]] = field(default_factory=list)  # (field, a, b) that differ
    params: str = ""  # unified diff of the redacted parameter files
    steps_added: list[str] = field(default_factory=list)
    steps_removed: list[str] = field(default_factory=list)
    changes_added: list[str] = field(default_factory=list)
    changes_removed: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.run or self.params or self.steps_added or self.steps_removed or self.changes_added or self.changes_removed)


def _hosts_by_role(m: dict) -> list[tuple[str, tuple[str, ...]]]:
    try:
        data = yaml.safe_load((m.get("params") or {}).get("content_redacted") or "") or {}
        return [(h["name"], tuple(sorted(h.get("roles") or []))) for h in data["inventory"]["hosts"]]
    except (yaml.YAMLError, KeyError, TypeError):
        return []


def host_map(a: dict, b: dict) -> dict[str, str]:
    """``a``'s host names onto ``b``'s: the same name where both have it, else the n-th host of the same roles."""
    ha, hb = _hosts_by_role(a), _hosts_by_role(b)
    names_b = {n for n, _ in hb}
    out, taken = {}, set()
    for name, _ in ha:
        if name in names_b:
            out[name] = name
            taken.add(name)
    for name, roles in ha:
        if name in out:
            continue
        match = next((n for n, r in hb if r == roles and n not in taken), None)
        if match:
            out[name] = match
            taken.add(match)
    return out


def diff(a: dict, b: dict) -> RunDiff:
    """What differs between runs ``a`` and ``b`` (manifests), ``a``'s hosts named as ``b``'s."""
    mapping = host_map(a, b)
    d = RunDiff(a, b, {k: v for k, v in mapping.items() if k != v})
    for name, get in (("runbook", lambda m: m.get("notebook")), ("environment", lambda m: (m.get("environment") or {}).get("name")),
                      ("mode", lambda m: m.get("mode")), ("status", lambda m: m.get("status") or "?"),
                      ("verdict", lambda m: (m.get("verdict") or {}).get("verdict") or "-"),
                      ("operator", lambda m: m.get("operator") or "-"),
                      ("commit", lambda m: ((m.get("git") or {}).get("commit") or "-")[:12]),
                      ("parameters sha256", lambda m: (m.get("params") or {}).get("sha256", "")[:12])):
        va, vb = str(get(a)), str(get(b))
        if va != vb:
            d.run.append((name, va, vb))
    pa, pb = ((m.get("params") or {}).get("content_redacted", "") for m in (a, b))
    d.params = "".join(difflib.unified_diff(pa.splitlines(keepends=True), pb.splitlines(keepends=True),
                                            f"{a.get('run_id')}/parameters", f"{b.get('run_id')}/parameters"))

    def rows(m: dict, items, mapped: bool) -> Counter:
        return Counter(f"{mapping.get(i['host'], i['host']) if mapped else i['host']}: {i['operation']}: {i['change']}" for i in items)
    steps_a = rows(a, [s for p in a.get("plans") or [] for s in p["steps"]], True)
    steps_b = rows(b, [s for p in b.get("plans") or [] for s in p["steps"]], False)
    d.steps_added, d.steps_removed = sorted((steps_b - steps_a).elements()), sorted((steps_a - steps_b).elements())
    ch_a, ch_b = rows(a, a.get("changes") or [], True), rows(b, b.get("changes") or [], False)
    d.changes_added, d.changes_removed = sorted((ch_b - ch_a).elements()), sorted((ch_a - ch_b).elements())
    return d


def diff_text(d: RunDiff) -> str:
    """``runbook diff`` in a terminal: what differs, section by section; "no difference" said plainly."""
    a, b = d.a["run_id"], d.b["run_id"]
    lines = [f"diff {a} ({d.a.get('notebook')} on {(d.a.get('environment') or {}).get('name')}) -> "
             f"{b} ({d.b.get('notebook')} on {(d.b.get('environment') or {}).get('name')})"]
    if d.host_map:
        lines.append("  hosts mapped by role: " + ", ".join(f"{k} -> {v}" for k, v in d.host_map.items()))
    if d.same:
        lines.append("  no difference in the run, the parameters, the plan or the changes applied")
        return "\n".join(lines)
    if d.run:
        lines.append("run")
        lines += [f"  {name:<18} {va}  ->  {vb}" for name, va, vb in d.run]
    for title, added, removed in (("plan steps", d.steps_added, d.steps_removed),
                                  ("changes applied", d.changes_added, d.changes_removed)):
        if added or removed:
            lines.append(f"{title} (+ only in {b}, - only in {a})")
            lines += [f"  + {x}" for x in added] + [f"  - {x}" for x in removed]
    if d.params:
        lines.append("parameters (secrets redacted)")
        lines += ["  " + line for line in d.params.splitlines()]
    return "\n".join(lines)


def diff_html(d: RunDiff) -> str:
    """The same as a standalone HTML page (no script, no external resource)."""
    e = html.escape
    a, b = d.a["run_id"], d.b["run_id"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>runbook diff {e(a)} {e(b)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:.2em .6em;text-align:left}.add{background:#e6ffed}.del{background:#ffeef0}pre{background:#f6f8fa;padding:1em}</style>",
             f"</head><body><h1>{e(a)} &rarr; {e(b)}</h1>"]
    if d.host_map:
        parts.append("<p>Hosts mapped by role: " + e(", ".join(f"{k} -> {v}" for k, v in d.host_map.items())) + "</p>")
    if d.same:
        parts.append("<p>No difference in the run, the parameters, the plan or the changes applied.</p>")
    if d.run:
        parts.append("<h2>Run</h2><table><tr><th>field</th><th>" + e(a) + "</th><th>" + e(b) + "</th></tr>")
        parts += [f"<tr><td>{e(n)}</td><td>{e(va)}</td><td>{e(vb)}</td></tr>" for n, va, vb in d.run]
        parts.append("</table>")
    for title, added, removed in (("Plan steps", d.steps_added, d.steps_removed), ("Changes applied", d.changes_added, d.changes_removed)):
        if added or removed:
            parts.append(f"<h2>{title}</h2><ul>")
            parts += [f"<li class='add'>+ {e(x)}</li>" for x in added] + [f"<li class='del'>- {e(x)}</li>" for x in removed]
            parts.append("</ul>")
    if d.params:
        parts.append(f"<h2>Parameters (secrets redacted)</h2><pre>{e(d.params)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(d: RunDiff, path: Path) -> Path:
    path.write_text(diff_html(d))
    return path
