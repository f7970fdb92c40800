"""Block storage without a cluster: rendered objects judged by Rook's own CRD schemas, chart values rendered
by the real helm with Rook's real chart, and the prerequisite readings on recorded lsblk outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import resolvable_lab_data, set_path, write_params
from runbooklib.kubernetes import manifests
from runbooklib.params import load_params
from runbooklib.storage import rook

RELEASE = "v1.18.8"


@pytest.fixture(scope="module")
def rook_module():
    from runbooklab.rook import module_dir

    path = module_dir(RELEASE)
    if path is None:
        pytest.fail(f"Rook {RELEASE} is not in Go's module cache: `make setup` fetches it (python3 -m runbooklab.rook --fetch)")
    return path


@pytest.fixture
def params(tmp_path):
    data = resolvable_lab_data(tmp_path)
    set_path(data, "storage.ceph.nodes", [{"host": "w1", "devices": ["sdb", "sdc"]}, {"host": "w2", "devices": ["nvme1n1"]},
                                          {"host": "w3", "devices": ["disk/by-id/wwn-0x5000c500a1b2c3d4"]}])
    return load_params(write_params(tmp_path, data))


def crd_schemas(module: Path) -> dict[str, dict]:
    out = {}
    for doc in yaml.safe_load_all((module / "deploy" / "examples" / "crds.yaml").read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            version = next((v for v in doc["spec"]["versions"] if v["name"] == "v1"), None)
            if version:
                out[doc["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def test_the_rendered_cluster_and_pool_are_valid_by_rooks_own_crd_schemas(rook_module, params):
    schemas = crd_schemas(rook_module)
    objects = rook.render_objects(params)
    for name in ("ceph cluster", "block pool"):
        obj = objects[name]
        jsonschema.validate(obj, schemas[obj["kind"]])  # raises with the path of the first wrong field
    assert objects["ceph cluster"]["spec"]["storage"]["nodes"][0] == {"name": "w1", "devices": [{"name": "sdb"}, {"name": "sdc"}]}
    assert objects["block pool"]["spec"] == {"failureDomain": "host", "replicated": {"size": 3, "requireSafeReplicaSize": True}}
    bad = dict(objects["block pool"], spec={"replicated": {"size": "three"}})
    with pytest.raises(jsonschema.ValidationError):  # the schema does judge: a wrong type is refused
        jsonschema.validate(bad, schemas["CephBlockPool"])


def test_the_cluster_chart_renders_our_values_with_the_real_helm(rook_module, params, tmp_path):
    from runbooklab.kubernetes import parts

    helm = parts.host_path("helm", "helm")
    if not helm.exists():
        pytest.fail("helm is not built: `make setup` builds it (runbooklab/kbin)")
    charts = tmp_path / "charts"
    for chart in ("rook-ceph-cluster", "library"):
        shutil.copytree(rook_module / "deploy" / "charts" / chart, charts / chart)
    for p in charts.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    subprocess.run([str(helm), "dependency", "build", str(charts / "rook-ceph-cluster")], check=True, capture_output=True)
    values = tmp_path / "values.yaml"
    values.write_text(rook.to_yaml(rook.chart_values(params)["rook-ceph-cluster"]))
    out = subprocess.run([str(helm), "template", "rook-ceph-cluster", str(charts / "rook-ceph-cluster"), "-n", "rook-ceph",
                          "-f", str(values)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs if d["kind"] in ("CephCluster", "CephBlockPool", "StorageClass", "CephFilesystem",
                                                             "CephObjectStore"))
    assert kinds == ["CephBlockPool", "CephCluster", "StorageClass"]  # no filesystem, no object store: blocks only
    cluster = next(d for d in docs if d["kind"] == "CephCluster")
    assert cluster["spec"]["storage"]["nodes"] == rook.cluster_spec(params)["storage"]["nodes"]
    pool = next(d for d in docs if d["kind"] == "CephBlockPool")
    assert pool["metadata"]["name"] == "replicapool" and pool["spec"]["replicated"]["size"] == 3
    sc = next(d for d in docs if d["kind"] == "StorageClass")
    assert sc["metadata"]["name"] == "ceph-block" and sc["provisioner"] == "rook-ceph.rbd.csi.ceph.com"
    assert sc["parameters"]["pool"] == "replicapool" and sc["parameters"]["clusterID"] == "rook-ceph"


def lsblk(**dev) -> dict:
    return {"blockdevices": [{"name": "sdb", "type": "disk", "fstype": None, "size": 107374182400, "mountpoints": [None]} | dev]}


@pytest.mark.parametrize("seen, ok, detail", [
    (lsblk(), True, "raw disk, 100 GiB"),
    (lsblk(fstype="xfs"), False, "holds a xfs filesystem"),
    (lsblk(children=[{"name": "sdb1"}]), False, "has 1 partition(s)"),
    (lsblk(mountpoints=["/srv"]), False, "is mounted"),
    (lsblk(type="rom"), False, "type rom"),
    ("lsblk: /dev/sdb: not a block device", False, "not a block device here"),
])
def test_a_device_is_raw_only_without_filesystem_partitions_or_mounts(seen, ok, detail):
    row = rook.device_row("w1", "sdb", seen)
    assert (row["status"] == "ok") is ok and detail in row["detail"]
    assert bool(row["fix"]) is not ok


def test_prerequisite_output_is_read_per_device_and_the_rbd_module():
    text = ("== sdb\n" + json.dumps(lsblk()) + "\n== sdc\nlsblk: /dev/sdc: not a block device\n== rbd\nabsent\n")
    seen = rook.parse_prerequisites(text)
    assert seen["rbd"] == "absent" and isinstance(seen["devices"]["sdb"], dict)
    assert seen["devices"]["sdc"] == "lsblk: /dev/sdc: not a block device"


def test_failure_domains_by_zone_need_labels_and_three_distinct_zones(tmp_path):
    data = resolvable_lab_data(tmp_path)
    set_path(data, "storage.ceph.failure_domain", "zone")
    set_path(data, "storage.ceph.prerequisites", "enforce")
    set_path(data, "storage.ceph.nodes", [{"host": h, "devices": ["sdb"]} for h in ("w1", "w2", "w3")])
    for i, zone in ((3, "a"), (4, "b")):
        set_path(data, f"inventory.hosts[{i}].labels", {"topology.kubernetes.io/zone": zone})
    p = load_params(write_params(tmp_path, data))

    class NoFleet:
        def run(self, command, hosts=()):
            return {}
    rows = rook.prerequisite_rows(p, NoFleet(), "v1.32.2")
    domains = next(r for r in rows if r["check"] == "failure domains")
    assert domains["status"] == "fail" and "2 distinct (a, b)" in domains["detail"] and "no zone label on w3" in domains["detail"]
    version = next(r for r in rows if r["check"] == "Rook and Kubernetes")
    assert version["status"] == "ok"
    too_new = next(r for r in rook.prerequisite_rows(p, NoFleet(), "v1.36.3") if r["check"] == "Rook and Kubernetes")
    assert too_new["status"] == "fail" and "supports v1.29 to v1.34" in too_new["detail"]
    assert rook.blocking(p, rows)  # enforce (the default): a failing prerequisite blocks
    # report: failing prerequisites are shown, not blocking; but a node that did not answer was not judged, and blocks
    set_path(data, "storage.ceph.prerequisites", "report")
    report = load_params(write_params(tmp_path, data, "report.yaml"))
    assert rook.blocking(report, rows) == [f"reachable {h}: unreachable: not asked" for h in ("w1", "w2", "w3")]
    answered = [r for r in rows if r["check"] != "reachable"]
    assert not rook.blocking(report, answered) and rook.blocking(p, answered)


class FakeTools(rook.Tools):
    """kubectl diff answering as the real one does: exit 0 (same), 1 (a diff on stdout), >1 (an error on stderr)."""

    def __init__(self, answers):
        super().__init__("kubectl", "helm", Path("/nonexistent"))
        self.answers, self.asked = answers, []

    def run(self, argv, stdin=None, timeout=300):
        self.asked.append(list(argv))
        code, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, out, err)


@pytest.mark.parametrize("answer, planned, blocked", [
    ((0, "", ""), False, False),
    ((1, "--- live\n+++ merged\n-  size: 2\n+  size: 3\n", ""), True, False),
    ((2, "", 'error: resource mapping not found for name: "replicapool": no matches for kind "CephBlockPool"'), True, False),
    ((2, "", 'Error from server (NotFound): namespaces "rook-ceph" not found'), True, False),
    ((2, "", "error: You must be logged in to the server (Unauthorized)"), True, True),
])
def test_a_step_is_planned_from_kubectl_diff(answer, planned, blocked):
    tools = FakeTools([answer])
    step = rook._apply_step(tools, "block pool", "CephBlockPool replicapool", "kind: CephBlockPool\n", None, "kubectl delete ...")
    assert tools.asked[0][:3] == ["kubectl", "diff", "--server-side"]
    assert (step is not None) is planned
    if planned:
        assert (step.command is None) is blocked
        if not blocked:
            assert step.argv[:3] == ("kubectl", "apply", "--server-side") and step.stdin == "kind: CephBlockPool\n"
            assert step.diff == (answer[1] or "kind: CephBlockPool\n")


def test_the_diff_of_rooks_own_files_is_summarized_per_object():
    text = ("diff -u -N /tmp/LIVE-1/apiextensions.k8s.io.v1.CustomResourceDefinition..cephclusters.ceph.rook.io "
            "/tmp/MERGED-2/apiextensions.k8s.io.v1.CustomResourceDefinition..cephclusters.ceph.rook.io\n"
            "--- /tmp/LIVE-1/x\n+++ /tmp/MERGED-2/x\n@@ -0,0 +1,3 @@\n+a\n+b\n+c\n"
            "diff -u -N /tmp/LIVE-1/v1.Namespace..rook-ceph /tmp/MERGED-2/v1.Namespace..rook-ceph\n"
            "--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n")
    summary = manifests.summarize_diff(text, Path("rook/crds.yaml"))
    assert summary.splitlines() == [
        "# kubectl diff --server-side -f rook/crds.yaml: 2 object(s) change (run it for the full diff)",
        "apiextensions.k8s.io.v1.CustomResourceDefinition..cephclusters.ceph.rook.io: +3 -0",
        "v1.Namespace..rook-ceph: +1 -1"]


def test_an_applied_file_is_named_by_its_hash_so_another_file_is_another_plan(tmp_path):
    crds = tmp_path / "crds.yaml"
    crds.write_text("kind: CustomResourceDefinition\n")
    diff = "diff -u -N /tmp/LIVE-1/v1.X..a /tmp/MERGED-1/v1.X..a\n--- a\n+++ b\n+x\n"
    first = rook._apply_step(FakeTools([(1, diff, "")]), "rook crds", "Rook's CRDs", None, crds, "-")
    crds.write_text("kind: CustomResourceDefinition\n# changed\n")
    second = rook._apply_step(FakeTools([(1, diff, "")]), "rook crds", "Rook's CRDs", None, crds, "-")
    assert first.command != second.command and f"sha256 {rook.content_sha256(crds)}" in second.command


def test_without_a_cluster_or_with_blocking_prerequisites_the_plan_is_one_blocked_step(params, tmp_path):
    no_cluster = rook.plan(params, FakeTools([]))  # /nonexistent kubeconfig: nothing is asked of kubectl
    assert [(s.operation, s.command) for s in no_cluster] == [("rook", None)] and "run 03-kubernetes-cluster" in no_cluster[0].blocked
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    tools = FakeTools([])
    tools.kubeconfig = kubeconfig
    held = rook.plan(params, tools, ["raw device w1:/dev/sdb: holds a xfs filesystem"])
    assert [(s.operation, s.blocked) for s in held] == [("prerequisites", "raw device w1:/dev/sdb: holds a xfs filesystem")]
    assert tools.asked == []


@pytest.mark.parametrize("status, error, failing, blocked, expect", [
    ("planned", "", True, False, "planned"),          # a plan is not judged by the state it has not changed yet
    ("applied", "", False, False, "applied"),
    ("applied", "", True, False, "incomplete"),       # applied, but the verification fails
    ("empty", "", False, False, "nothing to do"),
    ("applied", "block pool failed", False, False, "incomplete"),
    ("planned", "", False, True, "not ready"),
])
def test_the_verdict_of_07(status, error, failing, blocked, expect):
    steps = [rook.Step(rook.CLUSTER, "prerequisites", "install Rook", None, blocked="no raw disk")] if blocked else []
    checks = [{"check": "StorageClass wiring", "target": "ceph-block", "status": "fail" if failing else "ok", "detail": "d"}]
    verdict, problems = rook.verdict(steps, status, error, checks)
    assert verdict == expect and bool(problems) is (expect in ("incomplete", "not ready"))
