"""The pull secret for Google's registries, checked field by field; the key never in an error."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import yaml

from runbooklib.errors import RunbookError
from runbooklib.registry import pullsecret


@pytest.fixture
def key_text() -> str:
    canary = secrets.token_hex(16)  # in the key's private part: must appear nowhere it should not
    return json.dumps({"type": "service_account", "project_id": "shop", "client_email": "puller@shop.iam.gserviceaccount.com",
                       "private_key_id": "abc", "private_key": f"-----BEGIN PRIVATE KEY-----\n{canary}\n-----END PRIVATE KEY-----\n"})


def test_hosts_are_container_registrys_and_the_artifact_registry_host():
    assert pullsecret.registry_hosts("europe-docker.pkg.dev") == ["gcr.io", "eu.gcr.io", "us.gcr.io", "asia.gcr.io",
                                                                  "europe-docker.pkg.dev"]
    assert pullsecret.registry_hosts("eu.gcr.io") == ["gcr.io", "eu.gcr.io", "us.gcr.io", "asia.gcr.io"]
    with pytest.raises(RunbookError, match=r"registry.server: 'registry.example.com' is not one of Google's registries"):
        pullsecret.registry_hosts("registry.example.com")


def test_dockerconfigjson_field_by_field(key_text):
    hosts = pullsecret.registry_hosts("europe-docker.pkg.dev")
    config = json.loads(pullsecret.dockerconfigjson(key_text, hosts))
    assert sorted(config["auths"]) == sorted(hosts)
    for entry in config["auths"].values():
        assert entry["username"] == "_json_key" and entry["password"] == key_text
        assert base64.b64decode(entry["auth"]).decode() == f"_json_key:{key_text}"
    manifest = pullsecret.secret_manifest("gcr-pull", "shop", pullsecret.dockerconfigjson(key_text, hosts))
    assert manifest["type"] == "kubernetes.io/dockerconfigjson" and manifest["metadata"]["namespace"] == "shop"
    assert json.loads(base64.b64decode(manifest["data"][".dockerconfigjson"])) == config


def test_rke2_registries_yaml_logs_in_to_every_host(key_text):
    data = yaml.safe_load(pullsecret.registries_yaml(key_text, ["gcr.io", "europe-docker.pkg.dev"]))
    assert data == {"configs": {h: {"auth": {"username": "_json_key", "password": key_text}} for h in ("gcr.io", "europe-docker.pkg.dev")}}


@pytest.mark.parametrize("bad, field", [("not json", "is not JSON"), ("[1, 2]", "not a key object"),
                                        ('{"type": "user", "client_email": "a", "private_key": "SECRETPART"}', "wrong: type"),
                                        ('{"type": "service_account", "private_key": "SECRETPART"}', "missing or wrong: client_email")])
def test_a_bad_key_is_refused_naming_the_field_never_showing_it(bad, field):
    with pytest.raises(RunbookError) as e:
        pullsecret.dockerconfigjson(bad, ["gcr.io"])
    assert str(e.value).startswith("registry.json_key:") and field in str(e.value)
    assert "SECRETPART" not in str(e.value)


def test_a_pod_can_pull_by_name_or_through_its_service_account():
    accounts = {"default": [], "web": ["gcr-pull"]}
    assert pullsecret.pod_can_pull({"imagePullSecrets": [{"name": "gcr-pull"}]}, accounts, "gcr-pull") == (True, "names the secret")
    assert pullsecret.pod_can_pull({"serviceAccountName": "web"}, accounts, "gcr-pull")[0] is True
    ok, why = pullsecret.pod_can_pull({"containers": []}, accounts, "gcr-pull")
    assert not ok and "runs as default" in why and "attach the secret to default" in why
