"""The lab's Kubernetes: real etcd, the API server stand-in, and the rke stand-in, end to end.

Real clients only: kubectl (the machine's, /usr/bin/kubectl) and the official Python client, over
HTTPS with the x509 client certificate from the kubeconfig that `rke up` wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import lab_identity, require_lab, running_lab
from runbooklab import Lab
from runbooklab.kubernetes import start_docker

require_lab("etcd", "etcdctl", "kubectl")
NET = lab_identity("rbk8s", "10.85.0.0/24")[1].rsplit(".", 2)[0] + ".0"  # the lab subnet's first three octets

KUBECTL = shutil.which("kubectl")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("k8slab"), "rbk8s", "10.85.0.0/24", profile="seed") as lab:
        yield lab


def rke(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RUNBOOK_LAB_DIR=str(lab.root))
    return subprocess.run([sys.executable, "-m", "runbooklab.kubernetes.rke", *args, "--config", str(lab.root / "cluster.yml")],
                          capture_output=True, text=True, env=env, timeout=300)


def kubectl(lab: Lab, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(lab.root / "kube_config_cluster.yml"))
    done = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def node_states(lab: Lab) -> dict[str, str]:
    out = kubectl(lab, "get", "nodes", "--no-headers").stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def edit_cluster(lab: Lab, change) -> None:
    path = lab.root / "cluster.yml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def pristine(lab) -> str:
    """cluster.yml as the product rendered it for the seed lab, before any test edits it."""
    return (lab.root / "cluster.yml").read_text()


def converged(lab: Lab, pristine: str) -> bool:
    """The seed cluster is up exactly as the pristine cluster.yml describes, every node Ready."""
    if (lab.root / "cluster.yml").read_text() != pristine or not (lab.root / "cluster.rkestate").exists():
        return False
    done = subprocess.run([KUBECTL, "get", "nodes", "--no-headers"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, KUBECONFIG=str(lab.root / "kube_config_cluster.yml")))
    wanted = {n.get("hostname_override") for n in yaml.safe_load(pristine)["nodes"]}
    states = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.strip()}
    return done.returncode == 0 and set(states) == wanted and set(states.values()) == {"Ready"}


@pytest.fixture
def cluster(lab, pristine):
    """The seed cluster as rendered, brought back before each test whatever the test before it did."""
    if not converged(lab, pristine):
        (lab.root / "cluster.yml").write_text(pristine)
        done = rke(lab, "up")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Finished building Kubernetes cluster successfully" in done.stderr
        wait_for(lambda: converged(lab, pristine), what="every node Ready")
    yield lab
    (lab.root / "cluster.yml").write_text(pristine)  # whatever the test edited, even when it failed


@pytest.fixture
def client(cluster):
    from kubernetes import client as k8s
    from kubernetes import config

    api = config.new_client_from_config(str(cluster.root / "kube_config_cluster.yml"))
    return k8s, api


def test_rke_up_lists_every_node_with_its_roles(cluster):
    assert (cluster.root / "cluster.rkestate").exists() and (cluster.root / "kube_config_cluster.yml").exists()
    wide = kubectl(cluster, "get", "nodes", "-o", "wide").stdout
    rows = {line.split()[0]: line.split() for line in wide.splitlines()[1:]}
    assert sorted(rows) == ["cp1", "cp2", "cp3", "w1", "w2", "w3", "w4", "w5"]
    assert rows["cp1"][2] == "controlplane,etcd" and rows["w3"][2] == "worker"
    assert rows["w3"][4] == f"{NET}.23"  # INTERNAL-IP, an -o wide column
    assert "lab-simulation" in rows["w1"][3]
    running = {st.name: st.processes for st in cluster.status()}
    assert {"etcd", "lab-apiserver", "lab-heartbeat", "lab-dockerd"} <= set(running["cp1"])
    assert "lab-apiserver" not in running["w1"] and "lab-heartbeat" in running["w1"]


def test_etcd_is_a_real_three_member_cluster(cluster):
    endpoints = ",".join(f"http://{NET}.{i}:2379" for i in (11, 12, 13))
    env = dict(os.environ, ETCDCTL_API="3")
    health = subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "health"], capture_output=True, text=True, env=env)
    assert health.returncode == 0 and health.stderr.count("is healthy") + health.stdout.count("is healthy") == 3
    members = subprocess.run(["etcdctl", "--endpoints", endpoints, "member", "list"], capture_output=True, text=True, env=env)
    assert sorted(line.split(", ")[2] for line in members.stdout.splitlines()) == ["cp1", "cp2", "cp3"]
    keys = subprocess.run(["etcdctl", "--endpoints", endpoints, "get", "/registry/core/nodes/", "--prefix", "--keys-only"],
                          capture_output=True, text=True, env=env).stdout.split()
    assert "/registry/core/nodes/w1" in keys  # the API objects live in etcd


def test_everything_served_says_it_is_simulated(cluster, client):
    k8s, api = client
    version = k8s.VersionApi(api).get_code()
    assert "lab-simulation" in version.git_version and version.minor == "31"
    node = k8s.CoreV1Api(api).read_node("w1")
    assert node.metadata.labels["runbook.lab/simulated"] == "true"
    assert "lab-simulation" in node.status.node_info.kubelet_version
    verbose = kubectl(cluster, "get", "--raw", "/version", "-v=8").stderr
    assert "X-Runbook-Lab: simulated Kubernetes API server stand-in" in verbose


def test_kubectl_crud_selectors_apply_and_delete(cluster, tmp_path):
    kubectl(cluster, "create", "namespace", "shop")
    kubectl(cluster, "-n", "shop", "create", "configmap", "settings", "--from-literal=mode=lab")
    kubectl(cluster, "-n", "shop", "label", "configmap", "settings", "tier=web")
    assert kubectl(cluster, "-n", "shop", "get", "cm", "-l", "tier=web", "-o", "name").stdout.split() == ["configmap/settings"]
    assert kubectl(cluster, "-n", "shop", "get", "cm", "-l", "tier!=web", "-o", "name").stdout.split() == []
    manifest = tmp_path / "web.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}],
                                       "imagePullSecrets": [{"name": "gcr-pull"}]}}}}))
    assert "created" in kubectl(cluster, "apply", "-f", str(manifest)).stdout
    assert "unchanged" in kubectl(cluster, "apply", "-f", str(manifest)).stdout
    assert "serverside-applied" in kubectl(cluster, "apply", "--server-side", "-f", str(manifest)).stdout
    got = json.loads(kubectl(cluster, "-n", "shop", "get", "deploy", "web", "-o", "json").stdout)
    assert got["metadata"]["uid"] and got["metadata"]["generation"] == 1 and got["metadata"]["creationTimestamp"]
    wait_for(lambda: json.loads(kubectl(cluster, "-n", "shop", "get", "deploy", "web", "-o", "json").stdout)
             .get("status", {}).get("readyReplicas") == 2, what="the deployment to become ready on schedulable nodes")
    described = kubectl(cluster, "describe", "node", "w1").stdout
    assert "node-role.kubernetes.io/worker=true" in described and "runbook.lab/simulated=true" in described
    assert f"InternalIP:  {NET}.21" in described
    assert 'deleted' in kubectl(cluster, "-n", "shop", "delete", "configmap", "settings").stdout
    assert kubectl(cluster, "-n", "shop", "get", "cm", "settings", check=False).returncode != 0


def test_kubectl_shows_the_server_rejection_with_the_field_named(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad", "namespace": "default"},
                                   "data": {"a": "b"}, "dta": {"typo": "x"}}))
    done = kubectl(cluster, "apply", "-f", str(bad), check=False)
    assert done.returncode != 0
    assert 'unknown field "dta"' in done.stderr


def test_python_client_crud_conflicts_and_schema(cluster, client):
    k8s, api = client
    v1 = k8s.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "py", "labels": {"team": "platform"}}})
    assert [n.metadata.name for n in v1.list_namespace(label_selector="team=platform").items] == ["py"]
    cm = v1.create_namespaced_config_map("py", {"metadata": {"name": "c1", "labels": {"app": "x"}}, "data": {"k": "v"}})
    with pytest.raises(k8s.ApiException) as dup:
        v1.create_namespaced_config_map("py", {"metadata": {"name": "c1"}})
    assert dup.value.status == 409 and json.loads(dup.value.body)["reason"] == "AlreadyExists"
    patched = v1.patch_namespaced_config_map("c1", "py", {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}
    assert int(patched.metadata.resource_version) > int(cm.metadata.resource_version)
    with pytest.raises(k8s.ApiException) as stale:
        v1.replace_namespaced_config_map("c1", "py", {"metadata": {"name": "c1", "resourceVersion": cm.metadata.resource_version},
                                                     "data": {}})
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"
    assert [c.metadata.name for c in v1.list_namespaced_config_map("py", field_selector="metadata.name=c1").items] == ["c1"]
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "py"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicyy": "Always"}]}}}}
    # the client's own models would refuse the typo before sending; send it raw, as a manifest would be
    method, url, headers, payload, _ = api.param_serialize("POST", "/apis/apps/v1/namespaces/{namespace}/deployments",
                                                           path_params={"namespace": "py"}, body=body,
                                                           header_params={"Content-Type": "application/json"})
    response = api.call_api(method, url, headers, payload)
    response.read()
    status = json.loads(response.data)
    assert response.status == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.template.spec.containers.0.imagePullPolicyy"
    with pytest.raises(k8s.ApiException) as missing_ns:
        v1.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "c"}})
    assert missing_ns.value.status == 404
    v1.delete_namespaced_config_map("c1", "py")
    with pytest.raises(k8s.ApiException) as gone:
        v1.read_namespaced_config_map("c1", "py")
    assert gone.value.status == 404


def test_custom_resources(cluster, client):
    k8s, api = client
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "cephblockpools.ceph.rook.io"},
           "spec": {"group": "ceph.rook.io", "scope": "Namespaced",
                    "names": {"plural": "cephblockpools", "singular": "cephblockpool", "kind": "CephBlockPool"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    k8s.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "rook-ceph"}})
    custom = k8s.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("ceph.rook.io", "v1", "rook-ceph", "cephblockpools", {
        "apiVersion": "ceph.rook.io/v1", "kind": "CephBlockPool", "metadata": {"name": "ceph-blockpool"},
        "spec": {"replicated": {"size": 3}, "failureDomain": "host"}})
    pools = custom.list_namespaced_custom_object("ceph.rook.io", "v1", "rook-ceph", "cephblockpools")
    assert [p["spec"]["replicated"]["size"] for p in pools["items"]] == [3]
    assert "ceph-blockpool" in kubectl(cluster, "-n", "rook-ceph", "get", "cephblockpools").stdout


def test_claims_bind_when_the_class_has_a_known_provisioner(cluster, client):
    k8s, api = client
    k8s.StorageV1Api(api).create_storage_class({"metadata": {"name": "ceph-block"}, "provisioner": "rook-ceph.rbd.csi.ceph.com"})
    v1 = k8s.CoreV1Api(api)
    v1.create_namespaced_persistent_volume_claim("default", {"metadata": {"name": "redis-data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-block", "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: v1.read_namespaced_persistent_volume_claim("redis-data", "default").status.phase == "Bound",
             what="the claim to bind")


def test_patches_watch_and_daemonsets(cluster, client):
    k8s, api = client
    from kubernetes import watch

    apps, v1 = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "wk"}})
    pod = {"containers": [{"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "proxy:1"}]}
    apps.create_namespaced_deployment("wk", {"metadata": {"name": "app"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "a"}},
        "template": {"metadata": {"labels": {"app": "a"}}, "spec": pod}}})
    # strategic merge (the client's default): containers merge by name, the sidecar stays
    apps.patch_namespaced_deployment("app", "wk", {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}})
    got = apps.read_namespaced_deployment("app", "wk")
    assert [(c.name, c.image) for c in got.spec.template.spec.containers] == [("app", "app:2"), ("sidecar", "proxy:1")]
    assert got.metadata.generation == 2
    # JSON patch
    kubectl(cluster, "-n", "wk", "patch", "deployment", "app", "--type=json",
            "-p", '[{"op": "replace", "path": "/spec/replicas", "value": 3}]')
    assert apps.read_namespaced_deployment("app", "wk").spec.replicas == 3
    # a watch sees what happens after the list it started from
    listed = v1.list_namespaced_config_map("wk")
    v1.create_namespaced_config_map("wk", {"metadata": {"name": "watched"}})
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_namespaced_config_map, "wk", resource_version=listed.metadata.resource_version, timeout_seconds=2)]
    assert ("ADDED", "watched") in events
    # a DaemonSet is scheduled on the Ready nodes its selector matches
    apps.create_namespaced_daemon_set("wk", {"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
            "nodeSelector": {"node-role.kubernetes.io/worker": "true"}, "containers": [{"name": "a", "image": "agent:1"}]}}}})
    wait_for(lambda: getattr(apps.read_namespaced_daemon_set("agent", "wk").status, "number_ready", 0) == 5,
             what="the DaemonSet ready on the 5 workers")


def test_node_goes_not_ready_when_its_vm_stops(cluster):
    cluster.stop("w4")
    try:
        wait_for(lambda: node_states(cluster)["w4"] == "NotReady", what="w4 NotReady")
        assert node_states(cluster)["w3"] == "Ready"
    finally:
        cluster.start("w4")
    wait_for(lambda: node_states(cluster)["w4"] == "Ready", what="w4 Ready again after lab start")


def test_rke_rejects_what_rke_rejects(cluster):
    before = (cluster.root / "cluster.rkestate").read_bytes()
    original = (cluster.root / "cluster.yml").read_text()
    cases = [
        (lambda c: [n.update(role=["worker"]) for n in c["nodes"]], "Cluster must have at least one etcd plane host"),
        (lambda c: c["nodes"][3].update(address=f"{NET}.999"), "is not a valid IP address"),
        (lambda c: c.update(clustr_name="x"), "unknown key(s) clustr_name"),
        (lambda c: c["nodes"][3].pop("role"), "Role for host (3) is not provided"),
        (lambda c: c["nodes"].append(dict(c["nodes"][0])), f"Cluster can't have duplicate node: {NET}.11"),
        (lambda c: c["network"].update(plugin="cilium"), "Network plugin [cilium] is not supported"),
        (lambda c: c["nodes"][0].update(role=["controlplane"]), "does not add or remove etcd members"),
    ]
    try:
        for change, reason in cases:
            (cluster.root / "cluster.yml").write_text(original)
            edit_cluster(cluster, change)
            done = rke(cluster, "up")
            assert done.returncode == 1 and reason in done.stderr and "FATA[" in done.stderr, (reason, done.stderr[-500:])
    finally:
        (cluster.root / "cluster.yml").write_text(original)
    assert (cluster.root / "cluster.rkestate").read_bytes() == before


def test_adding_the_old_elk_vms_then_removing_a_worker(cluster):
    elk = [{"address": f"{NET}.{50 + i}", "port": "22", "user": "root", "role": ["worker"], "hostname_override": f"elk{i}",
            "ssh_key_path": str(cluster.key), "labels": {"legacy": "elk"},
            "taints": [{"key": "legacy", "value": "elk", "effect": "NoSchedule"}]} for i in (1, 2, 3)]
    edit_cluster(cluster, lambda c: c["nodes"].extend(elk))
    first = rke(cluster, "up")  # the ELK VMs have no Docker yet: RKE stops at the first one
    assert first.returncode == 1
    assert f"Failed to set up SSH tunneling for host [{NET}.51]: Can't retrieve Docker Info" in first.stderr
    for vm in ("elk1", "elk2", "elk3"):
        start_docker(cluster, vm)  # the lab's "install Docker"
    done = rke(cluster, "up", "--update-only")
    assert done.returncode == 0, done.stderr[-2000:]
    wait_for(lambda: {k: v for k, v in node_states(cluster).items() if k.startswith("elk")} ==
             {"elk1": "Ready", "elk2": "Ready", "elk3": "Ready"}, what="the ELK VMs Ready as workers")
    elk1 = json.loads(kubectl(cluster, "get", "node", "elk1", "-o", "json").stdout)
    assert elk1["metadata"]["labels"]["legacy"] == "elk"
    assert elk1["spec"]["taints"] == [{"key": "legacy", "value": "elk", "effect": "NoSchedule"}]
    assert kubectl(cluster, "get", "nodes", "-l", "legacy=elk", "-o", "name").stdout.split() == [
        "node/elk1", "node/elk2", "node/elk3"]
    edit_cluster(cluster, lambda c: c.update(nodes=[n for n in c["nodes"] if n.get("hostname_override") != "w5"]))
    done = rke(cluster, "up")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "w5" not in node_states(cluster) and len(node_states(cluster)) == 10
    assert cluster.exec_in("w5", "test -f /etc/runbook-lab/boot.d/lab-heartbeat.sh").returncode == 1


def test_etcd_snapshot_wipe_restore_brings_objects_back(cluster, client):
    k8s, api = client
    v1 = k8s.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "snap"}})
    v1.create_namespaced_config_map("snap", {"metadata": {"name": "before-snapshot"}, "data": {"kept": "yes"}})
    saved = rke(cluster, "etcd", "snapshot-save", "--name", "drill")
    assert saved.returncode == 0, saved.stderr[-2000:]
    v1.delete_namespaced_config_map("before-snapshot", "snap")  # the wipe
    v1.create_namespaced_config_map("snap", {"metadata": {"name": "after-snapshot"}})
    restored = rke(cluster, "etcd", "snapshot-restore", "--name", "drill")
    assert restored.returncode == 0, restored.stderr[-2000:]
    names = wait_for(lambda: _cm_names(v1, "snap"), what="the API server back after the restore")
    assert names == ["before-snapshot"]
    assert v1.read_namespaced_config_map("before-snapshot", "snap").data == {"kept": "yes"}


def _cm_names(v1, ns):
    """Names of the namespace's config maps, or None while the API server restarts after the restore."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return [c.metadata.name for c in v1.list_namespaced_config_map(ns).items]
    except urllib3.exceptions.HTTPError:  # connection refused or reset: not back yet
        return None
    except ApiException as e:
        if e.status in (500, 502, 503, 504):  # up, but its storage not yet
            return None
        raise


def test_rke_remove_takes_the_cluster_down(cluster):
    refused = rke(cluster, "remove")
    assert refused.returncode == 1 and "--force" in refused.stderr
    done = rke(cluster, "remove", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (cluster.root / "cluster.rkestate").exists() and not (cluster.root / "kube_config_cluster.yml").exists()
    assert cluster.exec_in("cp1", "pgrep -x etcd").returncode == 1
    assert cluster.exec_in("cp1", "test -d /var/lib/etcd-lab").returncode == 1
