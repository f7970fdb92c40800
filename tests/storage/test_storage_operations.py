"""CDN storage operations as data: a site's facts in, exactly these steps out (tests/data/storage/operations/*.yaml).

A case starts from the lab parameters (``params`` sets fields, ``environment_kind`` plays another kind of
site) and from every storage host either converged (as 06-cdn-storage leaves it) or ``site: fresh`` (a
Debian VM with the packages installed and nothing else); ``facts`` overrides per host, ``unreachable``
drops hosts. ``expect`` lists the planned steps in order: host and operation always, and the change,
command, undo, blocked reason, or fragments of them (``*_has``), where the case gives them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import lab_data, set_path, write_params
from runbooklib.params import load_params
from runbooklib.storage import operations as ops
from runbooklib.storage.facts import storage_hosts
from runbooklib.storage.settings import mount_hosts

DATA = Path(__file__).resolve().parents[1] / "data" / "storage" / "operations"
CASES = sorted(DATA.glob("*.yaml"))
BASE_FSTAB = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"


def params_for(tmp_path, case: dict):
    data = lab_data()
    for path, value in (case.get("params") or {}).items():
        set_path(data, path, value)
    p = load_params(write_params(tmp_path, data))
    if case.get("environment_kind"):  # literal lab secrets keep the file itself a lab's: play the kind on the loaded model
        p = p.model_copy(update={"environment": p.environment.model_copy(update={"kind": case["environment_kind"]})})
    return p


def converged(p, host) -> dict:
    g = p.storage.gluster
    server = ops.is_server(p, host)
    others = [n for n in g.servers if n != host.name]
    return {
        "packages": {"server": "10.3-5", "client": "10.3-5"},
        "service": {"active": "active", "enabled": "enabled"} if server else {"active": "inactive", "enabled": "disabled"},
        "pool": [{"uuid": f"uuid-{n}", "hostname": ops.address(p, n), "state": "Connected"} for n in others] if server else None,
        "volume": {"name": g.volume, "type": "Replicate", "status": "Started",
                   "bricks": [{"host": a, "path": path, "arbiter": n == g.arbiter} for (a, path), n in zip(ops.wanted_bricks(p), g.servers)],
                   "options": {"nfs.disable": "on", **g.options}} if server else None,
        "brick_folder": {"parent_exists": True, "on_root": True, "filesystem": "/"},
        "mounted": {"source": f"{ops.volfile_servers(p, host)[0]}:/{g.volume}", "fstype": "fuse.glusterfs"}
                   if host.name in mount_hosts(p) else {"source": "", "fstype": ""},
        "fstab": ops.desired_fstab(p, host, BASE_FSTAB) if host.name in mount_hosts(p) else BASE_FSTAB,
    }


def fresh(p, host) -> dict:
    return {
        "packages": {"server": "10.3-5", "client": "10.3-5"},
        "service": {"active": "inactive", "enabled": "disabled"},
        "pool": None, "volume": None,
        "brick_folder": {"parent_exists": False, "on_root": True, "filesystem": "/"},
        "mounted": {"source": "", "fstype": ""},
        "fstab": BASE_FSTAB,
    }


def site_facts(p, case: dict) -> dict[str, dict]:
    base = fresh if case.get("site") == "fresh" else converged
    out = {h.name: base(p, h) for h in storage_hosts(p) if h.name not in (case.get("unreachable") or [])}
    for host, overrides in (case.get("facts") or {}).items():
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(out[host].get(key), dict):
                out[host][key] = {**out[host][key], **value}
            else:
                out[host][key] = copy.deepcopy(value)
    return out


def described(step) -> dict:
    out = {"host": step.host, "operation": step.operation, "change": step.change, "command": step.command, "undo": step.undo}
    if step.blocked:
        out["blocked"] = step.blocked
    if step.diff:
        out["diff"] = step.diff
    return out


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_operation_case(path, tmp_path):
    case = yaml.safe_load(path.read_text())
    p = params_for(tmp_path, case)
    got = [described(s) for s in ops.plan(p, site_facts(p, case))]
    expect = case["expect"]
    assert [(s["host"], s["operation"]) for s in got] == [(e["host"], e["operation"]) for e in expect], got
    for g, e in zip(got, expect):
        for key, want in e.items():
            if key.endswith("_has"):
                for fragment in [want] if isinstance(want, str) else want:
                    assert fragment in (g.get(key[:-4]) or ""), f"{g['host']} {g['operation']}: {key[:-4]} {g.get(key[:-4])!r} lacks {fragment!r}"
            else:
                assert g.get(key) == want, f"{g['host']} {g['operation']}: {key} is {g.get(key)!r}, the case says {want!r}"


def test_the_converged_site_plans_nothing_for_every_case_s_parameters(tmp_path):
    """Idempotency as data: whatever a case's parameters, the site 06 leaves behind needs no step."""
    for path in CASES:
        case = yaml.safe_load(path.read_text())
        p = params_for(tmp_path, case)
        assert ops.plan(p, site_facts(p, {})) == [], path.stem


def test_the_fstab_keeps_every_other_line_and_replaces_only_the_mount_path_s(tmp_path):
    p = params_for(tmp_path, {})
    w1 = p.host("w1")
    current = ("UUID=abc / ext4 errors=remount-ro 0 1\n# 10.0.0.9:/old /cdn-data nfs defaults 0 0\n"
               "10.0.0.9:/old /cdn-data/ nfs defaults 0 0\n10.0.0.9:/old /cdn-data nfs4 defaults 0 0\n/swap none swap sw 0 0\n")
    want = ops.desired_fstab(p, w1, current)
    assert want.splitlines() == ["UUID=abc / ext4 errors=remount-ro 0 1", "# 10.0.0.9:/old /cdn-data nfs defaults 0 0",
                                 ops.fstab_line(p, w1), "/swap none swap sw 0 0"]
    assert ops.desired_fstab(p, w1, want) == want


def test_a_brick_host_mounts_from_itself_first_and_names_the_others_as_backups(tmp_path):
    p = params_for(tmp_path, {"params": {"storage.gluster.arbiter": "cp1"}})
    edge2, w1, cp1, e1 = (str(p.host(n).address) for n in ("edge2", "w1", "cp1", "edge1"))
    assert ops.fstab_line(p, p.host("edge2")) == f"{edge2}:/cdn /cdn-data glusterfs defaults,_netdev,backup-volfile-servers={e1}:{cp1} 0 0"
    assert ops.fstab_line(p, p.host("w1")) == f"{e1}:/cdn /cdn-data glusterfs defaults,_netdev,backup-volfile-servers={edge2}:{cp1} 0 0"
    assert w1 not in ops.fstab_line(p, p.host("w1"))


class RecordingFleet:
    """A stand-in for :class:`runbooklib.ssh.Fleet` that changes nothing: a host's batched steps (one script, as
    :func:`runbooklib.phase.steps.batch_script` writes it) run in the real bash with each step's command replaced
    by ``true``, or ``false`` for the ones it is told to fail; it records the step commands bash reached."""

    def __init__(self, p, steps, failing: str = ""):
        self.hosts, self.ssh, self.steps, self.ran, self.failing = list(p.hosts), p.ssh, steps, [], failing

    def each(self, fn, hosts=None, desc=""):
        return {h.name: fn(h) for h in (hosts if hosts is not None else self.hosts)}

    def run_on(self, host, command, timeout=None, idle=None):
        import subprocess

        from runbooklib.ssh import HostResult

        mine = sorted({s.command for s in self.steps if s.host == host.name and s.command and s.command in command}, key=command.index)
        script = command
        for c in mine:
            script = script.replace(c, "false" if self.failing and self.failing in c else "true", 1)
        for c in mine:
            self.ran.append((host.name, c))
            if self.failing and self.failing in c:
                break
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout)
        return HostResult(host.name, done.returncode == 0, done.stdout, done.stderr, done.returncode,
                          "" if done.returncode == 0 else f"exit code {done.returncode}")


def test_the_apply_runs_stage_by_stage_and_a_failed_stage_stops_the_later_ones(tmp_path):
    case = {"params": {"storage.gluster.mount_on": ["edge1", "w1"]}, "site": "fresh"}
    p = params_for(tmp_path, case)
    steps = ops.plan(p, site_facts(p, case))
    fleet = RecordingFleet(p, steps)
    results = ops.apply(p, fleet, steps)
    stages = [ops.STAGE_OF[next(s.operation for s in steps if s.host == h and s.command == c)] for h, c in fleet.ran]
    assert stages == sorted(stages, key=ops.STAGES.index) and all(r.ok for r in results.values())  # hosts, then volume, then mounts

    fleet = RecordingFleet(p, steps, failing="volume create")
    results = ops.apply(p, fleet, steps)
    assert not results["edge1"].ok and "volume created" in results["edge1"].error
    assert results["w1"].error == "w1: mounts not changed: an earlier stage failed on edge1" and results["w1"].applied == []
    assert not any("mount" in c for _, c in fleet.ran) and not any("volume start" in c for _, c in fleet.ran)
    assert [s.operation for s in results["edge2"].applied] == ["glusterd running", "glusterd running", "brick folder"]


def test_the_hostpath_snippet_is_a_valid_pod_template_for_the_mounting_workers(tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from runbooklib.storage import verify

    p = params_for(tmp_path, {"params": {"storage.gluster.mount_on": ["edge1", "w2", "w4"]}})
    text = verify.hostpath_snippet(p)
    assert "in-tree GlusterFS volume plugin left Kubernetes in 1.26" in text
    spec = yaml.safe_load(text)
    spec["containers"][0]["image"] = "registry.example/app:1"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
                  "spec": {"selector": {"matchLabels": {"app": "app"}},
                           "template": {"metadata": {"labels": {"app": "app"}}, "spec": spec}}}
    kubernetes_validate.validate(deployment, "1.33.0", strict=True)
    assert spec["volumes"] == [{"name": "cdn-data", "hostPath": {"path": "/cdn-data", "type": "Directory"}}]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["w2", "w4"]  # edge1 mounts it but is no cluster node
