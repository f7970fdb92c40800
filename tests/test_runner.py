"""The runner end to end: real papermill, a real kernel, the real command line, a temporary archive."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, RUNBOOK, make_notebook, resolvable_lab_data, resolvable_lab_params, runbook, set_path, write_params

OVERVIEW = "notebooks/00-environment-overview.ipynb"
MANIFEST_FIELDS = {
    "run_id", "notebook", "environment", "simulated", "mode", "params", "operator", "git", "versions",
    "started_at", "ended_at", "duration_s", "status", "failure", "changes", "files", "seq", "prev_manifest_sha256",
}


def manifests(root: Path) -> list[dict]:
    lines = (root / "ledger.jsonl").read_text().splitlines()
    return [json.loads((root / json.loads(line)["manifest"]).read_text()) for line in lines]


FAILING = ('import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)',
           'raise RuntimeError("the database refused the change")')


@pytest.fixture(scope="module")
def archive3(tmp_path_factory):
    """An archive with two overview runs and one failed run, made through the command line."""
    root = tmp_path_factory.mktemp("archive3")
    nbdir = tmp_path_factory.mktemp("nbs")
    failing = make_notebook(nbdir / "99-fails.ipynb", *FAILING)
    params = str(resolvable_lab_params(tmp_path_factory.mktemp("params")))
    # module fixtures run outside the per-test environment
    env = {"RUNBOOK_OPERATOR": "tester@ci", "RUNBOOK_LOCK_DIR": str(tmp_path_factory.mktemp("locks"))}
    results = [
        runbook("--archive", str(root), "run", OVERVIEW, "--params", params, env=env),
        runbook("--archive", str(root), "run", str(failing), "--params", params, env=env),
        runbook("--archive", str(root), "run", OVERVIEW, "--params", params, env=env),
    ]
    return root, results, Path(params)


def test_overview_run_is_archived_with_every_field(archive3):
    root, (first, _, _), params = archive3
    assert first.returncode == 0, first.stderr
    m = manifests(root)[0]
    assert MANIFEST_FIELDS <= set(m)
    assert m["status"] == "succeeded" and m["failure"] is None
    assert m["notebook"] == "00-environment-overview"
    assert m["environment"] == {"name": "lab", "kind": "lab", "data_country": "RU"}
    assert m["simulated"] is True and m["mode"] == "plan" and m["changes"] == []
    assert m["operator"] == "tester@ci"
    assert m["params"]["sha256"] == __import__("hashlib").sha256(params.read_bytes()).hexdigest()
    assert "lab-root-password" not in m["params"]["content_redacted"]
    assert "[redacted:database.root_password]" in m["params"]["content_redacted"]
    assert len(m["git"]["commit"] or "") == 40
    assert m["versions"]["kernel"]["executable"] and m["versions"]["kernel"]["python"]
    assert m["versions"]["papermill"] and m["versions"]["runbooklib"]
    assert m["duration_s"] > 0 and m["started_at"] < m["ended_at"]
    # the record's files sit where the layout says, and the CLI said where
    nb_path = root / m["files"]["notebook"]["path"]
    assert nb_path.parent.parent.name == "lab"
    assert nb_path.name == f"{m['run_id']}-00-environment-overview.ipynb"
    assert str(nb_path.name) in first.stdout  # the summary and the record's paths go to stdout
    assert str(nb_path.name) not in first.stderr
    html = (root / m["files"]["html"]["path"]).read_text()
    assert "Inventory of lab" in html and "<img" in html  # the table and the topology figure
    nb = nbformat.read(nb_path, as_version=4)
    assert set(nb.metadata.papermill.parameters) == {"params_file", "run_id", "apply"}
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))


def test_failed_notebook_is_archived_with_its_error(archive3):
    root, (_, failed, _), _ = archive3
    assert failed.returncode == 1
    m = manifests(root)[1]
    assert m["status"] == "failed"
    assert m["failure"]["ename"] == "RuntimeError"
    assert "the database refused the change" in m["failure"]["evalue"]
    assert m["failure"]["notebook_cell"] == 2  # as numbered in the committed notebook (0-based)
    assert m["failure"]["cell_index"] == 3  # in the executed one, after papermill's injected cell
    assert m["failure"]["source_first_line"] == 'raise RuntimeError("the database refused the change")'
    assert m["failure"]["cell"] == "[4/4] raise RuntimeError(\"the database refused the change\")"
    assert "failed at [4/4] raise RuntimeError" in failed.stdout and ": RuntimeError: the database refused" in failed.stdout
    nb = nbformat.read(root / m["files"]["notebook"]["path"], as_version=4)
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    listed = runbook("--archive", str(root), "runs", "--status", "failed", "--json")
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [m["run_id"]]


def test_show_prints_a_summary_or_the_manifest(archive3):
    root = archive3[0]
    m = manifests(root)[1]
    shown = runbook("--archive", str(root), "show", m["run_id"][:20])
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[0] == f"run {m['run_id']}  99-fails on lab (lab)  [lab simulation]"
    assert "  status     failed" in lines and "  operator   tester@ci" in lines
    assert any(line.startswith("  failure    RuntimeError at [4/4] raise") and line.endswith(": the database refused the change")
               for line in lines)
    assert len(lines) < 30  # a summary, not 869 lines of JSON
    as_json = runbook("--archive", str(root), "show", m["run_id"], "--json")
    assert json.loads(as_json.stdout)["run_id"] == m["run_id"]


def _tampered(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_verify_passes_then_fails_after_a_byte_changes(archive3, tmp_path):
    root = archive3[0]
    ok = runbook("--archive", str(root), "verify")
    assert ok.returncode == 0 and "3 records" in ok.stdout
    copy = _tampered(root, tmp_path)
    nb = copy / manifests(copy)[1]["files"]["notebook"]["path"]
    data = bytearray(nb.read_bytes())
    data[len(data) // 2] ^= 0x20
    nb.write_bytes(bytes(data))
    bad = runbook("--archive", str(copy), "verify")
    assert bad.returncode == 1
    assert "> record 2 " in bad.stdout and "notebook" in bad.stdout


def test_verify_fails_after_a_record_is_deleted(archive3, tmp_path):
    copy = _tampered(archive3[0], tmp_path)
    m = manifests(copy)[1]
    for f in m["files"].values():
        (copy / f["path"]).unlink()
    (copy / f["path"]).with_name(f"{m['run_id']}-{m['notebook']}.manifest.json").unlink()
    bad = runbook("--archive", str(copy), "verify")
    assert bad.returncode == 1 and "> record 2 " in bad.stdout and "removed" in bad.stdout


def test_verify_fails_after_two_records_are_swapped(archive3, tmp_path):
    copy = _tampered(archive3[0], tmp_path)
    ledger = copy / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    ledger.write_text("\n".join(lines) + "\n")
    bad = runbook("--archive", str(copy), "verify")
    assert bad.returncode == 1 and "> record 1 " in bad.stdout


# ---------------------------------------------------------------------------------------------

def test_secret_canary_never_reaches_the_archive_or_the_terminal(tmp_path, archive_root):
    """Unique random secrets, a notebook that prints them every way it can, then a byte search."""
    canaries = {"env": "envcanary" + secrets.token_hex(12), "file": "filecanary" + secrets.token_hex(12)}
    (tmp_path / "key.json").write_text('{"private_key": "' + canaries["file"] + '"}\n')
    data = resolvable_lab_data(tmp_path)
    set_path(data, "environment.kind", "staging")
    set_path(data, "database.root_password", "env:RB_CANARY")
    set_path(data, "database.replication_password", "file:key.json")
    set_path(data, "logging.password", "env:RB_CANARY")
    params = write_params(tmp_path, data)
    nb = make_notebook(
        tmp_path / "leaky.ipynb",
        "import base64, logging, runbooklib\n"
        "run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
        "pw = run.params.secret('database.root_password').reveal()\n"
        "key = run.params.secret('database.replication_password').reveal()",
        "print('plain:', pw, key)\n"
        "print('b64:', base64.b64encode(pw.encode()).decode(), base64.b64encode(key.encode()).decode())\n"
        "print('blob:', base64.b64encode(b'{\"auths\": {\"x\": ' + key.encode() + b'}}').decode())\n"
        "logging.getLogger().warning('logged %s', pw)\n"
        "import os; os.write(2, f'kernel process stderr: {pw}\\n'.encode())  # below ipykernel's capture\n"
        "display({'text/html': f'<b>{pw}</b>'}, raw=True)\n"
        "run.record_change('db1', f'set root password to {pw}')\n"
        "pw",
        "raise RuntimeError(f'could not log in with {pw}')",
    )
    done = runbook("run", str(nb), "--params", str(params), env={"RB_CANARY": canaries["env"]})
    assert done.returncode == 1, done.stderr  # the last cell fails on purpose
    files = [p for p in archive_root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".html" for p in files)
    forms = []
    for value in canaries.values():
        forms += [value.encode(), base64.b64encode(value.encode()), base64.b64encode(value.encode()).rstrip(b"=")]
    key_json = (tmp_path / "key.json").read_text().rstrip("\n").encode()
    forms.append(base64.b64encode(key_json))
    for path in files:
        blob = path.read_bytes()
        for form in forms:
            assert form not in blob, f"{path.name} contains a secret form {form[:12]!r}..."
    blob_output = base64.b64encode(b'{"auths": {"x": ' + key_json + b'}}')
    assert not any(blob_output in p.read_bytes() for p in files)
    for stream in (done.stdout, done.stderr):
        for form in forms:
            assert form.decode() not in stream
    # the record still says what happened, with the secret replaced by its field name
    m = json.loads(next(archive_root.rglob("*.manifest.json")).read_text())
    assert m["failure"]["evalue"] == "could not log in with [redacted:database.root_password]"
    assert m["changes"][0]["operation"] == "set root password to [redacted:database.root_password]"


def _written_forms(value: str) -> dict[str, str]:
    """How a value looks once written out: the forms no record and no terminal may hold."""
    import html
    import urllib.parse

    return {"plain": value, "base64": base64.b64encode(value.encode()).decode().rstrip("="),
            "base64-urlsafe": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
            "json-escaped": json.dumps(value)[1:-1], "html-escaped": html.escape(value),
            "html-escaped-markupsafe": html.escape(value).replace("&#x27;", "&#39;").replace("&quot;", "&#34;"),
            "url-encoded": urllib.parse.quote(value, safe=""), "hex": value.encode().hex(), "repr": repr(value)[1:-1]}


def test_structured_secrets_in_every_form_never_reach_the_record_or_the_terminal(tmp_path, archive_root):
    """A service-account key on one line (\\n escapes) taken apart by the cell, a lab literal with
    & < > " written with a YAML escape, a folded literal, each printed in every encoding, and one
    printed in two writes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (tmp_path / "sa.json").write_text(json.dumps({"type": "service_account", "private_key": pem,
                                                  "client_email": "puller@lab.iam.gserviceaccount.com"}) + "\n")
    pw = 'Pw&<x>"q' + secrets.token_hex(8)
    fold_a, fold_b = "foldcanary" + secrets.token_hex(6), "tail" + secrets.token_hex(6)
    data = resolvable_lab_data(tmp_path)
    set_path(data, "registry.json_key", "file:sa.json")
    set_path(data, "database.root_password", "PW-PLACEHOLDER")
    set_path(data, "logging.password", "FOLD-PLACEHOLDER")
    params = write_params(tmp_path, data)
    written_pw = '"' + pw.replace('"', '\\"').replace("&", "\\x26") + '"'
    params.write_text(params.read_text().replace("PW-PLACEHOLDER", written_pw)
                      .replace("FOLD-PLACEHOLDER", f">-\n    {fold_a}\n    {fold_b}"))
    nb = make_notebook(
        tmp_path / "leaky-shapes.ipynb",
        "import base64, html, json, sys, urllib.parse, runbooklib\n"
        "run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
        "pw = run.params.secret('database.root_password').reveal()\n"
        "fold = run.params.secret('logging.password').reveal()\n"
        "key = json.loads(run.params.secret('registry.json_key').reveal())['private_key']",
        "print(key)\nprint(repr(key))\nprint(json.dumps(key))\n"
        "for v in (pw, fold):\n"
        "    print(v, repr(v), json.dumps(v), urllib.parse.quote(v, safe=''), v.encode().hex(), html.escape(v))\n"
        "display({'text/html': f'<table><tr><td>{html.escape(pw)}</td></tr></table>'}, raw=True)\n"
        "display({'image/svg+xml': f'<svg xmlns=\"http://www.w3.org/2000/svg\"><text>{html.escape(pw)}</text></svg>'}, raw=True)\n"
        "sys.stdout.write(pw[:9]); sys.stdout.flush()\n"
        "import time; time.sleep(0.5)\n"
        "sys.stdout.write(pw[9:] + '\\n'); sys.stdout.flush()\n"
        "run.record_change('db1', json.dumps({'password': pw}), urllib.parse.quote(pw))",
        "raise RuntimeError('login failed for ' + pw.encode().hex() + ' ' + json.dumps(pw))",
    )
    done = runbook("run", str(nb), "--params", str(params))
    assert done.returncode == 1, done.stderr[-3000:]  # the last cell fails on purpose; the record is kept
    files = [p for p in archive_root.rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".html" for p in files)
    body = [ln for ln in pem.splitlines() if ln and "-----" not in ln and len(ln) >= 16]
    needles = {}
    shapes = [("pw", pw), ("fold", f"{fold_a} {fold_b}"), ("fold-line", fold_a)]
    for name, value in shapes + [(f"pem line {i}", ln) for i, ln in enumerate(body)]:
        for form, text in _written_forms(value).items():
            needles[f"{name} as {form}"] = text
    for path in files:
        blob = path.read_text(errors="replace")
        found = [n for n, text in needles.items() if text in blob]
        assert not found, f"{path.name} holds {found[:5]}"
    for stream in (done.stdout, done.stderr):
        found = [n for n, text in needles.items() if text in stream]
        assert not found, f"the terminal showed {found[:5]}"
    m = json.loads(next(archive_root.rglob("*.manifest.json")).read_text())
    assert "[redacted:database.root_password]" in m["changes"][0]["operation"]
    assert m["failure"]["evalue"].startswith("login failed for [redacted:database.root_password]")
    assert "[redacted:database.root_password]" in m["params"]["content_redacted"]
    assert "[redacted:logging.password]" in m["params"]["content_redacted"]


def test_second_concurrent_run_is_refused(tmp_path, archive_root, lab_params):
    started, release = tmp_path / "started", tmp_path / "release"
    nb = make_notebook(tmp_path / "10-slow.ipynb",
                       "import os, pathlib, time, runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
                       # tell the test the run is under way, then hold the lock until the test releases it
                       "pathlib.Path(os.environ['RB_STARTED']).touch()\n"
                       "deadline = time.time() + 120\n"
                       "while not os.path.exists(os.environ['RB_RELEASE']) and time.time() < deadline:\n"
                       "    time.sleep(0.1)")
    first = subprocess.Popen([*RUNBOOK, "run", str(nb), "--params", str(lab_params)], cwd=ROOT,
                             env=dict(os.environ, RB_RELEASE=str(release), RB_STARTED=str(started)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not started.exists() and first.poll() is None:
            time.sleep(0.1)
        if not started.exists():
            release.touch()
            out, err = first.communicate(timeout=120)
            pytest.fail(f"the first run never reached its notebook (exit {first.returncode}):\n{err[-3000:]}")
        second = runbook("run", str(nb), "--params", str(lab_params))
        if second.returncode != 3:
            release.touch()
            out, err = first.communicate(timeout=120)
            pytest.fail(f"second run not refused (exit {second.returncode}); first run: exit {first.returncode}\n"
                        f"first:\n{err[-2000:]}\nsecond:\n{second.stderr[-2000:]}")
        assert "already running on environment lab" in second.stderr
        assert "tester@ci" in second.stderr and str(first.pid) in second.stderr
    finally:
        release.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len((archive_root / "ledger.jsonl").read_text().splitlines()) == 1  # only the first was archived


def test_plan_then_apply_records_changes(tmp_path, archive_root, lab_params):
    nb = make_notebook(
        tmp_path / "20-change.ipynb",
        "import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
        "from runbooklib.phase.steps import Step\n"
        "plan = [Step(h.name, 'motd', 'write /etc/motd', 'true') for h in run.hosts_with('edge')]\n"
        "def act():\n"
        "    for step in run.progress(plan, desc='motd'):\n"
        "        run.record(step)\n"
        "outcome = run.confirm(plan, act)\n"
        "print('outcome', outcome.status)",
    )
    plan = runbook("run", str(nb), "--params", str(lab_params))
    applied = runbook("run", str(nb), "--params", str(lab_params), "--apply")
    assert plan.returncode == 0 and applied.returncode == 0, applied.stderr
    first, second = manifests(archive_root)
    assert first["mode"] == "plan" and first["changes"] == []
    assert "PLAN mode: nothing was changed" in plan.stderr and "outcome planned" in plan.stderr
    assert second["mode"] == "apply" and "outcome applied" in applied.stderr
    assert [(c["host"], c["operation"], c["change"]) for c in second["changes"]] == [
        ("edge1", "motd", "write /etc/motd"), ("edge2", "motd", "write /etc/motd")]
    assert "changed: edge1  motd: write /etc/motd" in applied.stderr  # a line per change as it happens


def test_timeout_fails_the_run_and_keeps_the_record(tmp_path, archive_root, lab_params):
    nb = make_notebook(tmp_path / "30-hangs.ipynb", "import time\ntime.sleep(60)")
    t0 = time.monotonic()
    done = runbook("run", str(nb), "--params", str(lab_params), "--timeout", "3")
    assert time.monotonic() - t0 < 45
    assert done.returncode == 1
    (m,) = manifests(archive_root)
    assert m["status"] == "failed" and m["failure"]["ename"] == "CellTimeoutError"
    assert "timed out while it was being executed, after 3 seconds" in m["failure"]["evalue"]


def test_not_a_notebook_is_refused_before_anything(tmp_path, archive_root, lab_params):
    done = runbook("run", str(tmp_path / "missing.ipynb"), "--params", str(lab_params))
    assert done.returncode == 2 and "not a notebook file" in done.stderr
    assert not archive_root.exists()


def test_a_secret_that_survives_scrubbing_stops_the_archive(tmp_path, archive_root, lab_params, monkeypatch):
    """The last line of defence: if scrubbing ever missed a form, nothing is written at all."""
    from runbooklib.errors import ArchiveError
    from runbooklib.runner import run_notebook
    from runbooklib.secrets import Redactor

    nb = make_notebook(tmp_path / "40-prints.ipynb",
                       "import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
                       "print(run.params.secret('database.root_password').reveal())")
    monkeypatch.setattr(Redactor, "scrub", lambda self, text: text)  # a scrubber bug, simulated
    monkeypatch.setattr(Redactor, "scrub_obj", lambda self, obj: obj)
    with pytest.raises(ArchiveError, match="still holds secret database.root_password"):
        run_notebook(nb, lab_params, archive_root=archive_root, stream=None)
    assert not list(archive_root.rglob("*.ipynb")) and not (archive_root / "ledger.jsonl").exists()


# -- runs end in many ways; each leaves a record ----------------------------------------------------

SLOW_CHANGE = (
    "import os, pathlib, time, runbooklib\n"
    "run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
    "run.record_change('db1', 'set read_only', 'before the long step')\n"
    "pathlib.Path(os.environ['RB_STARTED']).touch()\n"
    "time.sleep(120)",
)


def _start_slow_run(tmp_path, lab_params, archive_root):
    started = tmp_path / "started"
    nb = make_notebook(tmp_path / "50-slow-change.ipynb", *SLOW_CHANGE)
    # a session of its own: signals go to the runner alone, as `kill PID` would send them
    proc = subprocess.Popen([*RUNBOOK, "run", str(nb), "--params", str(lab_params), "--apply"], cwd=ROOT,
                            env=dict(os.environ, RB_STARTED=str(started)), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not started.exists() and proc.poll() is None:
        time.sleep(0.1)
    if not started.exists():
        proc.kill()
        pytest.fail(f"the run never reached its slow cell:\n{proc.communicate()[1][-3000:]}")
    return proc


def _alive(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGHUP", "kill -INT"])
def test_a_signal_ends_the_run_with_an_interrupted_record(tmp_path, archive_root, lab_params, sig, code):
    proc = _start_slow_run(tmp_path, lab_params, archive_root)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the runner did not end within 90 s of {sig.name}")
    assert proc.returncode == code, err[-3000:]
    (m,) = manifests(archive_root)
    assert m["status"] == "interrupted" and m["failure"]["ename"] == sig.name, m["failure"]
    assert m["mode"] == "apply" and [c["operation"] for c in m["changes"]] == ["set read_only"]
    assert "interrupted" in out and "chain head: 1:" in out
    html = (archive_root / m["files"]["html"]["path"]).read_text()
    top = html[: html.index("| run |") if "| run |" in html else html.index("<table")]
    assert "This run was INTERRUPTED" in top and sig.name in top  # says so before anything else
    kernel = m["versions"]["kernel"]["pid"]
    deadline = time.monotonic() + 15
    while _alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel), "the kernel outlived the run"
    assert not list((archive_root / ".journal").iterdir()), "the journal of an archived run must go"
    from runbooklib.archive import run_lock

    with run_lock("lab", "50-slow-change", {"operator": "next"}):  # released
        pass
    assert runbook("verify").returncode == 0


def test_a_killed_run_is_archived_by_the_next_command(tmp_path, archive_root, lab_params):
    proc = _start_slow_run(tmp_path, lab_params, archive_root)
    (folder,) = (archive_root / ".journal").iterdir()  # under the archive, not lost in /tmp
    journal = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]
    kernel = next(e["pid"] for e in journal if e["event"] == "kernel")
    proc.kill()  # SIGKILL: nothing can be caught
    proc.communicate(timeout=30)
    try:
        os.kill(kernel, signal.SIGKILL)  # an orphaned kernel would sleep on; not the point here
    except ProcessLookupError:
        pass
    assert not (archive_root / "ledger.jsonl").exists()
    listed = runbook("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "never finished; archived as killed with 1 journaled change(s)" in listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["status"] == "killed" and row["run_id"] == folder.name and row["mode"] == "apply"
    (m,) = manifests(archive_root)
    assert m["failure"]["ename"] == "Killed" and [c["host"] for c in m["changes"]] == ["db1"]
    assert m["files"]["journal"]["path"].endswith(".journal.jsonl")
    assert not folder.exists()
    assert runbook("verify").returncode == 0
    again = runbook("runs", "--json")  # archived once, not at every command
    assert len(json.loads(again.stdout)) == 1 and "never finished" not in again.stderr


def test_a_damaged_archive_is_refused_before_the_notebook_starts(tmp_path, archive_root, lab_params):
    marker = tmp_path / "ran"
    nb = make_notebook(tmp_path / "60-marks.ipynb", f"open({str(marker)!r}, 'w').close()")
    assert runbook("run", str(nb), "--params", str(lab_params)).returncode == 0
    ledger = archive_root / "ledger.jsonl"
    good = ledger.read_bytes()
    ledger.write_bytes(good + good[: len(good) // 2])  # a second line cut short by a crash
    marker.unlink()
    cut = runbook("run", str(nb), "--params", str(lab_params), "--apply")
    assert cut.returncode == 2 and "cannot take a record, so nothing was run" in cut.stderr
    assert "line 2 is cut short" in cut.stderr and "Traceback" not in cut.stderr
    assert not marker.exists()
    ledger.write_bytes(good)
    (archive_root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    corrupt = runbook("run", str(nb), "--params", str(lab_params), "--apply")
    assert corrupt.returncode == 2 and "index.sqlite is damaged" in corrupt.stderr and "runbook reindex" in corrupt.stderr
    assert not marker.exists() and "Traceback" not in corrupt.stderr
    assert len(list(archive_root.rglob("*.ipynb"))) == 1  # no record without a manifest
    for command in (("runs",), ("verify",)):
        done = runbook(*command)
        assert done.returncode == 1 and "index.sqlite is damaged" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    fixed = runbook("reindex")
    assert fixed.returncode == 0 and "moved to" in fixed.stdout
    assert runbook("run", str(nb), "--params", str(lab_params)).returncode == 0 and marker.exists()


def test_a_refused_run_keeps_the_holder_named_and_two_archives_share_the_lock(tmp_path, lab_params):
    started, release = tmp_path / "started", tmp_path / "release"
    nb = make_notebook(tmp_path / "10-slow.ipynb",
                       "import os, pathlib, time\n"
                       "pathlib.Path(os.environ['RB_STARTED']).touch()\n"
                       "deadline = time.time() + 120\n"
                       "while not os.path.exists(os.environ['RB_RELEASE']) and time.time() < deadline:\n"
                       "    time.sleep(0.1)")
    first = subprocess.Popen([*RUNBOOK, "--archive", str(tmp_path / "a1"), "run", str(nb), "--params", str(lab_params)],
                             cwd=ROOT, env=dict(os.environ, RB_RELEASE=str(release), RB_STARTED=str(started)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not started.exists() and first.poll() is None:
            time.sleep(0.1)
        assert started.exists(), first.communicate(timeout=60)[1][-2000:] if first.poll() is not None else "slow"
        for archive in ("a2", "a1", "a3"):  # another archive folder is no way around the lock
            refused = runbook("--archive", str(tmp_path / archive), "run", str(nb), "--params", str(lab_params))
            assert refused.returncode == 3, refused.stderr[-2000:]
            assert f"pid {first.pid}," in refused.stderr and "tester@ci" in refused.stderr, refused.stderr
    finally:
        release.touch()
        first.communicate(timeout=120)
    assert first.returncode == 0



def test_terminal_output_through_a_pipe_is_quiet_and_the_record_stands_alone(tmp_path, archive_root, lab_params):
    """One line per cell, no bars or carriage returns, no kernel chatter; the summary on stdout; a record with its header."""
    nb = make_notebook(
        tmp_path / "40-quiet.ipynb",
        "import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nfor _ in run.progress(range(3), desc='work'):\n    pass",
        "from runbooklib.phase.steps import Step\nrun.record(Step('w1', 'motd', 'write /etc/motd', 'true'))\n"
        "run.finish([], verdict='applied')",
    )
    done = runbook("run", str(nb), "--params", str(lab_params), "--reason", "CHG-1234 quarterly drill",
                   "--operator", "Alice Petrova")
    assert done.returncode == 0, done.stderr
    err, out = done.stderr, done.stdout
    assert "\r" not in err and "\r" not in out
    assert "Executing:" not in err and "IPKernelApp" not in err and "KeyboardInterrupt" not in err
    assert "<Figure size" not in err
    titles = [line for line in err.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]
    assert titles == ["[1/5] parameters (the notebook's defaults)", "[2/5] parameters (injected by the runner)",
                      "[3/5] import runbooklib", "[4/5] import matplotlib.pyplot as plt", "[5/5] from runbooklib.phase.steps import Step"]
    assert "  | changed: w1  motd: write /etc/motd" in err
    assert out.splitlines()[0].startswith("run ") and "verdict: applied" in out.splitlines()[0]
    assert "manifest:" in out and "manifest:" not in err
    (m,) = manifests(archive_root)
    assert m["reason"] == "CHG-1234 quarterly drill" and m["operator"] == "Alice Petrova"
    html = (archive_root / m["files"]["html"]["path"]).read_text()
    assert f"<title>40-quiet on lab: succeeded ({m['run_id']})</title>" in html
    body = html.index("<body")
    head = html[body: html.index("jp-CodeCell", body)]  # the header comes before any code cell
    for text in (f"Record of run {m['run_id']}", "Alice Petrova", "CHG-1234 quarterly drill", m["started_at"],
                 m["ended_at"], "verdict <strong>applied</strong>", m["git"]["commit"] or "not a git checkout",
                 m["params"]["sha256"][:16],
                 "1 on 1 host(s): w1 1"):
        assert text in head, text
    record = nbformat.read(archive_root / m["files"]["notebook"]["path"], as_version=4)
    tags = [c.metadata.get("tags", []) for c in record.cells]
    assert tags[0] == ["runbook-record-header"]
    assert tags.index(["injected-parameters"]) < tags.index(["parameters"])  # what ran, above the defaults
    listed = runbook("--archive", str(archive_root), "runs")
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:8] == ["run_id", "environment", "notebook", "mode", "status", "verdict", "changes", "started_at"]
    assert row.split()[4:7] == ["succeeded", "applied", "1"]


def test_no_input_renders_the_record_without_code(tmp_path, archive_root, lab_params):
    nb = make_notebook(tmp_path / "41-review.ipynb", "secret_sauce = 6 * 7\nprint('answer', secret_sauce)")
    done = runbook("run", str(nb), "--params", str(lab_params), "--no-input")
    assert done.returncode == 0, done.stderr
    (m,) = manifests(archive_root)
    html = (archive_root / m["files"]["html"]["path"]).read_text()
    assert "answer 42" in html and "secret_sauce = 6" not in html
    assert "secret_sauce = 6" in (archive_root / m["files"]["notebook"]["path"]).read_text()  # the .ipynb keeps the code


@pytest.mark.parametrize("verdict,problems,code", [("ready", [], 0), ("not ready", ["w1: not ready"], 4),
                                                   ("incomplete", ["db1: unreachable: refused"], 4), ("applied", [], 0)])
def test_the_verdict_is_the_exit_code(tmp_path, archive_root, lab_params, verdict, problems, code):
    nb = make_notebook(tmp_path / "60-verdict.ipynb",
                       "import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
                       f"run.finish({problems!r}, verdict={verdict!r})")
    done = runbook("run", str(nb), "--params", str(lab_params))
    assert done.returncode == code, done.stderr[-2000:]
    assert f"verdict: {verdict}" in done.stdout.splitlines()[0]
    (m,) = manifests(archive_root)
    assert m["status"] == "succeeded" and m["verdict"]["verdict"] == verdict and m["verdict"]["problems"] == problems
    if code:
        report = runbook("run", str(nb), "--params", str(lab_params), "--allow-not-ready")
        assert report.returncode == 0


def test_each_display_ends_its_line_in_the_terminal(tmp_path, archive_root, lab_params):
    """Two tables and a print in one cell: each starts on a line of its own (a display's text is whole)."""
    nb = make_notebook(
        tmp_path / "70-tables.ipynb",
        "import runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)",
        "run.table([{'host': 'edge1'}], title='First table')\n"
        "run.table([{'host': 'edge2'}], title='Second table')\n"
        "print('after the tables')",
    )
    done = runbook("run", str(nb), "--params", str(lab_params))
    assert done.returncode == 0, done.stderr
    lines = [line.removeprefix("  | ") for line in done.stderr.splitlines()]
    assert "First table" in lines and "Second table" in lines and "after the tables" in lines
    assert lines[lines.index("Second table") - 1].strip() == "edge1"


def _gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _printed_pid(result) -> int:
    nb = nbformat.read(result.notebook_path, as_version=4)
    text = "".join("".join(o.get("text", "")) for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    return int(re.search(r"PID (\d+)", text).group(1))


def test_a_kernel_launched_ahead_runs_the_next_run_with_its_journal_and_its_output_scrubbed(tmp_path, archive_root, capfd, monkeypatch):
    """A suite's next step gets a kernel launched while the previous step runs: it is that run's
    kernel (the same process), the run's journal is set in it (its change is recorded), and what it writes
    below ipykernel's capture goes through that run's scrubber like any kernel's."""
    from runbooklib import runner

    canary = "sparecanary" + secrets.token_hex(12)
    data = resolvable_lab_data(tmp_path)
    set_path(data, "environment.kind", "staging")
    for field in ("database.root_password", "database.replication_password", "logging.password"):
        set_path(data, field, "env:RB_CANARY")
    params = write_params(tmp_path, data)
    monkeypatch.setenv("RB_CANARY", canary)
    nb = make_notebook(tmp_path / "ahead.ipynb",
                       "import os, runbooklib\nrun = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
                       "pw = run.params.secret('database.root_password').reveal()\nprint('PID', os.getpid())\n"
                       "os.write(2, f'kernel process stderr: {pw}\\n'.encode())  # below ipykernel's capture\n"
                       "run.record_change('db1', 'a change')")
    first = runner.run_notebook(nb, params, archive_root=archive_root, stream=None, summary_stream=None, next_notebook=nb)
    assert first.ok and runner._SPARE is not None
    spare_pid = runner._SPARE.km.provisioner.pid
    second = runner.run_notebook(nb, params, archive_root=archive_root, stream=None, summary_stream=None)
    assert second.ok and runner._SPARE is None
    assert _printed_pid(second) == spare_pid != _printed_pid(first)  # the spare ran the second run
    assert [c["operation"] for c in second.manifest["changes"]] == ["a change"]  # its journal was set in the spare
    assert _gone(spare_pid)  # stopped with its run, like any kernel
    # the first run's kernel was left to finish exiting while the second started; the last run waited for it
    assert _gone(_printed_pid(first)) and runner._KERNELS_STOPPING == []
    out, err = capfd.readouterr()
    assert canary not in out + err
    assert err.count("kernel process stderr: [redacted:database.root_password]") == 2  # both kernels' fd 2, scrubbed


def test_a_kernel_launched_ahead_that_does_not_fit_or_is_not_needed_is_stopped(tmp_path, archive_root, lab_params):
    from runbooklib import runner

    here = make_notebook(tmp_path / "here.ipynb", "import os\nprint('PID', os.getpid())")
    (tmp_path / "elsewhere").mkdir()
    elsewhere = make_notebook(tmp_path / "elsewhere" / "there.ipynb", "import os\nprint('PID', os.getpid())")
    runner.run_notebook(here, lab_params, archive_root=archive_root, stream=None, summary_stream=None, next_notebook=here)
    spare_pid = runner._SPARE.km.provisioner.pid
    # the next run is another notebook, in another folder (its kernel's working folder): the spare is not it
    other = runner.run_notebook(elsewhere, lab_params, archive_root=archive_root, stream=None, summary_stream=None)
    assert other.ok and _printed_pid(other) != spare_pid and _gone(spare_pid)
    # a suite that stops before its next step: the spare is stopped when the suite ends
    last = runner.run_notebook(here, lab_params, archive_root=archive_root, stream=None, summary_stream=None, next_notebook=here)
    spare_pid = runner._SPARE.km.provisioner.pid
    runner.discard_spare_kernel()
    assert runner._SPARE is None and _gone(spare_pid)
    runner._finish_kernel_stops()  # as the suite does at its end: the last step's kernel, left exiting, is waited for
    assert runner._KERNELS_STOPPING == [] and _gone(_printed_pid(last))


def test_the_kernel_handshake_ends_with_the_kernels_idle_status_and_leaves_iopub_live():
    """The runner's kernel client is ready when the kernel answered kernel_info on the shell channel and its idle status
    for that request came on IOPub: the first cell's output is then received, kernel after kernel (no message lost to
    a subscription not yet live); a kernel that is gone is an error naming it, not a hang."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.util import run_sync

    from runbooklib.runner import _ready_client_class

    for _ in range(3):
        km = AsyncKernelManager(kernel_name="python3")
        km.client_factory = _ready_client_class()
        run_sync(km.start_kernel)()
        kc = km.client()
        try:
            assert type(kc).__name__ == "ReadyClient"
            kc.start_channels()
            run_sync(kc.wait_for_ready)(timeout=60)
            msg_id = kc.execute("print(6 * 7)")
            seen = []
            while not seen or seen[-1] != "idle":
                msg = run_sync(kc.get_iopub_msg)(timeout=30)
                if msg["parent_header"].get("msg_id") == msg_id:
                    seen.append(msg["content"].get("text") or msg["content"].get("execution_state") or msg["msg_type"])
            assert "42\n" in seen, seen
        finally:
            kc.stop_channels()
            run_sync(km.shutdown_kernel)(now=True)
    km = AsyncKernelManager(kernel_name="python3")
    km.client_factory = _ready_client_class()
    run_sync(km.start_kernel)()
    kc = km.client()
    kc.start_channels()
    pid = km.provisioner.pid
    os.kill(pid, signal.SIGKILL)
    km.provisioner.process.wait(timeout=15)  # reaped: the kernel is gone
    try:
        with pytest.raises(RuntimeError, match="Kernel died"):
            run_sync(kc.wait_for_ready)(timeout=60)
    finally:
        kc.stop_channels()
        run_sync(km.shutdown_kernel)(now=True)


def test_the_record_page_is_nbconverts_own_with_the_same_focusable_elements_and_image_alternatives():
    """The runner's HTML exporter skips HTMLExporter's BeautifulSoup pass and makes its two edits on the text: the page,
    read back by BeautifulSoup, is exactly what nbconvert's own exporter writes, for every kind of output a record holds."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    from runbooklib.runner import _record_exporter_class

    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
    v4 = nbformat.v4
    code = v4.new_code_cell("print('plan')", outputs=[
        v4.new_output("stream", name="stdout", text="plan: 2 change(s)\n"),
        v4.new_output("stream", name="stderr", text="warning\n"),
        v4.new_output("display_data", data={"text/html": '<table><tr><td>edge1</td></tr></table><img src="x.png">'
                                                         '<div class="jp-OutputArea-output extra">nested</div>', "text/plain": "t"}),
        v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure size 4x4>"}),
        v4.new_output("display_data", data={"image/png": png, "text/plain": "fig"}, metadata={"image/png": {"width": 4}}),
        v4.new_output("display_data", data={"image/svg+xml": svg, "text/plain": "svg"}),
        v4.new_output("display_data", data={"text/markdown": "**done** ![x](y.png)", "text/plain": "md"}),
        v4.new_output("display_data", data={"application/javascript": "console.log(1)", "text/plain": "js"}),
        v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1),
        v4.new_output("error", ename="RunbookError", evalue="w1: unreachable", traceback=["RunbookError: w1: unreachable"]),
    ])
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("# Record\n<img src='a.png'>"), code, v4.new_raw_cell("raw")],
                         metadata={"language_info": {"name": "python"}})
    stock, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    ours, _ = _record_exporter_class()(template_name="lab").from_notebook_node(nb)
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # a JavaScript output's element id, new per page
    assert uuid.sub("ID", str(BeautifulSoup(ours, features="html.parser"))) == uuid.sub("ID", stock)
    assert ours.count('tabindex="0"') == stock.count('tabindex="0"') >= 10 and "<img" in ours and 'alt="No description' in ours
