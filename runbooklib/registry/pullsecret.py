"""Pull access to Google's registries from outside Google Cloud: the pieces the registry runbook applies.

A Google service-account JSON key logs in to Container Registry (``gcr.io`` and its regional hosts,
whose names now live on Artifact Registry) and to Artifact Registry (``<location>-docker.pkg.dev``)
with the user ``_json_key`` and the whole key as the password. Two ways to hand it to a cluster:

- a ``kubernetes.io/dockerconfigjson`` Secret per namespace, named by pods (``imagePullSecrets``) or
  attached to a ServiceAccount (every pod running under it then uses it): per namespace, visible to
  whoever may read Secrets there;
- RKE2 only: the nodes' ``/etc/rancher/rke2/registries.yaml`` (containerd logs in for every pod on
  the node): no Secret in the cluster, but the key sits in a file on every node.

The key is a secret: these functions never put it in an error, and what they return is for the
cluster or the node only (never printed: the runbook shows hosts and field names).
"""

from __future__ import annotations

import base64
import json
import re

import yaml

from ..errors import RunbookError

GCR_HOSTS = ("gcr.io", "eu.gcr.io", "us.gcr.io", "asia.gcr.io")
USER = "_json_key"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"


def registry_hosts(server: str) -> list[str]:
    """The hosts the pull secret logs in to: Container Registry's, and ``server`` when it is an Artifact Registry host."""
    if server in GCR_HOSTS:
        return list(GCR_HOSTS)
    if not re.fullmatch(r"[a-z]+(-[a-z]+)*[0-9]*-docker\.pkg\.dev", server):
        raise RunbookError(f"registry.server: {server!r} is not one of Google's registries; use a Container Registry host "
                           f"({', '.join(GCR_HOSTS)}) or an Artifact Registry host like europe-docker.pkg.dev")
    return [*GCR_HOSTS, server]


def check_key(text: str) -> dict:
    """The service-account key, parsed; an error names the field and never shows the key."""
    try:
        key = json.loads(text)
    except ValueError:
        raise RunbookError("registry.json_key: the secret is not JSON; it must be the service account's JSON key file "
                           "as Google issued it (`gcloud iam service-accounts keys create`)") from None
    if not isinstance(key, dict):
        raise RunbookError("registry.json_key: the secret is JSON but not a key object; use the JSON key file itself")
    missing = [f for f in ("type", "client_email", "private_key") if not key.get(f)]
    if missing or key.get("type") != "service_account":
        raise RunbookError(f"registry.json_key: not a service-account key (missing or wrong: {', '.join(missing) or 'type'}); "
                           "use a key of a service account with the Artifact Registry Reader role")
    return key


def dockerconfigjson(key_text: str, hosts: list[str]) -> str:
    """``.dockerconfigjson``: every host with user ``_json_key``, the whole key as password, and ``auth``."""
    check_key(key_text)
    auth = base64.b64encode(f"{USER}:{key_text}".encode()).decode()
    return json.dumps({"auths": {h: {"username": USER, "password": key_text, "auth": auth} for h in hosts}}, sort_keys=True)


def secret_manifest(name: str, namespace: str, config_json: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "runbooklib"}},
            "data": {".dockerconfigjson": base64.b64encode(config_json.encode()).decode()}}


def registries_yaml(key_text: str, hosts: list[str]) -> str:
    """RKE2's ``registries.yaml`` with the same login for every host (a node file: write it 0600)."""
    check_key(key_text)
    return yaml.safe_dump({"configs": {h: {"auth": {"username": USER, "password": key_text}} for h in hosts}}, sort_keys=True)


def pod_can_pull(pod_spec: dict, service_accounts: dict[str, list[str]], secret_name: str) -> tuple[bool, str]:
    """Whether a pod template can use the pull secret: it names it, or its ServiceAccount has it; and why not."""
    named = [s.get("name") for s in pod_spec.get("imagePullSecrets") or []]
    if secret_name in named:
        return True, "names the secret"
    account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default"
    if secret_name in service_accounts.get(account, []):
        return True, f"runs as ServiceAccount {account}, which has the secret"
    return False, (f"neither names {secret_name} in imagePullSecrets nor runs under a ServiceAccount that has it "
                   f"(it runs as {account}); attach the secret to {account} or name it in the pod template")
