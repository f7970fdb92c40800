"""The lab's Kubernetes: real etcd 3.6, kube-apiserver, controller-manager and scheduler, started by rke.

Real clients only: kubectl and etcdctl of the same releases (built by runbooklab/kbin), helm, and the
official Python client, over HTTPS with the x509 client certificate from the kubeconfig that `rke up`
wrote. The nodes are the lab's VMs, managed by KWOK inside each VM (no kubelet): the tests check what
the real controllers and scheduler do with them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import LAB_PARAMS, lab_identity, require_lab, running_lab, wait_for
from runbooklab import Lab, daemon
from runbooklab.kubernetes import parts, start_docker

VERSION = yaml.safe_load(LAB_PARAMS.read_text())["kubernetes"]["version"]  # the seed's release (RKE1 ships up to 1.32)
KUBECTL = str(parts.host_path("kubernetes", "kubectl", VERSION))
HELM = str(parts.host_path("helm", "helm"))
require_lab(KUBECTL, HELM, str(parts.host_path("kubernetes", "kube-apiserver", VERSION)), str(parts.host_path("etcd", "etcd")),
            str(parts.host_path("kwok", "kwok")))
NET = lab_identity("rbk8s", "10.85.0.0/24")[1].rsplit(".", 1)[0]  # the lab subnet's first three octets


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("k8slab"), "rbk8s", "10.85.0.0/24", profile="seed") as lab:
        yield lab


def rke(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RUNBOOK_LAB_DIR=str(lab.root))
    return subprocess.run([sys.executable, "-m", "runbooklab.kubernetes.rke", *args, "--config", str(lab.root / "cluster.yml")],
                          capture_output=True, text=True, env=env, timeout=300)


def kubectl(lab: Lab, *args: str, check: bool = True, stdin: str | None = None, kubeconfig=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig or lab.root / "kube_config_cluster.yml"))
    done = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


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
        wait_for(lambda: converged(lab, pristine), timeout=60, what="every node Ready")
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
    assert rows["w3"][5] == f"{NET}.23"  # INTERNAL-IP, an -o wide column
    assert rows["w1"][4] == f"{VERSION}+kwok-lab-simulation"  # VERSION: no kubelet runs, and the node says so
    running = {st.name: st.processes for st in cluster.status()}
    # real processes, run by the lab's service manager as RKE runs its containers ("kube-controller" is
    # kube-controller-manager's name cut to the kernel's 15 characters)
    assert {"etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok", "lab-dockerd"} <= set(running["cp1"])
    assert {"nginx", "kwok"} <= set(running["w1"]) and not {"kube-apiserver", "etcd"} & set(running["w1"])
    # RKE1's DNS add-on: the kube-dns Service at cluster.yml's cluster DNS address
    dns = yaml.safe_load((cluster.root / "cluster.yml").read_text())["services"]["kubelet"]["cluster_dns_server"]
    assert kubectl(cluster, "-n", "kube-system", "get", "service", "kube-dns", "-o", "jsonpath={.spec.clusterIP}").stdout == dns


def test_kubectl_and_the_server_are_the_same_real_release(cluster, client):
    k8s, api = client
    versions = json.loads(kubectl(cluster, "version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"] == VERSION
    server = k8s.VersionApi(api).get_code()
    assert server.git_version == VERSION and server.minor == VERSION.split(".")[1]
    assert server.git_tree_state == "clean" and server.git_commit.startswith("h1:")  # the module's go.sum hash
    node = k8s.CoreV1Api(api).read_node("w1")
    assert node.metadata.labels["runbook.lab/simulated"] == "true"
    assert "no kubelet" in node.metadata.annotations["runbook.lab/simulation"]
    assert node.status.node_info.container_runtime_version.startswith("kwok://")
    stand_in = subprocess.run([str(cluster.root / "bin" / "rke"), "--version"], capture_output=True, text=True)
    assert "stand-in" in stand_in.stdout


def test_controllers_elect_one_leader_across_the_control_plane(cluster, client):
    k8s, api = client
    leases = {lease.metadata.name: lease.spec.holder_identity
              for lease in k8s.CoordinationV1Api(api).list_namespaced_lease("kube-system").items}
    assert leases["kube-controller-manager"].split("_")[0] in ("cp1", "cp2", "cp3")
    assert leases["kube-scheduler"].split("_")[0] in ("cp1", "cp2", "cp3")
    assert sum(name.startswith("apiserver-") for name in leases) == 3  # one identity lease per API server


def etcdctl_in(lab: Lab, vm: str, args: str, cert: bool = True) -> subprocess.CompletedProcess:
    """etcdctl 3.6 inside an etcd node, with that node's certificate (or none)."""
    endpoints = ",".join(f"https://{NET}.{i}:2379" for i in (11, 12, 13))
    creds = (f"--cacert=/etc/kubernetes/ssl/ca.pem --cert=/etc/kubernetes/ssl/kube-etcd-{vm}.pem "
             f"--key=/etc/kubernetes/ssl/kube-etcd-{vm}-key.pem") if cert else "--insecure-transport=false --insecure-skip-tls-verify"
    return lab.exec_in(vm, f"{parts.vm_path('etcd', 'etcdctl')} --endpoints={endpoints} {creds} --command-timeout=5s {args}")


def test_etcd_is_a_real_three_member_cluster_with_tls(cluster):
    health = etcdctl_in(cluster, "cp1", "endpoint health")
    assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3, health.stderr
    members = etcdctl_in(cluster, "cp2", "member list")
    assert sorted(line.split(", ")[2] for line in members.stdout.splitlines()) == ["etcd-cp1", "etcd-cp2", "etcd-cp3"]
    assert all(", https://" in line for line in members.stdout.splitlines())  # peers speak TLS
    keys = etcdctl_in(cluster, "cp3", "get /registry/minions/ --prefix --keys-only").stdout.split()
    assert "/registry/minions/w1" in keys  # the API objects live in etcd (Nodes under their historic name)
    version = cluster.exec_in("cp1", f"{parts.vm_path('etcd', 'etcd')} --version").stdout
    assert f"etcd Version: {parts.default_version('etcd').lstrip('v')}" in version
    refused = etcdctl_in(cluster, "cp1", "endpoint health", cert=False)
    assert refused.returncode != 0  # no client certificate, no answer
    # as on an RKE1 node: the Docker CLI, `docker exec` into RKE's etcd "container" (the lab's Docker stand-in)
    via_docker = cluster.exec_in("cp2", "docker exec etcd etcdctl endpoint health --cluster -w json")
    assert via_docker.returncode == 0, via_docker.stderr
    assert sorted(e["endpoint"] for e in json.loads(via_docker.stdout) if e["health"]) == [f"https://{NET}.{i}:2379" for i in (11, 12, 13)]
    assert "kube-apiserver" in cluster.exec_in("cp1", "docker ps --format '{{.Names}}'").stdout.split()
    assert "No such container: etcd" in cluster.exec_in("w1", "docker exec etcd true").stderr  # no etcd on a worker


def test_kubectl_crud_selectors_apply_and_delete(cluster, tmp_path):
    kubectl(cluster, "create", "namespace", "shop")
    wait_for(lambda: kubectl(cluster, "-n", "shop", "get", "cm", "kube-root-ca.crt", check=False).returncode == 0,
             what="the real root-CA publisher to fill the new namespace")
    kubectl(cluster, "-n", "shop", "create", "configmap", "settings", "--from-literal=mode=lab")
    kubectl(cluster, "-n", "shop", "label", "configmap", "settings", "tier=web")
    assert kubectl(cluster, "-n", "shop", "get", "cm", "-l", "tier=web", "-o", "name").stdout.split() == ["configmap/settings"]
    assert kubectl(cluster, "-n", "shop", "get", "cm", "-l", "tier!=web", "-o", "name").stdout.split() == ["configmap/kube-root-ca.crt"]
    manifest = tmp_path / "web.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}],
                                       "imagePullSecrets": [{"name": "gcr-pull"}]}}}}))
    assert "created" in kubectl(cluster, "apply", "-f", str(manifest)).stdout
    assert "unchanged" in kubectl(cluster, "apply", "-f", str(manifest)).stdout
    got = json.loads(kubectl(cluster, "-n", "shop", "get", "deploy", "web", "-o", "json").stdout)
    assert got["metadata"]["uid"] and got["metadata"]["generation"] == 1 and got["metadata"]["creationTimestamp"]
    assert "serverside-applied" in kubectl(cluster, "apply", "--server-side", "-f", str(manifest)).stdout
    managers = json.loads(kubectl(cluster, "-n", "shop", "get", "deploy", "web", "-o", "json", "--show-managed-fields").stdout)
    assert "kubectl" in {m["manager"] for m in managers["metadata"]["managedFields"]}  # the server-side apply manager
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
    # the client's own models would refuse the typo before sending; send it raw, as a manifest would be.
    # Unasked, the server drops an unknown field with a warning; with fieldValidation=Strict (what kubectl
    # sends) it refuses the object and names the field.
    method, url, headers, payload, _ = api.param_serialize("POST", "/apis/apps/v1/namespaces/{namespace}/deployments",
                                                           path_params={"namespace": "py"}, body=body,
                                                           query_params=[("fieldValidation", "Strict")],
                                                           header_params={"Content-Type": "application/json"})
    response = api.call_api(method, url, headers, payload)
    response.read()
    status = json.loads(response.data)
    assert response.status == 400 and status["reason"] == "BadRequest"
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in status["message"]
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


def test_the_volume_controller_binds_a_claim_to_a_matching_volume(cluster, client):
    k8s, api = client
    v1 = k8s.CoreV1Api(api)
    v1.create_persistent_volume({"metadata": {"name": "redis-pv"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
        "hostPath": {"path": "/srv/redis"}}})
    v1.create_namespaced_persistent_volume_claim("default", {"metadata": {"name": "redis-data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: v1.read_namespaced_persistent_volume_claim("redis-data", "default").status.phase == "Bound",
             what="the real persistent volume controller to bind the claim")
    assert v1.read_namespaced_persistent_volume_claim("redis-data", "default").spec.volume_name == "redis-pv"


def test_scheduler_spreads_replicas_over_the_worker_nodes(cluster, client):
    k8s, api = client
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "spread"}})
    k8s.AppsV1Api(api).create_namespaced_deployment("spread", {"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})

    def running():
        pods = k8s.CoreV1Api(api).list_namespaced_pod("spread").items
        return pods if len(pods) == 3 and all(p.status.phase == "Running" for p in pods) else None

    pods = wait_for(running, what="3 Running pods")
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 3 and nodes <= {"w1", "w2", "w3", "w4", "w5"}  # spread, and never on the tainted control plane
    import ipaddress
    for p in pods:
        cidr = k8s.CoreV1Api(api).read_node(p.spec.node_name).spec.pod_cidr
        assert ipaddress.ip_address(p.status.pod_ip) in ipaddress.ip_network(cidr)  # from the range the controller gave


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


def test_rbac_refuses_what_a_reader_may_not_do(cluster, client, tmp_path):
    """A user whose certificate the cluster signed (the CSR API, the real signer) may read, not delete."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k8s, api = client
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "runbook-reader"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "runbook:readers")]))
        .sign(key, hashes.SHA256()))
    k8s.CertificatesV1Api(api).create_certificate_signing_request({"metadata": {"name": "runbook-reader"}, "spec": {
        "request": base64.b64encode(request.public_bytes(serialization.Encoding.PEM)).decode(),
        "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "expirationSeconds": 3600}})
    kubectl(cluster, "certificate", "approve", "runbook-reader")
    signed = wait_for(lambda: k8s.CertificatesV1Api(api).read_certificate_signing_request("runbook-reader").status.certificate,
                      what="the controller manager's signer to issue the certificate")
    config = yaml.safe_load((cluster.root / "kube_config_cluster.yml").read_text())
    config["users"][0]["user"] = {"client-certificate-data": signed, "client-key-data": base64.b64encode(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())).decode()}
    reader = tmp_path / "reader.yaml"
    reader.write_text(yaml.safe_dump(config))
    kubectl(cluster, "create", "namespace", "rbac")
    kubectl(cluster, "-n", "rbac", "create", "configmap", "settings", "--from-literal=mode=lab")
    kubectl(cluster, "-n", "rbac", "create", "rolebinding", "readers", "--clusterrole=view", "--group=runbook:readers")
    assert kubectl(cluster, "-n", "rbac", "get", "configmaps", "-o", "name", kubeconfig=reader).stdout.split() == [
        "configmap/kube-root-ca.crt", "configmap/settings"]
    assert kubectl(cluster, "-n", "rbac", "auth", "can-i", "delete", "configmaps", kubeconfig=reader, check=False).stdout.strip() == "no"
    refused = kubectl(cluster, "-n", "rbac", "delete", "configmap", "settings", kubeconfig=reader, check=False)
    assert refused.returncode != 0
    assert 'User "runbook-reader" cannot delete resource "configmaps" in API group "" in the namespace "rbac"' in refused.stderr
    elsewhere = kubectl(cluster, "-n", "default", "get", "configmaps", kubeconfig=reader, check=False)
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr
    assert kubectl(cluster, "-n", "rbac", "get", "configmap", "settings", "-o", "name").stdout.strip() == "configmap/settings"


CHART = os.path.join(os.path.dirname(__file__), "data", "charts", "hello")


def helm(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(lab.root / "kube_config_cluster.yml"), HELM_CACHE_HOME=str(lab.root / "helm" / "cache"),
               HELM_CONFIG_HOME=str(lab.root / "helm" / "config"), HELM_DATA_HOME=str(lab.root / "helm" / "data"))
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120)


def test_helm_templates_and_installs_a_chart(cluster, client):
    k8s, api = client
    rendered = helm(cluster, "template", "greeter", CHART, "--set", "replicas=3")
    assert rendered.returncode == 0, rendered.stderr
    kinds = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(kinds) == [("ConfigMap", "greeter-greeting"), ("Deployment", "greeter"), ("Service", "greeter")]
    assert next(d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment")["spec"]["replicas"] == 3
    installed = helm(cluster, "install", "greeter", CHART, "--namespace", "helm-demo", "--create-namespace", "--wait", "--timeout", "90s")
    assert installed.returncode == 0, installed.stderr
    assert "STATUS: deployed" in installed.stdout
    assert k8s.AppsV1Api(api).read_namespaced_deployment("greeter", "helm-demo").status.ready_replicas == 2
    service = k8s.CoreV1Api(api).read_namespaced_service("greeter", "helm-demo")
    import ipaddress
    service_range = yaml.safe_load((cluster.root / "cluster.yml").read_text())["services"]["kube-api"]["service_cluster_ip_range"]
    assert ipaddress.ip_address(service.spec.cluster_ip) in ipaddress.ip_network(service_range)  # allocated by the real API server
    listed = helm(cluster, "list", "--namespace", "helm-demo", "-o", "json")
    assert [(r["name"], r["status"]) for r in json.loads(listed.stdout)] == [("greeter", "deployed")]


def test_node_goes_not_ready_when_its_vm_stops(cluster, client):
    k8s, api = client
    v1 = k8s.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "failover"}})
    k8s.AppsV1Api(api).create_namespaced_daemon_set("failover", {"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}})

    def ready_on_w4():
        pods = v1.list_namespaced_pod("failover", field_selector="spec.nodeName=w4").items
        return pods and {c.type: c.status for c in pods[0].status.conditions or []}.get("Ready")

    assert wait_for(ready_on_w4, what="the agent Ready on w4") == "True"
    cluster.stop("w4")  # its KWOK stops with it: nothing renews the node's lease
    try:
        # the real node lifecycle controller: NotReady after its grace period (50 s), the pods marked not ready
        wait_for(lambda: node_states(cluster)["w4"] == "NotReady", timeout=90, what="w4 NotReady")
        taints = {t.key for t in v1.read_node("w4").spec.taints or []}
        assert "node.kubernetes.io/unreachable" in taints
        wait_for(lambda: ready_on_w4() == "False", what="the pod on w4 marked not ready")
        assert node_states(cluster)["w3"] == "Ready"
    finally:
        cluster.start("w4")
    wait_for(lambda: node_states(cluster)["w4"] == "Ready", timeout=60, what="w4 Ready again after lab start")
    wait_for(lambda: ready_on_w4() == "True", what="the pod on w4 ready again (as its kubelet would say once back)")


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
        (lambda c: c.update(kubernetes_version="v1.99.1-rancher1-1"), "the lab has no build of kubernetes v1.99.1"),
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
    for vm in ("elk1", "elk2", "elk3"):  # the seed's ELK VMs run Docker; without it, RKE stops at the first one
        assert cluster.exec_in(vm, daemon.disable("lab-dockerd")).returncode == 0
    first = rke(cluster, "up")
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
    assert cluster.exec_in("w5", "systemctl is-enabled -q lab-kwok-node").returncode != 0
    assert cluster.exec_in("w5", "pgrep -x kwok").returncode == 1


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
    assert names == ["before-snapshot", "kube-root-ca.crt"]  # and the root-CA publisher's, as at the snapshot
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
    for process in ("etcd", "kube-apiserver", "kwok"):
        assert cluster.exec_in("cp1", f"pgrep -x {process}").returncode == 1, process
    assert cluster.exec_in("w1", "pgrep -x nginx").returncode == 1
    assert cluster.exec_in("cp1", "test -d /var/lib/etcd/member").returncode == 1
