"""Signed approvals: a second engineer signs the plan a production apply will carry out.

How it fits together:

- Every ``run.confirm(steps, ...)`` of a run is a *plan part*: its title, the digest of its steps (host,
  operation, change, command, undo, diff: what would run, exactly) and the steps as people read them.
  A run's *plan digest* binds its parts to the runbook, the environment, the parameter file's sha256
  and the runbook's git commit (:func:`plan_digest`). Both go into the run's manifest.
- ``runbook approve RUN`` signs a plan run's digest with the approver's own SSH key
  (``ssh-keygen -Y sign`` in the :data:`NAMESPACE` namespace) and archives the signature as a record of
  its own, in the same hash chain. The signer is who the environment's allowed-signers file says owns
  the key (``ssh-keygen -Y find-principals``): nobody names themselves.
- An apply in an environment with ``environment.approvals`` reads the approvals of that runbook's plans,
  verifies each signature against the allowed signers as they are *now* (a signer removed from the file
  no longer counts), and lets a confirmation run only when its steps are the approved plan's part of the
  same place, with the same parameters and commit, approved by enough distinct signers other than the
  operator. Otherwise it stops before anything runs and says what is missing or what changed.
- An approval is good for one change: a failed apply may be retried under it, and once an apply that
  carried it out succeeds (its manifest names it in ``approved_plans``), the plan is spent.

Steps whose content changes from one plan to the next (a time stamp in a file name) cannot be approved
ahead: such a runbook is applied in an environment without required approvals, or planned and approved
again right before the apply.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunbookError

BAD_VERDICTS = ("not ready", "incomplete", "not compliant")  # as runbooklib.notebook says (not imported: it pulls the display stack)

NAMESPACE = "runbooklib-plan-approval@v1"  # signatures made for another purpose never verify here
RECORD = "plan approval"


class ApprovalError(RunbookError):
    """An apply refused for want of approvals, or an approval that cannot be made (nothing archived: exit 2)."""

    exit_code = 2


# -- plans ---------------------------------------------------------------------------------------

def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plan_part(title: str, steps: Sequence[Any], scrub=lambda s: s) -> dict:
    """One confirmation's plan: its title, the digest of exactly what would run, the steps as people read them.

    The digest covers each step's host, operation, change, command, undo and diff (secrets are placeholders
    in commands, filled only when a step runs); ``scrub`` hides secret values in what is shown.
    """
    material = [{"host": s.host, "operation": s.operation, "change": s.change, "command": s.command,
                 "undo": s.undo, "blocked": s.blocked, "diff": s.diff} for s in steps]
    return {"title": title, "digest": hashlib.sha256(_canonical(material)).hexdigest(), "count": len(steps),
            "steps": [{"host": s.host, "operation": scrub(s.operation), "change": scrub(s.change)} for s in steps]}


def plan_digest(notebook: str, environment: str, params_sha256: str, git_commit: str | None, parts: Sequence[dict]) -> str:
    """What an approval signs: the parts' digests, in order, bound to the runbook, environment, parameters and commit."""
    return hashlib.sha256(_canonical({"notebook": notebook, "environment": environment, "params_sha256": params_sha256,
                                      "git_commit": git_commit, "parts": [p["digest"] for p in parts]})).hexdigest()


def manifest_plan_digest(manifest: dict) -> str | None:
    """The plan digest recomputed from a run's manifest (None when it planned nothing)."""
    parts = manifest.get("plans") or []
    if not parts:
        return None
    return plan_digest(manifest["notebook"], manifest["environment"]["name"], manifest["params"]["sha256"],
                       (manifest.get("git") or {}).get("commit"), parts)


def signed_message(plan_run: str, digest: str, notebook: str, environment: str) -> bytes:
    """The exact bytes an approver signs."""
    return _canonical({"approves": plan_run, "plan_digest": digest, "notebook": notebook, "environment": environment,
                       "namespace": NAMESPACE}) + b"\n"


# -- ssh-keygen ----------------------------------------------------------------------------------

def _keygen(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ApprovalError("ssh-keygen is not installed (Debian: openssh-client); approvals are signed and verified with it") from None


def sign(message: bytes, key: Path) -> bytes:
    """``ssh-keygen -Y sign`` with ``key`` (a private key, or a public key whose private half is in ssh-agent)."""
    if not key.exists():
        raise ApprovalError(f"{key}: no such key; pass --key with your own SSH private key (or its .pub, with the key in ssh-agent)")
    with tempfile.TemporaryDirectory(prefix="runbook-approve-") as d:
        msg = Path(d) / "plan"
        msg.write_bytes(message)
        r = _keygen("-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(msg))
        sig = Path(str(msg) + ".sig")
        if r.returncode != 0 or not sig.exists():
            raise ApprovalError(f"ssh-keygen could not sign with {key}: {r.stderr.decode(errors='replace').strip()[-300:]}")
        return sig.read_bytes()


def principals(signature: bytes, allowed_signers: Path) -> list[str]:
    """Who the allowed-signers file says made ``signature`` (empty when the key is not listed)."""
    with tempfile.TemporaryDirectory(prefix="runbook-verify-") as d:
        sig = Path(d) / "plan.sig"
        sig.write_bytes(signature)
        r = _keygen("-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers), "-n", NAMESPACE)
    return r.stdout.decode().split() if r.returncode == 0 else []


def verifies(message: bytes, signature: bytes, principal: str, allowed_signers: Path) -> tuple[bool, str]:
    """``ssh-keygen -Y verify``: whether ``principal``'s listed key made ``signature`` over exactly ``message``."""
    with tempfile.TemporaryDirectory(prefix="runbook-verify-") as d:
        sig = Path(d) / "plan.sig"
        sig.write_bytes(signature)
        r = _keygen("-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE, "-s", str(sig), stdin=message)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace").strip()[-300:]


def operator_message(run_id: str) -> bytes:
    """What an operator signs to say who applies run ``run_id`` (never an approval's message: no plan digest)."""
    return _canonical({"operator_of": run_id, "namespace": NAMESPACE}) + b"\n"


def prove_operator(key: Path, allowed_signers: Path, run_id: str) -> str:
    """The operator of an apply, by their own key: the principal the allowed-signers file gives it.

    Approvals are counted against this name, so nobody counts their own approval by calling themselves
    something else (``--operator`` is free text; a key is not).
    """
    message = operator_message(run_id)
    signature = sign(message, key)
    names = principals(signature, allowed_signers)
    if not names:
        raise ApprovalError(f"the operator's key {key} is not in the allowed signers ({allowed_signers}): an apply where "
                            "approvals are required is made by an allowed signer, identified by their key (--key, or "
                            "$RUNBOOK_SIGNING_KEY). Nothing was run")
    ok, why = verifies(message, signature, names[0], allowed_signers)
    if not ok:
        raise ApprovalError(f"the operator's signature does not verify against {allowed_signers}: {why}. Nothing was run")
    return names[0]


def allowed_signers_problem(path: Path) -> str | None:
    """What is wrong with an allowed-signers file, or None."""
    try:
        text = path.read_text()
    except OSError as e:
        return f"cannot read the allowed-signers file {path}: {e.strerror or e}"
    entries = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        return f"{path} lists no signer; one line per approver: `name@example.org namespaces=\"{NAMESPACE}\" ssh-ed25519 AAAA...`"
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#") and not any(k in line for k in ("ssh-", "ecdsa-", "sk-")):
            return f"{path}:{n}: not an allowed-signers line (principal, optional options, then a public key)"
    return None


# -- approvals as the archive holds them ------------------------------------------------------------

@dataclass
class Granted:
    """One plan run and the approvals of it that verify now."""

    plan_run: str
    plan_digest: str
    parts: list[dict]
    params_sha256: str
    git_commit: str | None
    operator: str
    approvers: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # approvals that do not verify, each with why

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def approval_records(archive, notebook: str, environment: str) -> list[dict]:
    """Every approval of ``notebook``'s plans in ``environment``, and every apply that succeeded carrying out
    an approved plan (its ``approved_plans``), oldest first."""
    out = []
    for entry in archive._ledger_entries():
        try:
            m = archive.read_manifest(entry)
        except (RunbookError, ValueError):
            continue
        if m.get("notebook") != notebook or (m.get("environment") or {}).get("name") != environment:
            continue
        if m.get("record") == RECORD or (m.get("approved_plans") and m.get("status") == "succeeded"
                                         and (m.get("verdict") or {}).get("verdict") not in (*BAD_VERDICTS, "failed")):
            signature = None
            if m.get("record") == RECORD:  # read where the archive keeps it (a folder or a bucket)
                try:
                    signature = archive.read_bytes(((m.get("files") or {}).get("signature") or {})["path"])
                except (KeyError, RunbookError):
                    pass
            out.append(m | {"_signature": signature})
    return out


def granted(archive, params, notebook: str) -> list[Granted]:
    """The plans of ``notebook`` in this environment that have approvals, each with the approvers whose
    signature verifies now against ``environment.approvals.allowed_signers``; newest plan first."""
    rules = params.environment.approvals
    signers = params.path(rules.allowed_signers)
    by_plan: dict[str, Granted] = {}
    records = approval_records(archive, notebook, params.environment.name)
    used = set().union(*(m["approved_plans"] for m in records if m.get("record") != RECORD)) if records else set()
    for a in records:
        if a.get("record") != RECORD:
            continue
        plan_id = a["approves"]
        if plan_id in used:
            continue  # carried out by an apply that succeeded: an approval is good for one change
        g = by_plan.get(plan_id)
        if g is None:
            try:
                plan = archive.manifest(plan_id)
            except RunbookError as e:
                by_plan[plan_id] = Granted(plan_id, "", [], "", None, "", refused=[f"approval {a['run_id']}: its plan run is "
                                                                                    f"not in the archive ({e})"])
                continue
            digest = manifest_plan_digest(plan) or ""
            g = by_plan[plan_id] = Granted(plan_id, digest, plan.get("plans") or [], plan["params"]["sha256"],
                                           (plan.get("git") or {}).get("commit"), plan.get("operator", ""))
        problem = _approval_problem(a, g, signers)
        if problem:
            g.refused.append(f"approval {a['run_id']} by {a.get('approver', '?')}: {problem}")
        elif a["approver"] not in g.approvers:
            g.approvers.append(a["approver"])
    return sorted(by_plan.values(), key=lambda g: g.plan_run, reverse=True)


def _approval_problem(a: dict, g: Granted, signers: Path) -> str | None:
    if not g.plan_digest or a.get("plan_digest") != g.plan_digest:
        return "it signs a different plan than the plan run's record holds (the record or the approval was altered)"
    signature = a.get("_signature")
    if signature is None:
        return "its signature file is missing"
    message = signed_message(g.plan_run, g.plan_digest, a["notebook"], a["environment"]["name"])
    ok, why = verifies(message, signature, a["approver"], signers)
    return None if ok else f"the signature does not verify against {signers} ({why})"


# -- the gate an apply passes ---------------------------------------------------------------------

def gate(required: int, plans: Sequence[dict], operator: str, index: int, part: dict, params_sha256: str,
         git_commit: str | None, environment: str, notebook: str, git_dirty: bool = False) -> tuple[str | None, str | None]:
    """``(the approved plan run this confirmation carries out, None)``, or ``(None, why it may not run)``.

    ``plans``: :class:`Granted` as dicts, newest first. A plan counts when its part ``index`` has the
    same digest, its parameters and commit are the ones in use, and at least ``required`` distinct
    approvers other than ``operator`` signed it.
    """
    def others(g: dict) -> list[str]:
        return [a for a in g["approvers"] if a != operator]

    if git_dirty:  # the code that runs is not the commit the approval names
        return None, (f"{environment} requires approvals, and the runbooks' checkout here has uncommitted changes: what would "
                      "run is not the commit an approval names. Nothing was changed. Commit (or stash) them, plan again and "
                      "have that plan approved")
    for g in plans:
        if (len(g["parts"]) > index and g["parts"][index]["digest"] == part["digest"] and g["params_sha256"] == params_sha256
                and g["git_commit"] == git_commit and len(others(g)) >= required):
            return g["plan_run"], None
    return None, _refusal(required, plans, operator, index, part, params_sha256, git_commit, environment, notebook, others)


def _refusal(required, plans, operator, index, part, params_sha256, git_commit, environment, notebook, others) -> str:
    head = f"{environment} requires {required} approval(s) by someone other than the operator ({operator}) before an apply: "
    how = (f"plan it (`runbook run notebooks/{notebook}.ipynb --params ...` without --apply), have it approved "
           f"(`runbook approve <plan run id> --key <approver's key>`), then apply")
    if not plans:
        return head + f"no plan of {notebook} in {environment} is approved. Nothing was changed. To go on: {how}."
    g = plans[0]
    if len(others(g)) < required:
        own = " (the operator's own approval does not count)" if operator in g["approvers"] else ""
        have = ", ".join(g["approvers"]) or "nobody"
        refused = ("; " + "; ".join(g["refused"][:3])) if g["refused"] else ""
        return (head + f"the newest approved plan, run {g['plan_run']}, is approved by {have}{own}: {len(others(g))} of "
                f"{required}{refused}. Nothing was changed.")
    changed = []
    if g["params_sha256"] != params_sha256:
        changed.append(f"the parameter file changed (sha256 {g['params_sha256'][:12]} when planned, {params_sha256[:12]} now)")
    if g["git_commit"] != git_commit:
        changed.append(f"the runbooks' commit changed ({(g['git_commit'] or 'none')[:12]} when planned, {(git_commit or 'none')[:12]} now)")
    if len(g["parts"]) <= index:
        changed.append(f"the approved plan has {len(g['parts'])} part(s); this is part {index + 1} ({part['title']})")
    elif g["parts"][index]["digest"] != part["digest"]:
        changed.append(f"the plan of {part['title']!r} differs from the approved one: " + step_difference(g["parts"][index], part))
    return (head + f"this plan is not the one approved in run {g['plan_run']}: " + "; ".join(changed)
            + ". Nothing was changed. Plan again and have the new plan approved.")


def step_difference(before: dict, after: dict) -> str:
    """The steps added and removed between two plan parts, as people read them."""
    key = lambda s: (s["host"], s["operation"], s["change"])  # noqa: E731
    old, new = {key(s) for s in before["steps"]}, {key(s) for s in after["steps"]}
    added = [f"+ {h}: {op}: {c}" for h, op, c in sorted(new - old)]
    removed = [f"- {h}: {op}: {c}" for h, op, c in sorted(old - new)]
    lines = added + removed
    if not lines:
        return "the same steps, with different commands or file contents (facts changed on a host since)"
    return "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
