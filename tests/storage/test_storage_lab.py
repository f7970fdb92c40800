"""Runbook 06 on a lab of two edge nodes, two workers and a control plane node (real glusterd 10 and FUSE mounts), headless
through the real runner.

Plan changes nothing; apply builds the replica-2 volume and mounts it on the edges and the workers; a second apply plans
nothing; a file written on one worker is on both bricks; with edge2 stopped the mounts keep working and writes go on, 06
names the stopped host, and once edge2 is back the heal completes and the file is on both bricks; a rebooted worker mounts
the volume again from its /etc/fstab, from the backup volfile server when the first brick host is down; a worker unmounted
by hand is planned and mounted again; an arbiter volume on the third host is replica 3 arbiter 1.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab, wait_for
from runbooklib.params import load_params
from runbooklib.ssh import Fleet
from runbooklib.storage import facts as storage_facts
from runbooklib.storage import verify

require_lab("/usr/sbin/glusterd", "/sbin/mount.glusterfs")
PROFILE = Path(__file__).resolve().parent / "lab-cdn.yaml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("cdnlab"), "rbcdn", "10.97.0.0/24", profile=str(PROFILE)) as lab:
        yield lab


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def params(lab):
    return lab.params_file


def run06(archive, params, *extra):
    done = runbook("--archive", str(archive), "run", "notebooks/06-cdn-storage.ipynb", "--params", str(params), *extra, timeout=600)
    if done.returncode != 0:  # the verdict's problems first: the tail of a long record may not hold them
        verdict = [line for line in done.stderr.splitlines() if "VERDICT" in line or line.startswith("  |   - ")]
        print(f"06 {' '.join(extra)} exited {done.returncode}:", *verdict, sep="\n")
    return done


def sh(lab, vm: str, command: str) -> str:
    r = lab.exec_in(vm, command)
    assert r.returncode == 0, f"{vm}: {command}: {r.stderr.strip()}"
    return r.stdout


def record(stdout: str) -> nbformat.NotebookNode:
    path = next(line.split("record:", 1)[1].strip() for line in stdout.splitlines() if "record:" in line)
    return nbformat.read(path, as_version=4)


def heal(params_file) -> list[dict]:
    p = load_params(params_file)
    with Fleet.from_params(p, progress=None) as fleet:
        bricks, _ = verify.heal_info(p, fleet)
    return bricks


def test_plan_changes_nothing_then_apply_builds_the_volume_then_nothing_to_do(lab, archive, params):
    plan = run06(archive, params)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and "PLAN mode: nothing was changed" in plan.stderr
    assert "SPLIT-BRAIN RISK" in plan.stderr
    assert sh(lab, "edge1", "systemctl is-active glusterd || true").strip() == "inactive"
    assert "cdn-data" not in sh(lab, "w1", "cat /etc/fstab")

    t0 = time.monotonic()
    up = run06(archive, params, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "applied", m["verdict"]
    changed = {(c["host"], c["operation"]) for c in m["changes"]}
    assert {("edge1", "glusterd running"), ("edge2", "glusterd running"), ("edge1", "trusted pool"), ("edge1", "volume created"),
            ("edge1", "volume started"), ("w1", "fstab entry"), ("w2", "mounted"), ("edge2", "mounted")} <= changed
    assert not any(c["host"] in ("w1", "w2") and c["operation"] == "glusterd running" for c in m["changes"])
    print(f"06 --apply on a fresh lab: {time.monotonic() - t0:.1f} s")

    # what an engineer would see on the hosts: the volume from both pool members, enabled glusterd, the mounts and fstab
    info = storage_facts.parse_volume(sh(lab, "edge2", "gluster volume info cdn"))
    e1, e2 = (str(load_params(params).host(n).address) for n in ("edge1", "edge2"))
    assert info["status"] == "Started" and [(b["host"], b["path"]) for b in info["bricks"]] == [(e1, "/bricks/cdn"), (e2, "/bricks/cdn")]
    assert sh(lab, "edge2", "systemctl is-enabled glusterd").strip() == "enabled"
    assert sh(lab, "w2", "findmnt -n -o SOURCE,FSTYPE /cdn-data").split() == [f"{e1}:/cdn", "fuse.glusterfs"]
    assert f"{e1}:/cdn /cdn-data glusterfs defaults,_netdev,backup-volfile-servers={e2} 0 0" in sh(lab, "w2", "cat /etc/fstab")
    assert f"{e2}:/cdn /cdn-data glusterfs defaults,_netdev,backup-volfile-servers={e1} 0 0" in sh(lab, "edge2", "cat /etc/fstab")

    nb = record(up.stdout)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "hostPath" in text and "/cdn-data" in text and "heal cdn info" in text and "checked by 09-edge-load-balancing" in text

    again = run06(archive, params, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(again.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "nothing to do", m["verdict"]


def test_a_file_written_on_a_worker_is_on_both_bricks(lab):
    sh(lab, "w2", "printf 'logo v1\\n' > /cdn-data/logo.txt")
    for edge in ("edge1", "edge2"):
        assert wait_for(lambda e=edge: lab.exec_in(e, "cat /bricks/cdn/logo.txt").stdout == "logo v1\n", 10, f"logo.txt on {edge}'s brick")
        assert sh(lab, edge, "cat /cdn-data/logo.txt") == "logo v1\n"


def test_with_edge2_stopped_the_mounts_keep_working_and_the_heal_completes_when_it_returns(lab, archive, params):
    assert lab.stop("edge2")
    t0 = time.monotonic()
    sh(lab, "w1", "printf 'written while edge2 was down\\n' > /cdn-data/during.txt")
    write_seconds = time.monotonic() - t0
    assert sh(lab, "w2", "cat /cdn-data/during.txt") == "written while edge2 was down\n"
    assert sh(lab, "edge1", "cat /cdn-data/logo.txt") == "logo v1\n"
    bricks = {b["host"]: b for b in heal(params)}
    e1, e2 = (str(load_params(params).host(n).address) for n in ("edge1", "edge2"))
    assert bricks[e1]["entries"] >= 1 and "/during.txt" in bricks[e1]["pending"], bricks
    assert bricks[e2]["status"] != "Connected" and not verify.heal_clean(list(bricks.values()))

    down = run06(archive, params)  # plan mode: the stopped host is named, the verdict is not clean
    assert down.returncode == 4, down.stderr[-3000:]
    m = manifest(down.stdout)
    assert m["verdict"]["verdict"] == "incomplete" and any(p.startswith("edge2: unreachable") for p in m["verdict"]["problems"]), m["verdict"]

    t1 = time.monotonic()
    assert lab.start("edge2")
    wait_for(lambda: verify.heal_clean(heal(params)), 120, "heal info clean after edge2 came back", every=1.0)
    healed = time.monotonic() - t1
    assert lab.exec_in("edge2", "cat /bricks/cdn/during.txt").stdout == "written while edge2 was down\n"
    assert sh(lab, "edge2", "findmnt -n -o FSTYPE /cdn-data").strip() == "fuse.glusterfs"  # remounted at boot, from itself
    print(f"write with edge2 stopped: {write_seconds:.2f} s; heal clean {healed:.1f} s after lab.start(edge2)")

    back = run06(archive, params, "--apply")
    assert back.returncode == 0, back.stderr[-3000:]
    m = manifest(back.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "nothing to do", m["verdict"]


def test_a_rebooted_worker_mounts_the_volume_again_from_its_fstab(lab):
    assert lab.stop("w1") and lab.start("w1")
    assert sh(lab, "w1", "findmnt -n -o FSTYPE /cdn-data").strip() == "fuse.glusterfs"
    digest = hashlib.sha256(b"logo v1\n").hexdigest()
    assert sh(lab, "w1", "sha256sum /cdn-data/logo.txt").split()[0] == digest


def test_with_the_first_brick_host_down_a_rebooted_worker_mounts_from_the_backup_volfile_server(lab, params):
    """The fstab line names edge1 first; with edge1 stopped, backup-volfile-servers lets w2 mount from edge2 at boot."""
    assert lab.stop("edge1")
    try:
        assert lab.stop("w2") and lab.start("w2")
        assert sh(lab, "w2", "findmnt -n -o FSTYPE /cdn-data").strip() == "fuse.glusterfs"
        assert sh(lab, "w2", "cat /cdn-data/logo.txt") == "logo v1\n"
        sh(lab, "w2", "printf 'edge1 was down\\n' > /cdn-data/edge1-down.txt")
    finally:
        lab.start("edge1")
    wait_for(lambda: verify.heal_clean(heal(params)), 120, "heal info clean after edge1 came back", every=1.0)
    assert lab.exec_in("edge1", "cat /bricks/cdn/edge1-down.txt").stdout == "edge1 was down\n"


def test_a_worker_unmounted_by_hand_is_planned_and_mounted_again(lab, archive, params):
    sh(lab, "w2", "umount /cdn-data && mkdir -p /cdn-data")
    try:
        r = run06(archive, params)  # plan mode plans the remount; the verdict is the plan's
        assert r.returncode == 0 and manifest(r.stdout)["verdict"]["verdict"] == "planned"
        assert "w2" in r.stderr and "mount volume cdn at /cdn-data" in r.stderr
    finally:
        fixed = run06(archive, params, "--apply")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    m = manifest(fixed.stdout)
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [("w2", "mounted")] and m["verdict"]["verdict"] == "applied"


def test_an_arbiter_volume_on_a_third_host(lab, archive, params):
    data = yaml.safe_load(Path(params).read_text())
    data["storage"]["gluster"] = {"volume": "cdnarb", "bricks": ["edge1", "edge2"], "arbiter": "cp1", "brick_path": "/bricks/cdnarb",
                                  "mount_path": "/cdn-arb", "mount_on": ["w1"], "options": {"cluster.quorum-type": "auto"},
                                  "heal_timeout_seconds": 30, "allow_root_filesystem": True}
    arb = lab.root / "arbiter.yaml"
    arb.write_text(yaml.safe_dump(data, sort_keys=False))
    up = run06(archive, arb, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "applied" and "SPLIT-BRAIN RISK" not in up.stderr
    assert {("cp1", "glusterd running"), ("edge1", "trusted pool"), ("edge1", "volume options")} <= {(c["host"], c["operation"]) for c in m["changes"]}
    info = storage_facts.parse_volume(sh(lab, "cp1", "gluster volume info cdnarb"))
    assert [b["arbiter"] for b in info["bricks"]] == [False, False, True] and info["options"]["cluster.quorum-type"] == "auto"
    assert "1 x (2 + 1) = 3" in sh(lab, "edge1", "gluster volume info cdnarb")
    sh(lab, "w1", "printf 'arb\\n' > /cdn-arb/a.txt")
    # the arbiter brick holds the name, not the data
    assert wait_for(lambda: lab.exec_in("cp1", "stat -c %s /bricks/cdnarb/a.txt").stdout.strip() == "0", 10, "a.txt's name on the arbiter")
    assert sh(lab, "edge2", "cat /bricks/cdnarb/a.txt") == "arb\n"
    again = run06(archive, arb, "--apply")
    assert again.returncode == 0 and manifest(again.stdout)["changes"] == [], again.stderr[-3000:]
