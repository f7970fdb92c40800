"""Signed approvals, change records and run diffs, end to end through the real command line.

Real ``ssh-keygen`` with keys made here; a small runbook whose one step's change comes from a file the
test controls (a fact that can drift); a real papermill run for every plan and apply.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import make_notebook, resolvable_lab_data, runbook, set_path, write_params
from runbooklib import approvals

RUNBOOK = (
    "import runbooklib\nfrom pathlib import Path\nfrom runbooklib.phase.steps import Step\n"
    "run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
    "want = Path(params_file).with_name('fact.txt').read_text().strip()\n"
    "steps = [Step('cp1', 'motd', f'write /etc/motd: {want}', 'true'), Step('w1', 'motd', 'write /etc/motd: same', 'true')]\n"
    "outcome = run.confirm(steps, lambda: [run.record(s) for s in steps], title='motd')\n"
    "run.finish([], verdict={'applied': 'applied', 'planned': 'planned'}.get(outcome.status, outcome.status))",
)


def keypair(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A parameter file requiring one approval, three engineers' keys (two allowed), a runbook, an archive."""
    d = tmp_path_factory.mktemp("approvals")
    keys = {name: keypair(d, name) for name in ("alice", "bob", "carol", "mallory")}
    signers = d / "allowed_signers"
    signers.write_text("".join(f'{n}@example.org namespaces="{approvals.NAMESPACE}" {keys[n].with_suffix(".pub").read_text()}'
                               for n in ("alice", "bob", "carol")))
    data = resolvable_lab_data(d)
    set_path(data, "environment.approvals", {"required": 1, "allowed_signers": "allowed_signers"})
    params = write_params(d, data)
    (d / "fact.txt").write_text("hello\n")
    nb = make_notebook(d / "20-motd.ipynb", *RUNBOOK)
    return {"dir": d, "keys": keys, "params": params, "nb": nb, "archive": d / "archive"}


def run(site, *extra, operator="alice@example.org", change="CHG-1"):
    """A run by ``operator``, identified by their own key (``--operator`` alone names nobody where approvals are required)."""
    key = site["keys"][operator.split("@")[0]]
    return runbook("--archive", str(site["archive"]), "run", str(site["nb"]), "--params", str(site["params"]),
                   "--operator", operator, "--key", str(key), "--change", change, *extra)


def approve(site, run_id, who, *extra):
    return runbook("--archive", str(site["archive"]), "approve", run_id, "--key", str(site["keys"][who]), *extra)


def run_id(out: str) -> str:
    return out.split("run ", 1)[1].split()[0]


def test_apply_is_refused_until_someone_else_signs_the_plan_then_it_applies(site):
    refused = run(site, "--apply")
    assert refused.returncode != 0 and "requires 1 approval(s)" in refused.stdout + refused.stderr
    assert "no plan of 20-motd in lab is approved. Nothing was changed" in refused.stdout + refused.stderr
    assert "changed: cp1" not in refused.stdout + refused.stderr

    plan = run(site)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "requires 1 approval(s) of this plan first: `runbook approve" in plan.stderr
    plan_id = run_id(plan.stdout)

    own = approve(site, plan_id, "alice")  # the operator's own approval
    assert own.returncode == 0, own.stderr
    assert "approved by alice@example.org" in own.stdout and "part 1: motd: 2 step(s)" in own.stdout
    still = run(site, "--apply")
    assert still.returncode != 0 and "approved by alice@example.org (the operator's own approval does not count): 0 of 1" in still.stdout + still.stderr

    bob = approve(site, plan_id, "bob")
    assert bob.returncode == 0, bob.stderr
    applied = run(site, "--apply")
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert f"Approved plan part 1 (motd): plan run {plan_id}, approved by alice@example.org, bob@example.org: applying." in applied.stderr
    assert "2 change(s) applied" in applied.stdout
    again = run(site, "--apply")  # the approval was spent by the apply that succeeded
    assert again.returncode != 0 and "no plan of 20-motd in lab is approved" in again.stdout + again.stderr

    verify = runbook("--archive", str(site["archive"]), "verify")
    assert verify.returncode == 0, verify.stdout  # approvals are records in the same chain


def test_the_operator_is_who_their_key_says_not_who_they_claim(site):
    (site["dir"] / "fact.txt").write_text("self-approval\n")  # a plan no other test approved
    try:
        plan_id = run_id(run(site).stdout)
        assert approve(site, plan_id, "alice").returncode == 0
        # alice calls herself carol: her key still names her, and her own approval does not count
        claimed = runbook("--archive", str(site["archive"]), "run", str(site["nb"]), "--params", str(site["params"]),
                          "--operator", "carol@example.org", "--key", str(site["keys"]["alice"]), "--apply")
        said = claimed.stdout + claimed.stderr
        assert claimed.returncode == 1 and "someone other than the operator (alice@example.org)" in said
        assert "the operator's own approval does not count" in said and "changed: cp1" not in said
        # a key that is no allowed signer applies nothing at all
        ledger = (site["archive"] / "ledger.jsonl").read_text()
        stranger = runbook("--archive", str(site["archive"]), "run", str(site["nb"]), "--params", str(site["params"]),
                           "--key", str(site["keys"]["mallory"]), "--apply")
        assert stranger.returncode == 2 and "the operator's key" in stranger.stderr and "is not in the allowed signers" in stranger.stderr
        assert (site["archive"] / "ledger.jsonl").read_text() == ledger
    finally:
        (site["dir"] / "fact.txt").write_text("hello\n")


def test_a_key_not_allowed_cannot_approve_and_nothing_is_archived(site):
    plan_id = run_id(run(site).stdout)
    ledger = (site["archive"] / "ledger.jsonl").read_text()
    m = approve(site, plan_id, "mallory")
    assert m.returncode == 2 and "is not in the allowed signers of lab" in m.stderr
    assert (site["archive"] / "ledger.jsonl").read_text() == ledger


def test_an_altered_signature_or_one_from_a_removed_signer_does_not_count(site, tmp_path):
    (site["dir"] / "fact.txt").write_text("only this test plans this\n")  # a plan no other test approved
    try:
        signature_checks(site)
    finally:
        (site["dir"] / "fact.txt").write_text("hello\n")


def signature_checks(site):
    plan_id = run_id(run(site, operator="carol@example.org").stdout)
    assert approve(site, plan_id, "bob").returncode == 0
    granted = {g.plan_run: g for g in approvals.granted(archive_of(site), params_of(site), "20-motd")}
    assert granted[plan_id].approvers == ["bob@example.org"]

    # bob's signature file altered by one byte: it no longer verifies
    record = next(m for m in approvals.approval_records(archive_of(site), "20-motd", "lab")
                  if m.get("record") == approvals.RECORD and m["approves"] == plan_id)
    sig = site["archive"] / record["files"]["signature"]["path"]
    original = sig.read_bytes()
    sig.write_bytes(original.replace(b"A", b"B", 1) if b"A" in original[40:] else original[:-5] + b"AAAA\n")
    try:
        g = {g.plan_run: g for g in approvals.granted(archive_of(site), params_of(site), "20-motd")}[plan_id]
        assert g.approvers == [] and "does not verify" in g.refused[0]
    finally:
        sig.write_bytes(original)

    # bob removed from the allowed signers: his earlier approval no longer counts
    signers = site["dir"] / "allowed_signers"
    text = signers.read_text()
    signers.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("bob@")))
    try:
        g = {g.plan_run: g for g in approvals.granted(archive_of(site), params_of(site), "20-motd")}[plan_id]
        assert g.approvers == [] and g.refused
        refused = run(site, "--apply", operator="carol@example.org")
        assert refused.returncode != 0 and "0 of 1" in refused.stdout + refused.stderr
    finally:
        signers.write_text(text)


def test_drift_after_approval_invalidates_it_and_says_what_changed(site):
    plan_id = run_id(run(site, operator="carol@example.org").stdout)
    assert approve(site, plan_id, "bob").returncode == 0
    (site["dir"] / "fact.txt").write_text("drifted\n")
    try:
        refused = run(site, "--apply", operator="carol@example.org")
        assert refused.returncode != 0
        said = refused.stdout + refused.stderr
        assert f"this plan is not the one approved in run {plan_id}" in said
        assert "+ cp1: motd: write /etc/motd: drifted" in said and "- cp1: motd: write /etc/motd: hello" in said
        assert "changed: cp1" not in said
    finally:
        (site["dir"] / "fact.txt").write_text("hello\n")


def test_the_change_timeline_lists_plan_approvals_a_refused_apply_and_its_retry_in_order(site):
    # a plan no other test approved (an approval not yet spent by a successful apply would carry it)
    (site["dir"] / "fact.txt").write_text("change 42\n")
    try:
        timeline_checks(site)
    finally:
        (site["dir"] / "fact.txt").write_text("hello\n")


def timeline_checks(site):
    change = "CHG-42"
    plan_id = run_id(run(site, operator="carol@example.org", change=change).stdout)
    first = run(site, "--apply", operator="carol@example.org", change=change)  # refused: not approved yet
    assert first.returncode != 0
    assert approve(site, plan_id, "bob").returncode == 0
    retry = run(site, "--apply", operator="carol@example.org", change=change)
    assert retry.returncode == 0, retry.stderr[-2000:]
    shown = runbook("--archive", str(site["archive"]), "change", "show", change, "--json")
    rows = json.loads(shown.stdout)
    assert [r["record"] for r in rows] == ["plan", "apply", "approval", "apply"]
    assert rows[1]["result"].startswith("failed") and "ApprovalError" in rows[1]["result"]
    assert rows[2]["who"] == "bob@example.org" and rows[2]["what"].startswith(f"approves plan {plan_id}")
    assert rows[3]["result"] == "succeeded, applied" and rows[3]["what"] == "2 change(s): cp1 (1), w1 (1)"
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    text = runbook("--archive", str(site["archive"]), "change", "show", change)
    assert text.returncode == 0 and "change CHG-42: 4 record(s)" in text.stdout


def test_diff_of_two_runs_shows_exactly_the_host_that_differs(site, tmp_path):
    a = run_id(run(site, change="D").stdout)
    (site["dir"] / "fact.txt").write_text("goodbye\n")
    try:
        b = run_id(run(site, change="D").stdout)
    finally:
        (site["dir"] / "fact.txt").write_text("hello\n")
    out = runbook("--archive", str(site["archive"]), "diff", a, b, "--json", "--html", str(tmp_path / "d.html"))
    d = json.loads(out.stdout.split("\nhtml:")[0])
    assert d["steps_added"] == ["cp1: motd: write /etc/motd: goodbye"]
    assert d["steps_removed"] == ["cp1: motd: write /etc/motd: hello"]
    assert d["params"] == "" and d["changes_added"] == d["changes_removed"] == []
    page = (tmp_path / "d.html").read_text()
    assert "+ cp1: motd: write /etc/motd: goodbye" in page and "<script" not in page
    same = runbook("--archive", str(site["archive"]), "diff", a, a)
    assert "no difference" in same.stdout


def test_host_names_are_mapped_by_role_between_two_sites():
    from runbooklib.changes import diff

    def manifest(run_id, hosts, steps):
        inv = "inventory:\n  hosts:\n" + "".join(f"    - {{name: {n}, roles: [{r}]}}\n" for n, r in hosts)
        return {"run_id": run_id, "notebook": "02-vm-baseline", "environment": {"name": run_id}, "mode": "plan",
                "params": {"content_redacted": inv, "sha256": run_id}, "changes": [],
                "plans": [{"steps": [{"host": h, "operation": "swap disabled", "change": c} for h, c in steps]}]}
    lab = manifest("lab", [("cp1", "etcd"), ("w1", "worker"), ("w2", "worker")], [("w1", "swapoff"), ("w2", "swapoff")])
    prod = manifest("prod", [("k8s-cp-a", "etcd"), ("k8s-w-a", "worker"), ("k8s-w-b", "worker")],
                    [("k8s-w-a", "swapoff"), ("k8s-w-b", "swapoff"), ("k8s-cp-a", "swapoff")])
    d = diff(lab, prod)
    assert d.host_map == {"cp1": "k8s-cp-a", "w1": "k8s-w-a", "w2": "k8s-w-b"}
    assert d.steps_added == ["k8s-cp-a: swap disabled: swapoff"] and d.steps_removed == []


def archive_of(site):
    from runbooklib.archive import Archive

    return Archive(site["archive"])


def params_of(site):
    from runbooklib.params import load_params

    return load_params(site["params"])


def test_the_apply_button_is_held_to_the_same_approvals(site):
    """Interactive: the click runs the same gate; the kernel's record reads and verifies the approvals."""
    import contextlib

    from runbooklib.notebook import Run
    from runbooklib.phase.steps import Step

    class Record:  # the archive side of an interactive run, reduced to what the gate asks of it
        def __init__(self, plans):
            self.plans = plans

        def apply_lock(self):
            return contextlib.nullcontext()

        def approvals(self):
            return {"plans": self.plans, "operator": "erin@example.org", "git_commit": None, "notebook": "20-motd"}

    steps = [Step("cp1", "motd", "write /etc/motd: interactive", "true")]
    applied = []
    for plans, expect in (([], "no plan of 20-motd in lab is approved"), (None, None)):
        run = Run(params_of(site), None, apply=False, headless=False)
        if plans is None:  # approved: a plan with this very part, signed by someone other than the operator
            part = approvals.plan_part("motd", steps)
            plans = [{"plan_run": "P1", "plan_digest": "d", "parts": [part], "params_sha256": run.params.sha256,
                      "git_commit": None, "operator": "erin@example.org", "approvers": ["bob@example.org"], "refused": []}]
        run._record = Record(plans)
        outcome = run.confirm(steps, lambda: applied.append("applied"), title="motd")
        apply_button = outcome.widget.children[0].children[0]
        if expect:  # the widget shows the callback's error (ipywidgets catches it); nothing ran
            with pytest.raises(approvals.ApprovalError, match=expect):
                run._approved_or_raise(0, approvals.plan_part("motd", steps))
            apply_button.click()
            assert outcome.status == "failed" and applied == []
        else:
            apply_button.click()
            assert outcome.status == "applied" and applied == ["applied"]


def test_an_apply_from_a_checkout_with_uncommitted_changes_is_refused():
    part = {"title": "motd", "digest": "d1", "steps": []}
    plan = {"plan_run": "P", "parts": [part], "params_sha256": "s", "git_commit": "c", "approvers": ["bob@example.org"],
            "refused": []}
    assert approvals.gate(1, [plan], "alice@example.org", 0, part, "s", "c", "prod", "02-vm-baseline") == ("P", None)
    ran, why = approvals.gate(1, [plan], "alice@example.org", 0, part, "s", "c", "prod", "02-vm-baseline", git_dirty=True)
    assert ran is None and "uncommitted changes" in why and "Nothing was changed" in why


def test_the_verdicts_that_leave_an_approval_unspent_are_the_runners_bad_verdicts():
    from runbooklib import notebook

    assert approvals.BAD_VERDICTS == notebook.BAD_VERDICTS
