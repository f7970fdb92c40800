"""Registry access planned, applied and verified on canned cluster and node states, field by field; the key never in a step."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes.client import ApiException, V1LocalObjectReference, V1ObjectMeta, V1Secret, V1ServiceAccount

from conftest import resolvable_lab_data, write_params
from runbooklib.errors import ParamsError
from runbooklib.params import load_params
from runbooklib.registry import access, lint, pullsecret
from runbooklib.secrets import Secret


def make_params(tmp_path, **registry):
    data = resolvable_lab_data(tmp_path)
    rke2 = registry.pop("rke2", False)
    if rke2:
        data["kubernetes"]["distribution"] = "rke2"
    data["registry"].update(registry)
    return load_params(write_params(tmp_path, data))


@pytest.fixture
def params(tmp_path):
    return make_params(tmp_path, namespaces=["default", "shop"])


@pytest.fixture
def rke2(tmp_path):
    return make_params(tmp_path, namespaces=["shop"], mode="both", rke2=True)


def key_of(params) -> Secret:
    return params.secret("registry.json_key")


@pytest.fixture
def seen():
    return {}


def creds_of(params, seen) -> access.Credentials:
    return access.credentials(params, key_of(params), on_secret=lambda value, label: seen.__setitem__(label, value))


def secret_forms(params, creds) -> list[str]:
    """What must never be in a plan: the key, its private key, auth, the dockerconfigjson and its base64."""
    key = key_of(params).reveal()
    private = json.loads(key)["private_key"]
    body = [line for line in private.splitlines() if "PRIVATE KEY" not in line]
    return [key, *body[:3], base64.b64encode(f"_json_key:{key}".encode()).decode(), creds.config_json,
            base64.b64encode(creds.config_json.encode()).decode()]


def texts(steps) -> str:
    return "\n".join(f"{s.host} {s.operation} {s.change} {s.command} {s.undo} {s.undo_note} {s.blocked} {s.diff}" for s in steps)


# -- the credentials ------------------------------------------------------------------------------

def test_every_derived_secret_is_registered_before_use(params, seen):
    creds = creds_of(params, seen)
    key = key_of(params).reveal()
    assert seen["registry.json_key"] == key
    assert base64.b64decode(seen["registry auth"]).decode() == f"_json_key:{key}"
    assert seen["dockerconfigjson"] == creds.config_json
    assert base64.b64decode(seen["dockerconfigjson (base64)"]).decode() == creds.config_json
    config = json.loads(creds.config_json)
    assert sorted(config["auths"]) == sorted(pullsecret.registry_hosts("europe-docker.pkg.dev")) == sorted(creds.hosts)
    assert key not in repr(creds) and creds.config_json not in repr(creds)


def test_a_key_that_is_not_a_service_account_key_is_a_lint_error_never_shown(params):
    bad = Secret('{"type": "user", "private_key": "TOPSECRETPART"}', "registry.json_key")
    creds, why = access.try_credentials(params, bad, on_secret=lambda v, label: None)
    assert creds is None and why.startswith("registry.json_key:") and "TOPSECRETPART" not in why
    findings = lint.lint(params, why)
    assert [(f.rule, f.severity) for f in findings] == [("key-unusable", "error")]
    steps = access.plan(params, creds, {}, blockers=["lint key-unusable"])
    assert len(steps) == 1 and steps[0].command is None and "key-unusable" in steps[0].blocked


def test_lint_warns_of_what_a_choice_costs(tmp_path):
    p = make_params(tmp_path, server="eu.gcr.io", mode="both", rke2=True)
    assert [(f.rule, f.severity, f.where.rsplit(": ", 1)[1]) for f in lint.lint(p)] == [
        ("container-registry-read-only", "warning", "registry.server"), ("key-on-every-node", "warning", "registry.mode"),
        ("two-copies-of-the-key", "warning", "registry.mode")]


# -- planning the cluster side --------------------------------------------------------------------

def ns(name, phase="Active", secret_type=None, digest=None, managed=False, **accounts):
    return access.NamespaceState(name, phase, secret_type, digest, managed, accounts)


def test_a_missing_namespace_is_created_then_the_secret_and_the_default_account(params, seen):
    creds = creds_of(params, seen)
    steps = access.plan(params, creds, {"default": ns("default", secret_type=pullsecret.SECRET_TYPE, digest=creds.config_sha256,
                                                      default=["gcr-pull"]),
                                        "shop": ns("shop", phase="", default=None)})
    assert [(s.host, s.operation) for s in steps] == [("namespace/shop", "namespace"), ("namespace/shop", "pull secret"),
                                                      ("namespace/shop", "service account")]
    create_ns, secret, account = steps
    assert create_ns.change == "create namespace shop (registry.namespaces lists it)"
    assert create_ns.undo == "kubectl delete namespace shop" and "nothing else" in create_ns.undo_note
    assert secret.change.startswith("create Secret gcr-pull (kubernetes.io/dockerconfigjson, sha256 " + creds.config_sha256[:12])
    assert secret.undo == "kubectl -n shop delete secret gcr-pull"
    assert account.change == "add gcr-pull to the imagePullSecrets of ServiceAccount default (made by the controller manager with the namespace)"
    assert all(form not in texts(steps) for form in secret_forms(params, creds))


def test_a_converged_cluster_plans_nothing(params, seen):
    creds = creds_of(params, seen)
    state = {n: ns(n, secret_type=pullsecret.SECRET_TYPE, digest=creds.config_sha256, managed=True, default=["other", "gcr-pull"])
             for n in ("default", "shop")}
    assert access.plan(params, creds, state) == []


def test_changed_content_is_shown_as_checksums_only(params, seen):
    creds = creds_of(params, seen)
    old = "ab" * 32
    state = {"default": ns("default", secret_type=pullsecret.SECRET_TYPE, digest=old, default=["gcr-pull"]),
             "shop": ns("shop", secret_type=pullsecret.SECRET_TYPE, digest=creds.config_sha256, managed=True, default=["gcr-pull"])}
    [step] = access.plan(params, creds, state)
    assert step.host == "namespace/default" and step.operation == "pull secret"
    assert step.change == (f"update Secret gcr-pull: content changes (sha256 {old[:12]}… → {creds.config_sha256[:12]}…); "
                           "it was not created by this runbook")
    assert step.diff == "" and all(form not in texts([step]) for form in secret_forms(params, creds))


def test_a_secret_of_another_type_blocks_naming_it(params, seen):
    creds = creds_of(params, seen)
    state = {"default": ns("default", secret_type="Opaque", digest=None, default=["gcr-pull"]),
             "shop": ns("shop", phase="Terminating")}
    steps = access.plan(params, creds, state)
    assert [(s.host, s.operation, s.command) for s in steps] == [("namespace/default", "pull secret", None),
                                                                ("namespace/shop", "namespace", None)]
    assert "Secret default/gcr-pull has type Opaque" in steps[0].blocked and "registry.secret_name" in steps[0].blocked
    assert "being deleted" in steps[1].blocked


def test_accounts_keep_their_entries_and_named_ones_are_created(tmp_path, seen):
    p = make_params(tmp_path, namespaces=["default", "shop"], service_accounts=["default", "shop/web"])
    creds = creds_of(p, seen)
    good = {"secret_type": pullsecret.SECRET_TYPE, "digest": creds.config_sha256}
    state = {"default": ns("default", **good, default=["a", "b"]), "shop": ns("shop", **good, default=["gcr-pull"], web=None)}
    steps = access.plan(p, creds, state)
    assert [(s.host, s.change) for s in steps] == [
        ("namespace/default", "add gcr-pull to the imagePullSecrets of ServiceAccount default; keeps a, b"),
        ("namespace/shop", "create ServiceAccount web with imagePullSecrets [gcr-pull]")]
    assert steps[1].undo == "kubectl -n shop delete serviceaccount web"
    assert p.registry.accounts_in("default") == ["default"] and p.registry.accounts_in("shop") == ["default", "web"]


def test_an_api_that_does_not_answer_is_one_blocked_step(params, seen):
    steps = access.plan(params, creds_of(params, seen), None, cluster_error="the API did not answer: HTTP 503")
    assert [(s.host, s.command, s.blocked) for s in steps] == [("cluster lab", None, "the API did not answer: HTTP 503")]


# -- planning the nodes (RKE2) --------------------------------------------------------------------

def node_facts(params, creds, **changed):
    good = {"sha256": creds.node_file_sha256, "mode": "600", "owner": "root", "server": "inactive", "agent": "inactive"}
    out = {}
    for h in params.hosts:
        if h.in_cluster:
            kind = "server" if {"etcd", "controlplane"} & set(h.roles) else "agent"
            out[h.name] = {**good, kind: "active", **changed.get(h.name, {})}
    return out


def test_nodes_get_the_file_then_a_restart_servers_first(rke2, seen):
    creds = creds_of(rke2, seen)
    state = {"shop": ns("shop", secret_type=pullsecret.SECRET_TYPE, digest=creds.config_sha256, default=["gcr-pull"])}
    facts = node_facts(rke2, creds, w2={"sha256": "", "mode": "", "owner": ""}, cp2={"sha256": "cd" * 32})
    steps = access.plan(rke2, creds, state, facts)
    assert [(s.host, s.operation, s.command) for s in steps] == [
        ("cp2", "registries.yaml", "registries.yaml"), ("cp2", "rke2 restart", "systemctl restart rke2-server"),
        ("w2", "registries.yaml", "registries.yaml"), ("w2", "rke2 restart", "systemctl restart rke2-agent")]
    assert steps[0].change == ("replace /etc/rancher/rke2/registries.yaml (0600, logins for 5 registry hosts): content changes "
                               f"(sha256 {'cd' * 6}… → {creds.node_file_sha256[:12]}…)")
    assert steps[2].change.startswith("write /etc/rancher/rke2/registries.yaml") and "sha256 none →" in steps[2].change
    assert "rm /etc/rancher/rke2/registries.yaml and restart rke2-agent" in steps[2].undo_note
    assert all(s.diff == "" for s in steps) and all(form not in texts(steps) for form in secret_forms(rke2, creds))
    assert access.plan(rke2, creds, state, node_facts(rke2, creds)) == []


def test_a_loose_mode_is_fixed_without_a_restart_and_a_stopped_or_lost_node_blocks(rke2, seen):
    creds = creds_of(rke2, seen)
    state = {"shop": ns("shop", secret_type=pullsecret.SECRET_TYPE, digest=creds.config_sha256, default=["gcr-pull"])}
    facts = node_facts(rke2, creds, w1={"mode": "644"}, w3={"agent": "inactive", "sha256": ""})
    del facts["w4"]
    steps = access.plan(rke2, creds, state, facts, node_errors={"w4": "connection refused"})
    assert [(s.host, s.operation, s.command) for s in steps] == [
        ("w1", "registries.yaml", "chown root /etc/rancher/rke2/registries.yaml && chmod 600 /etc/rancher/rke2/registries.yaml"),
        ("w3", "registries.yaml", None), ("w4", "registries.yaml", None)]
    assert "rke2-agent is not active on w3 (inactive)" in steps[1].blocked
    assert steps[2].blocked == "unreachable: connection refused"


def test_registries_yaml_is_refused_on_rke1_naming_the_field(tmp_path):
    with pytest.raises(ParamsError) as e:
        make_params(tmp_path, mode="registries-yaml")
    text = str(e.value)
    assert "registry.mode: registries-yaml needs RKE2" in text and "kubernetes.distribution is rke1" in text and "mode: secret" in text


def test_secret_mode_plans_no_node_step(params, seen):
    creds = creds_of(params, seen)
    assert access.plan(params, creds, {"default": ns("default", phase=""), "shop": ns("shop", phase="")},
                       nodes={}, node_errors={"cp1": "down"}) != []
    assert all(s.host.startswith("namespace/") for s in access.plan(params, creds, {}, nodes={}, node_errors={"cp1": "down"}))


# -- reading and applying through a (fake) API ----------------------------------------------------

class FakeCore:
    """The CoreV1Api calls the library makes, over dictionaries: what a real API server would answer."""

    def __init__(self):
        self.namespaces: dict[str, str] = {}
        self.secrets: dict[tuple[str, str], V1Secret] = {}
        self.accounts: dict[tuple[str, str], V1ServiceAccount] = {}
        self.patches: list[tuple[str, dict]] = []
        self.conflicts = 0

    @staticmethod
    def _404():
        return ApiException(status=404, reason="Not Found")

    def read_namespace(self, name):
        if name not in self.namespaces:
            raise self._404()
        from kubernetes.client import V1Namespace, V1NamespaceStatus

        return V1Namespace(metadata=V1ObjectMeta(name=name), status=V1NamespaceStatus(phase=self.namespaces[name]))

    def read_namespaced_secret(self, name, ns):
        if (ns, name) not in self.secrets:
            raise self._404()
        return self.secrets[(ns, name)]

    def read_namespaced_service_account(self, name, ns):
        if (ns, name) not in self.accounts:
            raise self._404()
        return self.accounts[(ns, name)]

    def patch_namespaced_service_account(self, name, ns, body):
        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")
        self.patches.append((f"{ns}/{name}", body))
        sa = self.accounts[(ns, name)]
        sa.image_pull_secrets = [V1LocalObjectReference(name=e["name"]) for e in body["imagePullSecrets"]]


def test_reading_a_namespace_keeps_only_the_checksum_of_the_secret(params, seen):
    creds = creds_of(params, seen)
    v1 = FakeCore()
    v1.namespaces["shop"] = "Active"
    v1.secrets[("shop", "gcr-pull")] = V1Secret(type=pullsecret.SECRET_TYPE, metadata=V1ObjectMeta(labels=access.MANAGED_BY),
                                                data={".dockerconfigjson": base64.b64encode(creds.config_json.encode()).decode()})
    v1.accounts[("shop", "default")] = V1ServiceAccount(image_pull_secrets=[V1LocalObjectReference(name="other")])
    st = access.read_namespace(v1, params, "shop")
    assert st == access.NamespaceState("shop", "Active", pullsecret.SECRET_TYPE, creds.config_sha256, True, {"default": ["other"]})
    assert access.read_namespace(v1, params, "gone") == access.NamespaceState("gone")
    v1.accounts.clear()
    assert access.read_namespace(v1, params, "shop").accounts == {"default": None}


def test_adding_to_an_account_keeps_its_entries_carries_its_version_and_retries_a_conflict():
    from kubernetes import client

    v1 = FakeCore()
    v1.accounts[("shop", "default")] = V1ServiceAccount(metadata=V1ObjectMeta(resource_version="41"),
                                                        image_pull_secrets=[V1LocalObjectReference(name="other")])
    v1.conflicts = 1
    access.add_pull_secret(client, v1, "shop", "default", "gcr-pull", wait=5)
    assert v1.patches == [("shop/default", {"metadata": {"resourceVersion": "41"},
                                            "imagePullSecrets": [{"name": "other"}, {"name": "gcr-pull"}]})]
    access.add_pull_secret(client, v1, "shop", "default", "gcr-pull", wait=5)
    assert len(v1.patches) == 1  # already there: nothing sent


def test_a_default_account_that_never_appears_is_a_clear_error():
    from kubernetes import client

    from runbooklib.errors import RunbookError

    with pytest.raises(RunbookError, match=r"ServiceAccount shop/default did not appear within 1 s.*kube-controller-manager"):
        access.add_pull_secret(client, FakeCore(), "shop", "default", "gcr-pull", wait=1)


# -- verification and the verdict -----------------------------------------------------------------

HOSTS = ("gcr.io", "eu.gcr.io", "us.gcr.io", "asia.gcr.io", "europe-docker.pkg.dev")


@pytest.mark.parametrize("spec, accounts, status, detail", [
    ({"containers": [{"image": "nginx:1.27"}]}, {}, "n/a", "pulls nothing from Google's registries (nginx:1.27)"),
    ({"containers": [{"image": "europe-docker.pkg.dev/shop/app/web:1"}]}, {"default": []}, "fail",
     "neither names gcr-pull in imagePullSecrets nor runs under a ServiceAccount that has it (it runs as default); attach the "
     "secret to default or name it in the pod template"),
    ({"containers": [{"image": "europe-docker.pkg.dev/shop/app/web:1"}]}, {"default": ["gcr-pull"]}, "ok",
     "runs as ServiceAccount default, which has the secret"),
    ({"initContainers": [{"image": "us-docker.pkg.dev/x/y/z"}], "containers": [{"image": "gcr.io/x/y"}],
      "imagePullSecrets": [{"name": "gcr-pull"}]}, {}, "fail",
     "pulls from us-docker.pkg.dev, which the secret does not log in to; set registry.server to that host"),
    ({"containers": [{"image": "eu.gcr.io/x/y"}], "imagePullSecrets": [{"name": "gcr-pull"}]}, {}, "ok", "names the secret"),
])
def test_each_workload_is_judged_by_where_it_pulls_from_and_how(spec, accounts, status, detail):
    r = access.workload_row("deployment", "shop", "web", spec, accounts, "gcr-pull", HOSTS)
    assert r == {"check": "workload can pull", "target": "shop/deployment/web", "status": status, "detail": detail}


def test_image_hosts():
    assert [access.image_host(i) for i in ("nginx", "library/nginx", "gcr.io/p/i", "localhost:5000/i", "europe-docker.pkg.dev/p/r/i")] == [
        "docker.io", "docker.io", "gcr.io", "localhost:5000", "europe-docker.pkg.dev"]


@pytest.mark.parametrize("status, held, errors, failed, expected", [
    ("planned", False, [], ["secret present shop/gcr-pull: none"], "planned"),
    ("applied", False, [], [], "done"),
    ("empty", False, [], [], "nothing to do"),
    ("empty", False, [], ["workload can pull shop/deployment/web: ..."], "incomplete"),
    ("applied", False, ["w1: rke2 restart failed"], [], "incomplete"),
    ("planned", True, [], [], "not ready"),
    ("applied", True, [], [], "incomplete"),
])
def test_verdicts(status, held, errors, failed, expected):
    from runbooklib.phase.steps import Step

    steps = [Step("w4", "registries.yaml", "x", None, blocked="unreachable")] if held else [Step("namespace/shop", "namespace", "x", "y")]
    result = access.AccessApply(errors=errors) if status == "applied" else None
    verdict, problems = access.verdict(steps, status, result, failed)
    assert verdict == expected
    assert problems == (["w4: registries.yaml: unreachable"] if held else []) + errors + failed
