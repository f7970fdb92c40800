"""Redis in the cluster (the seed's way): the chart's values and the password's Secret, rendered from the parameters.

The values are Bitnami's chart's (``architecture: replication``, a primary and ``replicas``
replicas, each with a PersistentVolumeClaim on the block StorageClass). The password is never in
the values: ``auth.existingSecret`` names a Secret the runbook renders from the secret reference,
shown with its data redacted. Bitnami moved its images to ``docker.io/bitnamilegacy`` in 2025:
``image_repository`` says which one the site mirrors.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import yaml

from .settings import storage_class

PASSWORD_KEY = "redis-password"


def values(p) -> dict[str, Any]:
    """The chart values (no secret in them)."""
    c = p.cache.cluster
    pers = c.persistence
    volume = {"enabled": True, "storageClass": storage_class(p), "size": c.size, "accessModes": ["ReadWriteOnce"]}
    config = ["maxmemory-policy volatile-lru", "save " + (" ".join(pers.save) if pers.rdb else '""'),
              f"appendonly {'yes' if pers.aof else 'no'}", f"appendfsync {pers.appendfsync}"]
    image: dict[str, Any] = {"repository": c.image_repository}
    if c.image_registry:
        image["registry"] = c.image_registry
    return {
        # the chart refuses images other than its own unless told (the legacy repository or a mirror is one)
        "global": {"security": {"allowInsecureImages": c.image_repository != "bitnami/redis" or bool(c.image_registry)}},
        "architecture": "replication",
        "image": image,
        "auth": {"enabled": True, "sentinel": False, "existingSecret": c.secret_name, "existingSecretPasswordKey": PASSWORD_KEY},
        "commonConfiguration": "\n".join(config) + "\n",
        "master": {"count": 1, "persistence": volume},
        "replica": {"replicaCount": c.replicas, "persistence": copy.deepcopy(volume)},
        "networkPolicy": {"enabled": True, "allowExternal": True},
    }


def secret_manifest(p, password: str | None = None) -> dict[str, Any]:
    """The Secret the values name; ``password`` None renders it with a placeholder (what the record shows)."""
    c = p.cache.cluster
    data = base64.b64encode(password.encode()).decode() if password is not None else "<base64 of cache.password>"
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": c.secret_name, "namespace": c.namespace, "labels": {"app.kubernetes.io/managed-by": "runbooklib"}},
            "data": {PASSWORD_KEY: data}}


def install_command(p, values_file: str = "values.yaml") -> str:
    c = p.cache.cluster
    return (f"helm upgrade --install {c.release} {c.chart} --version {c.chart_version} --namespace {c.namespace} "
            f"--create-namespace --values {values_file} --wait")


class _Dumper(yaml.SafeDumper):
    """YAML as people write it: multi-line strings as literal blocks, no anchors."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def dump(obj) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False)


def render(p) -> dict[str, str]:
    """What the record shows: the values, the Secret (password as a placeholder), the commands that install them."""
    c = p.cache.cluster
    secret = (f"kubectl create namespace {c.namespace} --dry-run=client -o yaml | kubectl apply -f - && "
              f"kubectl -n {c.namespace} create secret generic {c.secret_name} --from-file={PASSWORD_KEY}=<file holding cache.password> "
              "--dry-run=client -o yaml | kubectl apply -f -")
    return {"values.yaml": dump(values(p)), "secret.yaml": dump(secret_manifest(p)), "install": f"{secret}\n{install_command(p)}"}


def problems(v: dict[str, Any], p) -> list[str]:
    """What is wrong with rendered values, by the rules this phase promises (checked again in tests)."""
    out = []
    if v.get("architecture") != "replication":
        out.append("architecture is not replication")
    auth = v.get("auth", {})
    if not auth.get("enabled") or not auth.get("existingSecret") or "password" in auth:
        out.append("auth must be enabled with existingSecret and no password")
    for part in ("master", "replica"):
        pv = v.get(part, {}).get("persistence", {})
        if not pv.get("enabled") or pv.get("storageClass") != storage_class(p):
            out.append(f"{part}.persistence must be enabled on {storage_class(p)}")
    return out
