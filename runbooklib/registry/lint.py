"""What to know about the registry settings before anything is planned: each finding with why and what to do.

The parameter file's rules (``settings.rules``) already refuse what cannot work (a server that is
not Google's, ``registries-yaml`` on RKE1, an account in an unlisted namespace); these findings are
about the key itself and about choices that work but carry a cost someone should see. A key that
cannot be used is an error (it blocks the plan); the rest are warnings.
"""

from __future__ import annotations

from ..kubernetes.lint import Finding
from . import pullsecret

WHY = {
    "no-cluster": "the Secret goes through the cluster's API and the node file onto its nodes: both come from the kubernetes section",
    "key-unusable": "the key is the one credential this runbook hands out; one that is not a service-account key logs in nowhere",
    "container-registry-read-only": "Container Registry stopped taking pushes on 2025-03-18; its gcr.io names are served by "
                                    "Artifact Registry, where new images go",
    "key-on-every-node": "registries.yaml holds the key in clear on every node's disk: whoever is root on any node, or reads a "
                         "disk image or backup of one, has the key",
    "two-copies-of-the-key": "mode both puts the key in the cluster and on every node: a rotation must reach both",
}


def lint(params, key_error: str | None = None) -> list[Finding]:
    """The findings for the ``registry`` section; ``key_error`` is why the key could not be used, if it could not."""
    r = params.registry
    where = f"{params.source}: registry"
    out = []
    if params.kubernetes is None:
        out.append(Finding("no-cluster", "error", f"{params.source}: kubernetes", "the file has no kubernetes section: no cluster "
                           "to give access to (its state_dir holds the kubeconfig, its nodes get registries.yaml)",
                           "add the kubernetes section the cluster was brought up with (03-kubernetes-cluster)"))
    if key_error:
        out.append(Finding("key-unusable", "error", f"{where}.json_key", key_error.removeprefix("registry.json_key: "),
                           "point registry.json_key at the service account's JSON key file (env: or file:)"))
    if r.server in pullsecret.GCR_HOSTS:
        out.append(Finding("container-registry-read-only", "warning", f"{where}.server",
                           f"{r.server} is a Container Registry host; the secret logs in to the gcr.io hosts only",
                           "set registry.server to the Artifact Registry host of your repositories, like europe-docker.pkg.dev"))
    if r.uses_node_file:
        out.append(Finding("key-on-every-node", "warning", f"{where}.mode",
                           f"mode {r.mode} writes the key to /etc/rancher/rke2/registries.yaml on every node (0600, root)",
                           "use mode: secret unless pods in unlisted namespaces must pull too; keep node disks and backups protected"))
    if r.mode == "both":
        out.append(Finding("two-copies-of-the-key", "warning", f"{where}.mode", "the key is in the listed namespaces' Secrets and on "
                           "every node", "rotate by running this runbook with the new key: it updates both"))
    return out

