"""Runbook 04 on the small lab (RKE2, mode both): the pull Secret and the nodes' registries.yaml, field by field; the key a canary."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from conftest import manifest, require_lab, runbook, running_lab
from runbooklab.kubernetes import parts
from runbooklib.registry import pullsecret

require_lab(str(parts.host_path("kubernetes", "kube-apiserver")), str(parts.host_path("kwok", "kwok")))

NB = "notebooks/04-registry-access.ipynb"
IMAGE = "europe-docker.pkg.dev/runbook-lab/shop/web:1.0"
LOG = {"cp1": "/var/log/lab-systemd/rke2-server.service.log", "w1": "/var/log/lab-systemd/rke2-agent.service.log"}
LOADED = "Using private registry config file at /etc/rancher/rke2/registries.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The small lab with its RKE2 cluster up (02 and 03 applied, as an operator would run them)."""
    with running_lab(tmp_path_factory.mktemp("registry"), "rbrg", "10.89.0.0/24", profile="small") as lab:
        archive = lab.root / "setup-archive"
        for nb in ("notebooks/02-vm-baseline.ipynb", "notebooks/03-kubernetes-cluster.ipynb"):
            done = runbook("--archive", str(archive), "run", nb, "--params", str(lab.params_file), "--apply")
            assert done.returncode == 0, done.stderr[-3000:]
        yield lab


def api(lab):
    from kubernetes import client, config

    return client, config.new_client_from_config(str(lab.root / "kubernetes" / "rke2.yaml"))


def deployment(client, name: str, account: str | None = None):
    labels = {"app": name}
    pod = client.V1PodSpec(containers=[client.V1Container(name="web", image=IMAGE)], service_account_name=account)
    return client.V1Deployment(metadata=client.V1ObjectMeta(name=name), spec=client.V1DeploymentSpec(
        replicas=1, selector=client.V1LabelSelector(match_labels=labels),
        template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod)))


def run04(lab, archive, *extra):
    return runbook("--archive", str(archive), "run", NB, "--params", str(lab.params_file), *extra)


def loads(lab, vm: str) -> int:
    """How often rke2 on ``vm`` loaded registries.yaml at a start (its log says so, never a credential)."""
    return int(lab.exec_in(vm, f"grep -c '{LOADED}' {LOG[vm]} || true").stdout.strip() or 0)


def test_pull_secret_and_node_file_applied_verified_idempotent_and_the_key_never_archived(cluster, tmp_path):
    lab = cluster
    client, a = api(lab)
    v1, apps = client.CoreV1Api(a), client.AppsV1Api(a)
    # before: a deployment in a listed namespace that names no pull secret, and an entry on default's account to keep
    apps.create_namespaced_deployment("default", deployment(client, "web"))
    v1.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="legacy"), type="Opaque", string_data={"a": "b"}))
    v1.patch_namespaced_service_account("default", "default", {"imagePullSecrets": [{"name": "legacy"}]})
    assert "shop" not in [n.metadata.name for n in v1.list_namespace().items]  # listed in the parameters: the runbook creates it
    assert loads(lab, "cp1") == 0 and loads(lab, "w1") == 0

    archive = tmp_path / "archive"
    plan = run04(lab, archive)  # without --apply: reads and plans, changes nothing
    assert plan.returncode == 0, plan.stderr[-3000:]
    m = manifest(plan.stdout)
    assert m["verdict"]["verdict"] == "planned" and m["changes"] == []
    assert "shop" not in [n.metadata.name for n in v1.list_namespace().items]

    first = run04(lab, archive, "--apply")
    assert first.returncode == 0, first.stderr[-3000:]
    m = manifest(first.stdout)
    assert m["verdict"]["verdict"] == "done", m["verdict"]
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [
        ("namespace/default", "pull secret"), ("namespace/default", "service account"),
        ("namespace/shop", "namespace"), ("namespace/shop", "pull secret"), ("namespace/shop", "service account"),
        ("cp1", "registries.yaml"), ("cp1", "rke2 restart"), ("w1", "registries.yaml"), ("w1", "rke2 restart")]

    # the Secret, field by field, in both namespaces
    key = (lab.root / "secrets" / "registry-key.json").read_text().rstrip("\n")
    hosts = pullsecret.registry_hosts("europe-docker.pkg.dev")
    for ns in ("default", "shop"):
        s = v1.read_namespaced_secret("gcr-pull", ns)
        assert s.type == "kubernetes.io/dockerconfigjson"
        assert s.metadata.labels == {"app.kubernetes.io/managed-by": "runbooklib"}
        assert list(s.data) == [".dockerconfigjson"]
        auths = json.loads(base64.b64decode(s.data[".dockerconfigjson"]))["auths"]
        assert sorted(auths) == sorted(hosts)
        for entry in auths.values():
            assert entry["username"] == "_json_key" and entry["password"] == key
            assert base64.b64decode(entry["auth"]).decode() == f"_json_key:{key}"
    assert [r.name for r in v1.read_namespaced_service_account("default", "default").image_pull_secrets] == ["legacy", "gcr-pull"]
    assert [r.name for r in v1.read_namespaced_service_account("default", "shop").image_pull_secrets] == ["gcr-pull"]
    assert v1.read_namespace("shop").metadata.labels["app.kubernetes.io/managed-by"] == "runbooklib"

    # every node: the file, root's, 0600, logging in to every host with the key; rke2 restarted once and the node Ready
    for vm in ("cp1", "w1"):
        assert lab.exec_in(vm, "stat -c '%a %U' /etc/rancher/rke2/registries.yaml").stdout.strip() == "600 root"
        configs = yaml.safe_load(lab.exec_in(vm, "cat /etc/rancher/rke2/registries.yaml").stdout)["configs"]
        assert sorted(configs) == sorted(hosts)
        assert all(c == {"auth": {"username": "_json_key", "password": key}} for c in configs.values())
        assert loads(lab, vm) == 1
        ready = {c.type: c.status for c in v1.read_node(vm).status.conditions}["Ready"]
        assert ready == "True"
        logged = lab.exec_in(vm, f"grep 'Private registry logins for' {LOG[vm]}").stdout
        assert "europe-docker.pkg.dev" in logged and key not in logged and json.loads(key)["private_key_id"] not in logged

    again = run04(lab, archive, "--apply")  # converged: nothing planned, nothing restarted
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(again.stdout)
    assert m["changes"] == [] and m["verdict"]["verdict"] == "nothing to do", m["verdict"]
    assert loads(lab, "cp1") == 1 and loads(lab, "w1") == 1

    # a workload under an account without the secret: the verification names it and says what to do
    apps.create_namespaced_deployment("shop", deployment(client, "builder", account="builder"))
    v1.create_namespaced_service_account("shop", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="builder")))
    check = run04(lab, archive)
    assert check.returncode == 4, check.stderr[-3000:]
    m = manifest(check.stdout)
    assert m["verdict"]["verdict"] == "incomplete" and m["changes"] == []
    assert m["verdict"]["problems"] == [
        "workload can pull shop/deployment/builder: neither names gcr-pull in imagePullSecrets nor runs under a ServiceAccount "
        "that has it (it runs as builder); attach the secret to builder or name it in the pod template"]
    a.close()

    # the key is a canary: in no file of the archive (notebook, HTML, manifest, journal) and not in what the runner printed
    private = json.loads(key)["private_key"]
    canaries = {"key": key, "private key line": next(line for line in private.splitlines() if len(line) == 64),
                "key base64": base64.b64encode(key.encode()).decode(),
                "auth": base64.b64encode(f"_json_key:{key}".encode()).decode(),
                "dockerconfigjson base64": s.data[".dockerconfigjson"]}
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".ipynb", ".html", ".json", ".jsonl"}
    for name, value in canaries.items():
        assert [p.name for p in files if value in p.read_bytes().decode(errors="replace")] == [], name
        assert all(value not in out.stdout + out.stderr for out in (plan, first, again, check)), name
