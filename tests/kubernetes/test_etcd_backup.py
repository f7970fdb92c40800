"""etcd backup and restore without a cluster: the settings' rules, the commands per distribution, etcdutl's answers,
the copy off the node and the refusals of a restore. A real etcd (the lab's build, on loopback) makes the snapshots
that the verification script reads with the real etcdutl, out of a zip packed as RKE1's rke-tools packs it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import resolvable_lab_data, write_params
from runbooklab.kubernetes import parts, rketools
from runbooklib.errors import ParamsError
from runbooklib.kubernetes import etcd_backup, etcd_restore, state
from runbooklib.kubernetes.etcd_backup import NodeSnapshot, SnapshotError, SnapshotStatus, Verified
from runbooklib.params import load_params, parse_params
from runbooklib.ssh import HostResult

ETCD_BIN = parts.host_path("etcd", "etcd").parent


def lab(tmp_path, distribution: str = "rke1", **backup):
    data = resolvable_lab_data(tmp_path)
    data["kubernetes"]["state_dir"] = "state"
    data["kubernetes"]["distribution"] = distribution
    data["kubernetes"]["etcd_backup"] = backup or {"path": "backups", "country": "RU"}
    return data


def problems(data) -> dict[str, str]:
    with pytest.raises(ParamsError) as e:
        parse_params(yaml.safe_dump(data, sort_keys=False), "p.yaml")
    return {p.path: p.message for p in e.value.problems}


# -- the settings -----------------------------------------------------------------------------------

def test_copies_outside_the_data_country_are_refused_naming_the_field_and_why(tmp_path):
    found = problems(lab(tmp_path, path="backups", country="DE"))
    assert list(found) == ["kubernetes.etcd_backup.country"]
    assert found["kubernetes.etcd_backup.country"].startswith("DE is outside RU; an etcd snapshot holds every Secret of the cluster")
    data = lab(tmp_path, path="/srv/etcd", host="cp3")  # a control-plane node may sit abroad; the cluster's Secrets may not
    data["inventory"]["hosts"][2]["location"]["country"] = "FI"
    assert problems(data) == {"kubernetes.etcd_backup.host": "cp3 is located in FI (its location.country), outside RU; an etcd "
                              "snapshot holds every Secret of the cluster (and RKE1's the cluster's keys in cluster.rkestate), so its "
                              "copies are data that must stay in RU (environment.data_country): choose a host located in RU"}


def test_the_place_for_copies_must_be_one_and_well_formed(tmp_path):
    assert list(problems(lab(tmp_path, path="backups"))) == ["kubernetes.etcd_backup"]
    assert list(problems(lab(tmp_path, path="/srv/etcd", country="RU", host="elk1"))) == ["kubernetes.etcd_backup"]
    assert "no host named nas1" in problems(lab(tmp_path, path="/srv/etcd", host="nas1"))["kubernetes.etcd_backup.host"]
    assert "must be an absolute folder" in problems(lab(tmp_path, path="etcd", host="elk1"))["kubernetes.etcd_backup.path"]
    assert "own folder" in problems(lab(tmp_path, path=".", country="RU"))["kubernetes.etcd_backup.path"]
    assert "is not a snapshot name" in problems(lab(tmp_path, path="b", country="RU", restore="../etc/passwd"))[
        "kubernetes.etcd_backup.restore"]


def test_a_drill_is_refused_in_production_and_beside_a_restore(tmp_path):
    data = lab(tmp_path, path="backups", country="RU", drill=True)
    data["environment"]["kind"] = "production"
    data["database"]["root_password"] = data["database"]["replication_password"] = "env:X"
    data["logging"]["password"] = "env:X"
    assert "rehearse it on a lab or staging cluster" in problems(data)["kubernetes.etcd_backup.drill"]
    both = lab(tmp_path, path="backups", country="RU", drill=True, restore="runbook-20261128t120000z")
    assert "drill and restore in one run" in problems(both)["kubernetes.etcd_backup.restore"]
    accepted = parse_params(yaml.safe_dump(lab(tmp_path, path="/srv/etcd", host="elk1"), sort_keys=False), "p.yaml")
    assert etcd_backup.target(accepted) == etcd_backup.Target("/srv/etcd", "RU", "elk1")


def test_the_local_folder_is_made_private_and_never_inside_the_archive(tmp_path, monkeypatch):
    params = load_params(write_params(tmp_path, lab(tmp_path)))
    folder = etcd_backup.backup_dir(params, create=True)
    assert folder == tmp_path / "backups" and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o755)
    with pytest.raises(SnapshotError, match=r"readable by others \(mode 755\).*chmod 700"):
        etcd_backup.backup_dir(params)
    monkeypatch.setenv("RUNBOOK_ARCHIVE", str(tmp_path))  # the archive holds the folder
    with pytest.raises(SnapshotError, match="kubernetes.etcd_backup.path .* lies inside the archive"):
        etcd_backup.backup_dir(params)
    monkeypatch.setenv("RUNBOOK_ARCHIVE", str(tmp_path / "elsewhere"))  # a run's own archive, known from its journal
    monkeypatch.setenv("RUNBOOK_JOURNAL", str(tmp_path / ".journal" / "run-1" / "journal.jsonl"))
    with pytest.raises(SnapshotError, match="inside the archive"):
        etcd_backup.backup_dir(params)
    assert any("inside the archive" in b for b in etcd_backup.blockers(params))


def test_blockers_name_what_is_missing_before_anything_runs(tmp_path):
    data = lab(tmp_path)
    del data["kubernetes"]["etcd_backup"]
    params = load_params(write_params(tmp_path, data))
    found = etcd_backup.blockers(params)
    assert found[0].startswith(f"{params.source}: kubernetes.etcd_backup is not set")
    assert "03-kubernetes-cluster" in found[1] and "no cluster.yml" in found[2]
    assert [s.command for s in etcd_backup.plan_snapshot(params, "n", found)] == [None]


# -- what the runbook shows and runs, per distribution ----------------------------------------------

def test_the_schedule_as_each_distribution_writes_it(tmp_path):
    rke1 = load_params(write_params(tmp_path, lab(tmp_path)))
    rows = {r["setting"]: r for r in etcd_backup.schedule_rows(rke1)}
    assert rows["services.etcd.backup_config.interval_hours"]["rendered"] == "6"
    assert rows["services.etcd.backup_config.retention"]["rendered"] == "12"
    assert rows["services.etcd.snapshot"]["as deployed"] == "-" and rows["meaning"]["parameters"] == \
        "every 6 h, the newest 12 kept (72 h of history)"
    from runbooklib.kubernetes.rke1 import render_cluster_yml

    state.state_dir(rke1, create=True).joinpath("cluster.yml").write_text(render_cluster_yml(rke1))
    assert {r["same"] for r in etcd_backup.schedule_rows(rke1) if r["setting"] != "meaning"} == {"yes"}
    data = lab(tmp_path / "b", "rke2")
    data["kubernetes"]["etcd_snapshot_interval_hours"] = 4
    rows = {r["setting"]: r for r in etcd_backup.schedule_rows(load_params(write_params(tmp_path / "b", data)))}
    assert rows["etcd-snapshot-schedule-cron"]["rendered"] == "0 */4 * * *" and rows["etcd-snapshot-retention"]["rendered"] == "12"


def test_commands_per_distribution(tmp_path):
    rke1 = load_params(write_params(tmp_path, lab(tmp_path)))
    config = tmp_path / "state" / "cluster.yml"
    rke = str((tmp_path / "../.lab/bin/rke").resolve())
    assert etcd_backup.rke1_save_argv(rke1, "n1") == [rke, "etcd", "snapshot-save", "--config", str(config), "--name", "n1"]
    assert etcd_restore.restore_argv(rke1, "n1") == [rke, "etcd", "snapshot-restore", "--config", str(config), "--name", "n1"]
    assert etcd_backup.rke2_save_command("pre upgrade") == "rke2 etcd-snapshot save --name 'pre upgrade'"
    assert etcd_backup.list_command("rke2") == "rke2 etcd-snapshot ls"
    assert etcd_backup.list_command("rke1").startswith("find /opt/rke/etcd-snapshots -maxdepth 1 -type f")
    assert etcd_backup.snapshot_name(now=__import__("datetime").datetime(2026, 11, 28, 12, 0, 5)) == "runbook-20261128t120005z"
    zipped = NodeSnapshot("cp1", "n1", "/opt/rke/etcd-snapshots/n1.zip")
    script = etcd_backup.verify_command(rke1, zipped)
    assert "d=$(mktemp -d /etc/kubernetes/.runbook-etcd-verify.XXXXXX)" in script and "n=n1" in script
    assert script.endswith('docker exec etcd etcdutl snapshot status "$d/$n" -w json')
    data = lab(tmp_path / "b", "rke2")
    data["kubernetes"]["etcdutl"] = "/opt/etcd/etcdutl"
    rke2 = load_params(write_params(tmp_path / "b", data))
    plain = NodeSnapshot("cp1", "n1-cp1-1", "/var/lib/rancher/rke2/server/db/snapshots/n1-cp1-1")
    assert etcd_backup.verify_command(rke2, plain).endswith('/opt/etcd/etcdutl snapshot status "$f" -w json')
    assert "mktemp" not in etcd_backup.verify_command(rke2, plain)
    assert etcd_backup.source_node(rke1).name == etcd_backup.source_node(rke2).name == "cp1"


def status(revision=42) -> SnapshotStatus:
    return SnapshotStatus(3355142505, revision, 812, 2_097_152, "3.6.0")


def test_the_restore_plan_per_distribution_names_the_snapshot(tmp_path):
    rke1 = load_params(write_params(tmp_path, lab(tmp_path)))
    v = Verified(NodeSnapshot("cp1", "drill-1", "/opt/rke/etcd-snapshots/drill-1.zip", 10, "2026-11-28T12:00:00Z"), "ab" * 32, status())
    (step,) = etcd_restore.plan_restore(rke1, v)
    assert step.command.endswith("etcd snapshot-restore --config " + str(tmp_path / "state" / "cluster.yml") + " --name drill-1")
    assert "snapshot drill-1 (revision 42, 812 keys, taken 2026-11-28T12:00:00Z, on cp1)" in step.change
    rke2 = load_params(write_params(tmp_path / "b", lab(tmp_path / "b", "rke2")))
    path = "/var/lib/rancher/rke2/server/db/snapshots/drill-cp1-1"
    steps = etcd_restore.plan_restore(rke2, replace(v, snapshot=NodeSnapshot("cp1", "drill-cp1-1", path)), stamp="T")
    assert [(s.host, s.command) for s in steps] == [
        ("cp1", "systemctl stop rke2-server"), ("cp2", "systemctl stop rke2-server"), ("cp3", "systemctl stop rke2-server"),
        ("cp1", f"rke2 server --cluster-reset --cluster-reset-restore-path={path}"), ("cp1", "systemctl start rke2-server"),
        ("cp2", "mv /var/lib/rancher/rke2/server/db /var/lib/rancher/rke2/server/db.before-restore-T"),
        ("cp2", "systemctl start rke2-server"),
        ("cp3", "mv /var/lib/rancher/rke2/server/db /var/lib/rancher/rke2/server/db.before-restore-T"),
        ("cp3", "systemctl start rke2-server")]
    assert [s.command for s in etcd_restore.plan_restore(rke1, None)] == [None]


# -- etcdutl's answers and the listings ----------------------------------------------------------------

def test_etcdutl_status_is_read_from_its_json_and_bad_answers_are_said():
    got = etcd_backup.parse_status('{"level":"warn"}\n{"hash":3355142505,"revision":2,"totalKey":1,"totalSize":20480,"version":"3.6.0"}\n')
    assert got == SnapshotStatus(3355142505, 2, 1, 20480, "3.6.0")
    assert got.row() == {"hash": "c7fb6969", "revision": 2, "keys": 1, "size": "20.0 KiB", "etcd storage version": "3.6.0"}
    for text, message in (("Error: invalid database", "no JSON status"), ('{"hash": 1, "revision": 2}', "lacks 'totalKey'"),
                          ("{nope", "not JSON"), ('{"hash":1,"revision":0,"totalKey":0,"totalSize":0}', "an empty snapshot")):
        with pytest.raises(ValueError, match=message):
            etcd_backup.parse_status(text)
    sha, st = etcd_backup.parse_verify("sha256=" + "0" * 64 + '\n{"hash":1,"revision":7,"totalKey":3,"totalSize":4096}\n')
    assert sha == "0" * 64 and st.revision == 7
    with pytest.raises(ValueError, match="no SHA-256"):
        etcd_backup.parse_verify('{"hash":1,"revision":7,"totalKey":3,"totalSize":4096}')


def test_listings_of_both_distributions():
    rke1 = etcd_backup.parse_listing("rke1", "cp1", "n1.zip\t2048\t1795867200.5\n2026-11-28T12:00:00Z_etcd.zip\t1024\t1795867000\n"
                                                   "n1.zip.part\t3\t1\npki.bundle.tar.gz\t9\t1\nbad line\n")
    assert [(s.name, s.path, s.size, s.created) for s in rke1] == [
        ("2026-11-28T12:00:00Z_etcd", "/opt/rke/etcd-snapshots/2026-11-28T12:00:00Z_etcd.zip", 1024, "2026-11-28T11:56:40Z"),
        ("n1", "/opt/rke/etcd-snapshots/n1.zip", 2048, "2026-11-28T12:00:00Z")]
    ls = ("Name                       Location                                                              Size Created\n"
          "on-demand-cp1-1764331200   file:///var/lib/rancher/rke2/server/db/snapshots/on-demand-cp1-1764331200 20512 2026-11-28T12:00:00Z\n"
          "etcd-snapshot-cp1-17       s3://bucket/etcd-snapshot-cp1-17                                      20512 2026-11-28T12:00:00Z\n")
    assert etcd_backup.parse_listing("rke2", "cp1", ls) == [
        NodeSnapshot("cp1", "on-demand-cp1-1764331200", "/var/lib/rancher/rke2/server/db/snapshots/on-demand-cp1-1764331200", 20512,
                     "2026-11-28T12:00:00Z")]
    log = 'time="2026-11-28T12:00:00Z" level=info msg="Saving etcd snapshot to /var/lib/rancher/rke2/server/db/snapshots/x-cp1-9"\n'
    assert etcd_backup.saved_path(log) == "/var/lib/rancher/rke2/server/db/snapshots/x-cp1-9"
    assert etcd_backup.saved_path("Snapshot x saved.") is None


def test_etcds_integrity_hash_is_checked():
    data = os.urandom(4096)
    good = data + hashlib.sha256(data).digest()
    assert etcd_backup.etcd_integrity(io.BytesIO(good)) is True
    assert etcd_backup.etcd_integrity(io.BytesIO(good[:100] + b"x" + good[101:])) is False
    assert etcd_backup.etcd_integrity(io.BytesIO(data)) is None  # no hash appended


def test_the_verdict():
    assert etcd_backup.verdict(["no kubeconfig"], ["applied"], []) == "not ready"
    assert etcd_backup.verdict([], ["planned", "planned"], []) == "planned"
    assert etcd_backup.verdict([], ["applied"], ["copy differs"]) == "incomplete"
    assert etcd_backup.verdict([], ["applied", "applied"], []) == "done"


# -- with a real etcd snapshot: RKE1's zip, the verification script, the copy off the node -----------------

class LocalFleet:
    """Runs a host's commands on this machine (bash) and serves its files by SFTP from here: the script as a node runs it."""

    def __init__(self, env: dict | None = None):
        self.env = env or {}
        self.commands: list[str] = []

    def run_on(self, host, command, timeout=None, idle=None):
        self.commands.append(command)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ, **self.env}, timeout=120)
        return HostResult(host.name, done.returncode == 0, done.stdout, done.stderr, done.returncode,
                          "" if done.returncode == 0 else f"exited {done.returncode}: {done.stderr.strip()[-200:]}")

    def put(self, host, local, remote, mode=0o644):
        shutil.copyfile(local, remote)
        os.chmod(remote, mode)

    @contextlib.contextmanager
    def sftp(self, host, what):
        class Sftp:
            @staticmethod
            def get(remote, local):
                shutil.copyfile(remote, local)

        yield Sftp()


@pytest.fixture(scope="module")
def snapshot_db(tmp_path_factory):
    """A real etcd snapshot: the lab's etcd on loopback, two keys, ``etcdctl snapshot save``."""
    if not (ETCD_BIN / "etcdutl").exists():
        pytest.skip("the lab's etcd is not built (make kube-parts)")
    d = tmp_path_factory.mktemp("etcd")
    proc = subprocess.Popen([str(ETCD_BIN / "etcd"), "--data-dir", str(d / "data"), "--listen-client-urls", "http://127.0.0.1:23971",
                             "--advertise-client-urls", "http://127.0.0.1:23971", "--listen-peer-urls", "http://127.0.0.1:23981",
                             "--initial-advertise-peer-urls", "http://127.0.0.1:23981", "--initial-cluster",
                             "default=http://127.0.0.1:23981"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ctl = [str(ETCD_BIN / "etcdctl"), "--endpoints=http://127.0.0.1:23971"]
        deadline = time.monotonic() + 20
        while subprocess.run([*ctl, "put", "/registry/a", "1"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.2)
        subprocess.run([*ctl, "put", "/registry/b", "2"], check=True, capture_output=True)
        subprocess.run([*ctl, "snapshot", "save", str(d / "snap.db")], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait()
    return d / "snap.db"


def rke1_zip(folder: Path, db: Path, name: str) -> Path:
    """``N.zip`` as rke-tools leaves it in /opt/rke/etcd-snapshots (the lab's stand-in of it)."""
    k8s = folder / "k8s"
    k8s.mkdir(exist_ok=True)
    shutil.copyfile(db, folder / name)
    (k8s / f"{name}.rkestate").write_text('{"certificatesBundle": {"kube-ca": "the cluster keys"}}')
    return rketools.compress(name, str(folder), str(k8s))


def test_rke_tools_zip_holds_the_snapshot_and_the_state_as_rke_names_them(tmp_path, snapshot_db):
    path = rke1_zip(tmp_path, snapshot_db, "drill-1")
    with zipfile.ZipFile(path) as z:
        assert [i.filename for i in z.infolist()] == ["/backup/drill-1", "/etc/kubernetes/drill-1.rkestate"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    assert path.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "drill-1").exists()
    assert json.loads(rketools.statefile("drill-1", str(tmp_path)))["certificatesBundle"] == {"kube-ca": "the cluster keys"}
    assert rketools.decompress("drill-1", str(tmp_path)).read_bytes() == snapshot_db.read_bytes()


@pytest.fixture
def verifiable(tmp_path, monkeypatch, snapshot_db):
    """An RKE1 lab whose first etcd node is this machine: the snapshot zip in a folder here, etcdutl the real one."""
    monkeypatch.setattr(etcd_backup, "RKE1_SCRATCH", str(tmp_path))
    data = lab(tmp_path)
    data["kubernetes"]["etcdutl"] = str(ETCD_BIN / "etcdutl")
    params = load_params(write_params(tmp_path, data))
    path = rke1_zip(tmp_path, snapshot_db, "drill-1")
    return params, NodeSnapshot("cp1", "drill-1", str(path), path.stat().st_size, "2026-11-28T12:00:00Z")


def test_a_real_snapshot_verifies_on_its_node_and_its_copy_matches(verifiable, tmp_path):
    params, snap = verifiable
    fleet = LocalFleet()
    v = etcd_backup.verify(params, fleet, snap)
    assert v.sha256 == hashlib.sha256(Path(snap.path).read_bytes()).hexdigest()
    assert v.status.revision >= 3 and v.status.total_keys == 2 and v.status.total_size > 0
    assert not list(tmp_path.glob(".runbook-etcd-verify.*"))  # the scratch copy is gone
    copied = etcd_backup.copy_off(params, fleet, v)
    local = tmp_path / "backups" / "lab" / "drill-1.zip"
    assert copied.ok and copied.destination == str(local) and copied.integrity is True
    assert local.read_bytes() == Path(snap.path).read_bytes() and local.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    side = json.loads((tmp_path / "backups" / "lab" / "drill-1.zip.json").read_text())
    assert side["sha256"] == v.sha256 and side["status"]["revision"] == v.status.revision
    assert [r["snapshot"] for r in etcd_backup.copies(params)] == ["drill-1"]


def test_a_damaged_snapshot_or_copy_is_refused(verifiable, tmp_path):
    params, snap = verifiable
    fleet = LocalFleet()
    v = etcd_backup.verify(params, fleet, snap)
    with pytest.raises(SnapshotError, match="copy was damaged on the way and removed"):
        etcd_backup.copy_off(params, fleet, replace(v, sha256="0" * 64))
    assert list((tmp_path / "backups" / "lab").iterdir()) == []
    Path(snap.path).write_bytes(b"PK not a zip at all")
    with pytest.raises(SnapshotError, match=f"cp1: {snap.path} does not verify"):
        etcd_backup.verify(params, fleet, snap)
    with pytest.raises(SnapshotError, match="no snapshot file"):
        etcd_backup.verify(params, fleet, replace(snap, path=str(tmp_path / "gone.zip")))


def test_a_restore_is_refused_unless_the_verified_snapshot_is_still_there_unchanged(verifiable, tmp_path):
    params, snap = verifiable
    fleet = LocalFleet()
    v = etcd_backup.verify(params, fleet, snap)
    assert etcd_restore.restore_blockers(params, fleet, v) == []
    assert "was not verified in this run" in etcd_restore.restore_blockers(params, fleet, None)[0]
    elsewhere = replace(v, snapshot=replace(snap, node="cp2"))
    assert "the restore reads it on cp1" in etcd_restore.restore_blockers(params, fleet, elsewhere)[0]
    confirmed = etcd_restore.plan_restore(params, v)
    other = etcd_restore.plan_restore(params, replace(v, status=status(99)))
    refused = etcd_restore.restore_now(params, fleet, tmp_path / "kubeconfig", v, other, "T")
    assert "changed since it was confirmed" in refused.error and not any("snapshot-restore" in c for c in fleet.commands)
    Path(snap.path).write_bytes(Path(snap.path).read_bytes() + b"x")
    assert "changed since it was verified" in etcd_restore.restore_blockers(params, fleet, v)[0]
    assert "changed since it was verified" in etcd_restore.restore_now(params, fleet, tmp_path / "k", v, confirmed, "T").error
    Path(snap.path).unlink()
    assert "is not there any more" in etcd_restore.restore_blockers(params, fleet, v)[0]


def test_the_drill_never_deletes_its_canary_without_a_verified_copy(tmp_path):
    params = load_params(write_params(tmp_path, lab(tmp_path)))
    drill = etcd_restore.Drill(params, LocalFleet(), tmp_path / "no-kubeconfig", "run-1")
    assert drill.canary.namespace.startswith("runbook-restore-drill-") and ("run", "run-1") in drill.canary.data
    assert [s.operation for s in drill.plan()] == ["drill canary", "etcd snapshot", "etcd snapshot copy", "drill loss", "etcd restore"]
    assert [s.command is not None for s in drill.delete_steps()] == [True]  # not tried yet: shown as planned
    drill.tried.add("create")  # the canary could not be created
    assert [s.blocked for s in drill.snapshot_steps()] == ["the canary was not created"]
    assert drill.take_snapshot(drill.snapshot_steps()).error == "not taken: the canary was not created"
    assert [s.command for s in drill.delete_steps()] == [None]
    assert drill.delete() is False and not drill.deleted  # refused before any API call
    assert drill.restore(drill.restore_steps()).error == "not restored: the canary was not deleted"
    assert drill.check() == [] and len(drill.problems) == 3


def test_an_incident_restores_only_a_snapshot_found_and_verified_on_the_restore_node(verifiable, tmp_path):
    params, snap = verifiable
    fleet = LocalFleet()
    missing = etcd_restore.Incident(params, fleet, tmp_path / "k", "nope", [snap])
    assert missing.snapshot is None and missing.verify() is None
    (step,) = missing.steps()
    assert step.command is None and step.blocked.startswith("no snapshot named nope on cp1")
    assert "nothing" in step.change and missing.restore([step]).error.startswith("the snapshot was not verified in this run")
    incident = etcd_restore.Incident(params, fleet, tmp_path / "k", "drill-1", [replace(snap, node="cp2"), snap])
    assert incident.snapshot == snap and incident.verify().status.total_keys == 2
    (step,) = incident.steps()
    assert step.command.endswith("snapshot-restore --config " + str(tmp_path / "state" / "cluster.yml") + " --name drill-1")
    assert f"(revision {incident.verified.status.revision}, 2 keys, taken 2026-11-28T12:00:00Z, on cp1)" in step.change
    done = incident.restore([step])  # the checks pass again; then rke itself is missing here: a failed step, said
    assert not done.ok and "cannot run" in done.error and incident.problems == [f"restore: {done.error}"]


def test_a_state_folder_that_cannot_be_used_blocks_and_the_schedule_still_shows(tmp_path):
    params = load_params(write_params(tmp_path, lab(tmp_path)))
    state.state_dir(params, create=True).chmod(0o755)
    assert any("readable by others" in b for b in etcd_backup.blockers(params))
    assert {r["as deployed"] for r in etcd_backup.schedule_rows(params) if r["setting"] != "meaning"} == {"-"}


def test_a_copy_to_an_inventory_host_is_checked_there(verifiable, tmp_path):
    """``etcd_backup: {host, path}``: relayed through a private folder here, written 0600, its SHA-256 taken on the host."""
    params, snap = verifiable
    data = yaml.safe_load(params.text)
    data["kubernetes"]["etcd_backup"] = {"host": "db3", "path": str(tmp_path / "srv")}
    on_host = load_params(write_params(tmp_path, data))
    fleet = LocalFleet()
    copied = etcd_backup.copy_off(on_host, fleet, etcd_backup.verify(on_host, fleet, snap))
    remote = tmp_path / "srv" / "lab" / "drill-1.zip"
    assert copied.ok and copied.destination == f"db3:{remote}" and copied.integrity is True
    assert remote.read_bytes() == Path(snap.path).read_bytes() and remote.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "srv").stat().st_mode & 0o777 == 0o700 and not list((tmp_path / "srv" / "lab").glob("*.part"))
    assert json.loads((tmp_path / "srv" / "lab" / "drill-1.zip.json").read_text())["sha256"] == copied.sha256
