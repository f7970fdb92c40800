"""The ``registry`` section: pulling private images from Google's registry, as a pull secret or in RKE2's node file.

``mode`` says how the key reaches the cluster:

- ``secret`` (the default): a ``kubernetes.io/dockerconfigjson`` Secret ``secret_name`` in each of
  ``namespaces``, attached to the ServiceAccounts ``service_accounts`` (``default`` unless others are
  named). Whoever may read Secrets in those namespaces can read the key; nothing lands on the nodes.
- ``registries-yaml`` (RKE2 only): ``/etc/rancher/rke2/registries.yaml`` on every node, then RKE2
  restarted node by node so that containerd logs in for every pod. No Secret in the cluster, but the
  key sits on every node's disk.
- ``both``.

A ServiceAccount entry is ``name`` (in every listed namespace) or ``namespace/name`` (in that one only).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ..errors import Problem, RunbookError
from ..schema import Name, SecretField, Section

MODES: tuple[str, ...] = ("secret", "registries-yaml", "both")
_NAME = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"


def _account(value: str) -> str:
    import re

    if not re.fullmatch(rf"({_NAME}/)?{_NAME}", value):
        raise ValueError(f"{value!r} is not a ServiceAccount; write name (in every listed namespace) or namespace/name, "
                         "lower-case letters, digits and dashes, like default or shop/web")
    return value


ServiceAccountRef = Annotated[str, AfterValidator(_account)]


class Registry(Section):
    server: str
    secret_name: Name = "registry-pull"
    namespaces: list[Name] = ["default"]
    json_key: SecretField
    # how the key reaches the cluster: a Secret per namespace, RKE2's registries.yaml on every node, or both
    mode: Literal["secret", "registries-yaml", "both"] = "secret"
    # the ServiceAccounts that get the secret in imagePullSecrets: name (every listed namespace) or namespace/name
    service_accounts: Annotated[list[ServiceAccountRef], Field(min_length=1)] = ["default"]

    @property
    def uses_secret(self) -> bool:
        return self.mode in ("secret", "both")

    @property
    def uses_node_file(self) -> bool:
        return self.mode in ("registries-yaml", "both")

    def accounts_in(self, namespace: str) -> list[str]:
        """The ServiceAccounts that get the secret in ``namespace``, in the order the parameters list them."""
        out = []
        for entry in self.service_accounts:
            ns, _, name = entry.rpartition("/")
            if (not ns or ns == namespace) and name not in out:
                out.append(name)
        return out


def rules(p) -> list[Problem]:
    """What no single field can check: the server, the mode against the distribution, accounts in listed namespaces."""
    r = p.registry
    if r is None:
        return []
    from .pullsecret import registry_hosts

    out = []
    try:
        registry_hosts(r.server)
    except RunbookError as e:
        out.append(Problem("registry.server", str(e).removeprefix("registry.server: ")))
    k = p.kubernetes  # None also when that section is invalid: its own problems say so (the runbook's lint: no cluster)
    if r.uses_node_file and k is not None and k.distribution != "rke2":
        out.append(Problem("registry.mode", f"{r.mode} needs RKE2 (/etc/rancher/rke2/registries.yaml); kubernetes.distribution "
                                            f"is {k.distribution}, whose nodes have no such file: use mode: secret"))
    seen: dict[str, int] = {}
    for i, ns in enumerate(r.namespaces):
        if ns in seen:
            out.append(Problem(f"registry.namespaces[{i}]", f"namespace {ns} is listed twice (also registry.namespaces[{seen[ns]}])"))
        seen.setdefault(ns, i)
    if r.uses_secret and not r.namespaces:
        out.append(Problem("registry.namespaces", f"mode {r.mode} creates the secret in the listed namespaces, and none is "
                                                  "listed; name at least one (default)"))
    for i, entry in enumerate(r.service_accounts):
        ns = entry.rpartition("/")[0]
        if ns and ns not in r.namespaces:
            out.append(Problem(f"registry.service_accounts[{i}]", f"{entry} is in namespace {ns}, which registry.namespaces "
                                                                  f"does not list ({', '.join(r.namespaces) or 'none'}); "
                                                                  "add the namespace or drop the account"))
    return out
