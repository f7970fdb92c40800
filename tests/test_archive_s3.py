"""The archive on S3-compatible object storage, against a real server (versitygw) on loopback.

Nothing here is mocked: the server is runbooklab.objectstore's versitygw, with Object Lock and
versioning, started once for the module; each test gets a bucket of its own. "Two machines" are two
processes with their own cache folders and lock folders, sharing only the bucket.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_notebook, resolvable_lab_data, runbook, set_path, wait_for, write_params
from runbooklib.archive import Archive, open_archive
from runbooklib.archive_s3 import S3Archive, S3Settings
from runbooklib.errors import ArchiveNotReady, LockedError
from runbooklib.s3 import S3Error


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from runbooklab import objectstore

    if not objectstore.binary().is_file() and not shutil.which("go"):
        if os.environ.get("CI"):
            pytest.fail("versitygw is not built and there is no Go toolchain: run `make setup`")
        pytest.skip("versitygw is not built (`make setup` builds it) and Go is missing")
    with objectstore.ObjectStore(tmp_path_factory.mktemp("objectstore")) as s:
        yield s


@pytest.fixture
def bucket_url(tmp_path, store, monkeypatch) -> str:
    """A fresh bucket with Object Lock, this process as "machine A" (its own cache and lock folders)."""
    url = f"s3://t{secrets.token_hex(6)}/team"
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path / "settings", url)))
    monkeypatch.setenv("RUNBOOK_ARCHIVE", url)
    monkeypatch.setenv("RUNBOOK_ARCHIVE_CACHE", str(tmp_path / "machine-a" / "cache"))
    monkeypatch.setenv("RUNBOOK_LOCK_DIR", str(tmp_path / "machine-a" / "locks"))
    assert S3Archive(url).create_bucket() is True
    return url


def machine(tmp_path: Path, name: str) -> dict:
    """The environment of another machine: same bucket and settings, its own cache and lock folder."""
    return {"RUNBOOK_ARCHIVE_CACHE": str(tmp_path / name / "cache"), "RUNBOOK_LOCK_DIR": str(tmp_path / name / "locks"),
            "PYTHONPATH": str(ROOT)}


def commit(archive: Archive, run_id: str, env: str = "lab", data: bytes = b"", country: str = "RU") -> dict:
    base = archive.record_base(env, "2026-11-29", run_id, "00-environment-overview")
    m = {"run_id": run_id, "notebook": "00-environment-overview", "status": "succeeded", "mode": "plan",
         "environment": {"name": env, "kind": "lab" if env == "lab" else "production", "data_country": country},
         "simulated": env == "lab", "started_at": f"2026-11-29T00:00:{len(run_id):02d}", "operator": "tester@ci"}
    mpath = archive.commit(m, {"notebook": (base.with_name(base.name + ".ipynb"), data or run_id.encode()),
                               "html": (base.with_name(base.name + ".html"), b"<html>" + run_id.encode())})
    return json.loads(mpath.read_bytes())


def all_objects(archive: S3Archive) -> dict[tuple[str, str], bytes]:
    """Every version of every object under the archive's prefix, by (key, version id)."""
    s3 = archive.s3
    return {(v.key, v.version_id): s3.get(archive.bucket, v.key, v.version_id)
            for v in s3.versions(archive.bucket, archive.prefix) if not v.delete_marker}


# -- two machines, one chain ---------------------------------------------------------------------

COMMITTER = """
import sys
from runbooklib.archive import open_archive
sys.path.insert(0, {tests!r})
from test_archive_s3 import commit
archive = open_archive()
archive.check_ready()
for i in range({n}):
    commit(archive, "{name}-%02d" % i)
"""


def test_runs_from_two_machines_land_in_one_chain_in_order(tmp_path, bucket_url, lab_params):
    """A real `runbook run` on each machine at the same time, and a burst of commits racing from both."""
    nb_a = make_notebook(tmp_path / "10-machine-a.ipynb", "print('machine a')")
    nb_b = make_notebook(tmp_path / "10-machine-b.ipynb", "print('machine b')")
    env = dict(os.environ)
    runs = [subprocess.Popen([sys.executable, "-m", "runbooklib.cli", "run", str(nb), "--params", str(lab_params)],
                             cwd=ROOT, env=dict(env, **machine(tmp_path, name)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for nb, name in ((nb_a, "machine-a"), (nb_b, "machine-b"))]
    bursts = [subprocess.Popen([sys.executable, "-c", COMMITTER.format(tests=str(ROOT / "tests"), n=8, name=name)],
                               cwd=ROOT, env=dict(env, **machine(tmp_path, name)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
              for name in ("burst-a", "burst-b")]
    for p in runs + bursts:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    archive = open_archive()
    report = archive.verify()
    assert report.ok, report.problems
    assert report.records == 18 and not report.warnings
    rows = archive.runs(limit=100)
    assert [r["seq"] for r in rows] == list(range(18, 0, -1))
    for name in ("burst-a", "burst-b"):  # each machine's records in the order it made them
        mine = [r["run_id"] for r in reversed(rows) if r["run_id"].startswith(name)]
        assert mine == [f"{name}-{i:02d}" for i in range(8)]
    notebooks = {r["notebook"] for r in rows}
    assert {"10-machine-a", "10-machine-b"} <= notebooks
    # the real runs' records read back whole from the bucket: notebook, html, manifest
    run = next(r for r in rows if r["notebook"] == "10-machine-a")
    m = archive.manifest(run["run_id"])
    assert m["status"] == "succeeded" and archive.read_bytes(m["files"]["notebook"]["path"]).startswith(b"{")
    # machine B's cache, rebuilt from the bucket, agrees with machine A's
    other = subprocess.run([sys.executable, "-m", "runbooklib.cli", "runs", "--json", "--limit", "100"], cwd=ROOT,
                           env=dict(env, **machine(tmp_path, "machine-c")), capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert [r["run_id"] for r in json.loads(other.stdout)] == [r["run_id"] for r in rows]


# -- the run lock across machines ----------------------------------------------------------------

HOLDER = """
import sys, time
from runbooklib.archive import open_archive
with open_archive().run_lock("prod", "02-vm-baseline", {{"operator": "alice@ws1", "run_id": "r-alice", "pid": 1}}):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_machine_is_refused_while_the_lock_is_held_and_takes_over_only_after_expiry(tmp_path, bucket_url, store,
                                                                                           monkeypatch, capfd):
    lease = 3
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path / "lease", bucket_url, lease_s=lease)))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format()], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, **machine(tmp_path, "machine-a")))
    try:
        assert holder.stdout.readline().strip() == "held"
        archive = open_archive()  # this test process is machine B: its own lock folder
        monkeypatch.setenv("RUNBOOK_LOCK_DIR", str(tmp_path / "machine-b" / "locks"))
        time.sleep(lease + 1.5)  # longer than a lease: the holder's renewals keep it
        with pytest.raises(LockedError) as refused, archive.run_lock("prod", "02-vm-baseline", {"operator": "bob@ws2"}):
            pass
        assert "held by alice@ws1" in str(refused.value) and "run r-alice" in str(refused.value)
        with archive.run_lock("staging", "02-vm-baseline", {"operator": "bob@ws2"}):
            pass  # another environment is another lock
        holder.send_signal(signal.SIGKILL)  # machine A dies holding the lock: no release, no renewal
        holder.wait(10)
        with pytest.raises(LockedError):  # its lease has not run out yet
            with archive.run_lock("prod", "02-vm-baseline", {"operator": "bob@ws2"}):
                pass
        capfd.readouterr()
        t0 = time.monotonic()

        def take() -> bool:
            try:
                with archive.run_lock("prod", "02-vm-baseline", {"operator": "bob@ws2"}):
                    return True
            except LockedError:
                return False

        wait_for(take, timeout=lease + 5, what="takeover after the lease", every=0.25)
        assert time.monotonic() - t0 < lease + 3
        assert "took over the run lock of alice@ws1" in capfd.readouterr().err
        # released cleanly: the next runner takes it at once, with no takeover
        with archive.run_lock("prod", "02-vm-baseline", {"operator": "carol@ws3"}):
            pass
        assert "took over" not in capfd.readouterr().err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_the_cli_refuses_a_run_while_another_machine_holds_its_lock(tmp_path, bucket_url, lab_params):
    nb = make_notebook(tmp_path / "20-held.ipynb", "print('ran')")
    archive = open_archive()
    with archive.run_lock("lab", "20-held", {"operator": "alice@ws1", "run_id": "r-alice"}):
        done = runbook("run", str(nb), "--params", str(lab_params), env=machine(tmp_path, "machine-b"))
    assert done.returncode == 3, done.stderr
    assert "held by alice@ws1 on " in done.stderr and "20-held is already running on environment lab" in done.stderr


# -- Object Lock ---------------------------------------------------------------------------------

def test_the_store_refuses_to_overwrite_or_delete_a_locked_record_and_verify_still_passes(tmp_path, bucket_url):
    archive = open_archive()
    for i in range(3):
        commit(archive, f"run-{i}")
    s3, bucket = archive.s3, archive.bucket
    versions = [v for v in s3.versions(bucket, archive.prefix) if not v.key.startswith(archive.prefix + "locks/")]
    assert len(versions) == 3 * 4  # notebook, html, manifest, ledger object per record
    for v in versions:
        assert s3.retention(bucket, v.key, v.version_id)[0] == "GOVERNANCE"
        with pytest.raises(S3Error) as refused:
            s3.delete(bucket, v.key, v.version_id)
        assert refused.value.status == 403
        with pytest.raises(S3Error) as refused:
            s3.put(bucket, v.key, b"edited", if_none_match=True)
        assert refused.value.status == 412
    # what the store allows on a versioned bucket: a new version over a record, a delete marker over another;
    # the locked originals stay, verify checks them and says what was attempted
    manifest_key = archive.key(next(e for e in archive._ledger_entries() if e["run_id"] == "run-1")["manifest"])
    s3.put(bucket, manifest_key, b'{"run_id": "forged"}')
    ledger_key = archive.prefix + "ledger/000000000002.json"
    s3.delete(bucket, ledger_key)
    report = archive.verify()
    assert report.ok, report.problems
    assert any("later version(s) were written over this record" in w for w in report.warnings)
    assert any("ledger/000000000002.json: a delete marker hides this record" in w for w in report.warnings)
    assert archive.manifest("run-1")["run_id"] == "run-1"  # reads take the locked original too
    shutil.rmtree(archive.root)  # a machine whose cache is gone rebuilds it from the originals
    assert [r["run_id"] for r in open_archive().runs()] == ["run-2", "run-1", "run-0"]
    done = runbook("verify")
    assert done.returncode == 0 and f"archive {bucket_url}: 3 records, chain and files intact" in done.stdout


def test_compliance_mode_refuses_even_the_governance_bypass(tmp_path, bucket_url, store, monkeypatch):
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path / "c", bucket_url, mode="compliance")))
    archive = open_archive()
    commit(archive, "kept")
    for v in archive.s3.versions(archive.bucket, archive.prefix):
        assert archive.s3.retention(archive.bucket, v.key, v.version_id)[0] == "COMPLIANCE"
        with pytest.raises(S3Error) as refused:
            archive.s3.delete(archive.bucket, v.key, v.version_id, bypass_governance=True)
        assert refused.value.status == 403
    assert archive.verify().ok


def test_a_record_deleted_by_force_is_caught_and_named_by_verify(tmp_path, bucket_url):
    archive = open_archive()
    for i in range(5):
        commit(archive, f"run-{i}")
    s3, bucket = archive.s3, archive.bucket
    m = archive.manifest("run-2")

    def force_delete(rel: str) -> None:
        for v in list(s3.versions(bucket, archive.key(rel))):
            s3.delete(bucket, v.key, v.version_id, bypass_governance=True)

    force_delete(m["files"]["html"]["path"])
    force_delete("ledger/000000000004.json")
    report = archive.verify()
    assert not report.ok
    assert report.problems[0] == f"record 3 (run run-2): html {m['files']['html']['path']} is missing: deleted by force (a governance bypass)"
    assert report.problems[1].startswith("record 4: its ledger object ledger/000000000004.json is missing")
    done = runbook("verify")
    assert done.returncode == 1 and "> record 3 (run run-2): html" in done.stdout
    # the newest record cut away: the chain alone cannot tell, the index cache remembers it
    force_delete("ledger/000000000005.json")
    report = archive.verify()
    assert any(p.startswith("ledger ends at record 3 but record 5 was archived") for p in report.problems)
    assert any(p.endswith("run-4-00-environment-overview.manifest.json: manifest is not in the ledger; a record was added "
                          "by hand, or a runner stopped before claiming its place") for p in report.problems)


# -- migration -----------------------------------------------------------------------------------

def test_push_copies_a_folder_archive_chain_and_all_and_verifies_it_in_the_bucket(tmp_path, bucket_url, store):
    folder = Archive(tmp_path / "outputs")
    for i in range(6):
        commit(folder, f"old-{i}", data=os.urandom(2000))
    local_head = folder.verify().head
    done = runbook("archive", "push", str(folder.root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"archive {bucket_url}: 6 records pushed from {folder.root}; chain and files intact" in done.stdout
    assert f"head {local_head} is the folder's" in done.stdout
    archive = open_archive()
    assert [r["run_id"] for r in archive.runs()] == [f"old-{i}" for i in reversed(range(6))]
    assert archive.manifest("old-3") == folder.manifest("old-3")
    again = runbook("archive", "push", str(folder.root))  # idempotent: nothing new, still verified
    assert again.returncode == 0 and "pushed 0 record(s)" in again.stderr + again.stdout
    # new runs continue the pushed chain
    commit(archive, "new-0")
    assert archive.verify().ok and archive.head().startswith("7:")
    # a folder that does not verify is not pushed
    broken = Archive(tmp_path / "broken")
    commit(broken, "b-0")
    commit(broken, "b-1")
    next(broken.root.rglob("b-0-*.html")).write_bytes(b"edited")
    settings = store.write_settings(tmp_path / "second", bucket_url + "2")  # same bucket, another prefix
    refused = runbook("archive", "push", str(broken.root),
                      env={"RUNBOOK_ARCHIVE": bucket_url + "2", "RUNBOOK_ARCHIVE_SETTINGS": str(settings)})
    assert refused.returncode == 1 and "does not verify" in refused.stderr and "nothing was pushed" in refused.stderr


def test_push_refuses_records_whose_data_must_stay_in_another_country(tmp_path, bucket_url):
    folder = Archive(tmp_path / "outputs")
    commit(folder, "lab-run")  # the lab's records are simulated: allowed anywhere
    commit(folder, "prod-run", env="prod-de", country="DE")
    done = runbook("archive", "push", str(folder.root))
    assert done.returncode == 2
    assert "run prod-run of environment prod-de must stay in DE" in done.stderr and "keeps records in RU" in done.stderr
    assert open_archive().runs() == []


# -- residency, secrets, settings ----------------------------------------------------------------

def test_a_run_is_refused_before_it_starts_when_the_archive_is_outside_the_data_country(tmp_path, bucket_url, store,
                                                                                      monkeypatch):
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path / "de", bucket_url, country="DE")))
    nb = make_notebook(tmp_path / "30-where.ipynb", "print('ran')")
    data = resolvable_lab_data(tmp_path)
    set_path(data, "environment.kind", "staging")
    for field in ("database.root_password", "database.replication_password", "logging.password"):
        set_path(data, field, "env:RB_PASSWORD")  # a staging file holds no literal secret
    staging = write_params(tmp_path, data)
    password = {"RB_PASSWORD": "pw" + secrets.token_hex(8)}
    done = runbook("run", str(nb), "--params", str(staging), env=password)
    assert done.returncode == 2
    assert "keeps its records in DE" in done.stderr and "requires its data in RU (environment.data_country)" in done.stderr
    assert open_archive().runs() == []
    set_path(data, "environment.kind", "lab")  # no exception for a rehearsal: the product judges the lab as any site
    done = runbook("run", str(nb), "--params", str(write_params(tmp_path, data, "lab.yaml")), env=password)
    assert done.returncode == 2 and "keeps its records in DE" in done.stderr and open_archive().runs() == []
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path / "ru", bucket_url, country="RU")))
    done = runbook("run", str(nb), "--params", str(staging), env=password)  # the archive declared where the data must stay
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(open_archive().runs()) == 1


def test_secret_canary_finds_nothing_in_any_object(tmp_path, bucket_url, store):
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
        "import base64, runbooklib\n"
        "run = runbooklib.open_run(params_file, run_id=run_id, apply=apply)\n"
        "pw = run.params.secret('database.root_password').reveal()\n"
        "key = run.params.secret('database.replication_password').reveal()",
        "print('plain:', pw, key, base64.b64encode(pw.encode()).decode())\n"
        "run.record_change('db1', f'set root password to {pw}')",
        "raise RuntimeError(f'could not log in with {pw}')")
    done = runbook("run", str(nb), "--params", str(params), env={"RB_CANARY": canaries["env"]})
    assert done.returncode == 1, done.stderr
    archive = open_archive()
    objects = all_objects(archive)
    assert any(k.endswith(".ipynb") for k, _ in objects) and any(k.endswith(".html") for k, _ in objects)
    forms = [store.secret_key.encode(), store.access_key.encode()]  # nor the store's own credentials
    for value in canaries.values():
        forms += [value.encode(), base64.b64encode(value.encode()).rstrip(b"=")]
    for (key, _), blob in objects.items():
        for form in forms:
            assert form not in blob, f"{key} holds a secret form {form[:12]!r}..."
    m = archive.manifest(archive.runs()[0]["run_id"])
    assert m["failure"]["evalue"] == "could not log in with [redacted:database.root_password]"


def test_settings_errors_name_the_file_and_field(tmp_path, monkeypatch):
    path = tmp_path / "archive.yaml"
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(path))
    with pytest.raises(ArchiveNotReady, match="no archive settings file at"):
        S3Settings.load("s3://records/team")
    good = {"endpoint": "https://s3.example.ru", "region": "ru-1", "country": "RU", "access_key": "env:AK",
            "secret_key": "file:sk", "retention": {"mode": "compliance", "days": 365}}
    cases = [({"secret_key": "hunter2hunter2"}, "secret_key: a literal credential is not allowed"),
             ({"endpoint": "http://s3.example.ru"}, "endpoint: http://s3.example.ru is plain http to another machine"),
             ({"country": "Russia"}, "country: expected the two-letter country code"),
             ({"retention": {"mode": "forever", "days": 1}}, "retention.mode: expected compliance"),
             ({"retention": {"mode": "governance", "days": "1y"}}, "retention.days: expected a whole number"),
             ({"url": "s3://other/team"}, "url: these settings are for s3://other/team, not for s3://records/team"),
             ({"regoin": "x"}, "regoin: not a setting")]
    for change, message in cases:
        path.write_text(json.dumps(good | change))
        with pytest.raises(ArchiveNotReady) as info:
            S3Settings.load("s3://records/team")
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)
        assert "hunter2" not in str(info.value)
    path.write_text(json.dumps(good))
    s = S3Settings.load("s3://records/team")
    assert (s.bucket, s.prefix, s.retention_mode, s.country) == ("records", "team/", "COMPLIANCE", "RU")
    with pytest.raises(ArchiveNotReady, match="expected s3://bucket/prefix"):
        S3Settings.load("s3://Bad_Bucket/x")


def test_a_bucket_without_object_lock_is_refused(tmp_path, store, monkeypatch):
    url = f"s3://t{secrets.token_hex(6)}/team"
    monkeypatch.setenv("RUNBOOK_ARCHIVE_SETTINGS", str(store.write_settings(tmp_path, url)))
    monkeypatch.setenv("RUNBOOK_ARCHIVE_CACHE", str(tmp_path / "cache"))
    archive = open_archive(url)
    with pytest.raises(ArchiveNotReady, match="NoSuchBucket"):
        archive.check_ready()
    archive.s3.create_bucket(archive.bucket, object_lock=False)
    with pytest.raises(ArchiveNotReady, match="has no Object Lock"):
        archive.check_ready()


def test_approvals_and_change_records_are_read_from_the_bucket(tmp_path, bucket_url):
    """What `approve`, `change show` and the apply gate read (the approval's signature file, every manifest of
    a change) comes from the bucket, through the same archive methods as for a folder."""
    from runbooklib import approvals, changes

    archive = open_archive()
    commit(archive, "plan-1")
    base = archive.record_base("lab", "2026-11-29", "appr-1", "00-environment-overview.approval")
    signature = b"-----BEGIN SSH SIGNATURE-----\n" + secrets.token_hex(32).encode() + b"\n"
    archive.commit({"record": approvals.RECORD, "run_id": "appr-1", "approves": "plan-1", "notebook": "00-environment-overview",
                    "environment": {"name": "lab"}, "approver": "bob@ws2", "mode": "approval", "status": "approved",
                    "change": "CHG-9", "plan": {"parts": [{"steps": 2}]}, "started_at": "2026-11-29T01:00:00"},
                   {"signature": (base.with_name(base.name + ".sig"), signature)}, base=base)
    shutil.rmtree(archive.root)  # another machine: nothing of these records on its disk
    other = open_archive()
    records = approvals.approval_records(other, "00-environment-overview", "lab")
    assert [(r["run_id"], r["_signature"]) for r in records] == [("appr-1", signature)]
    rows = changes.timeline(other, "CHG-9")
    assert [r["run"] for r in rows] == ["appr-1"] and "approves plan plan-1 (2 steps)" in rows[0]["what"]
    assert other.verify().ok
