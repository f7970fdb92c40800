"""The cluster as one distribution-neutral value: what RKE1's cluster.yml and RKE2's configs are rendered from.

:func:`spec_from_params` builds a :class:`ClusterSpec` from a parameter file; the renderers
(``rke1.py``, ``rke2.py``) write it in their distribution's format and their readers give it back,
so a rendered file can be compared with the parameter file (``lint`` does, for the ranges that
cannot change after creation). The spec is frozen and canonical (roles in :data:`K8S_ROLES` order,
labels sorted by key) so that two specs of the same cluster compare equal.

    spec = spec_from_params(load_params("params/lab.yaml"))
    [n.name for n in spec.with_role("etcd")]      # ['cp1', 'cp2', 'cp3']
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import RunbookError
from ..schema import K8S_ROLES

__all__ = ["CLUSTER_CIDR", "CLUSTER_DNS", "CLUSTER_DOMAIN", "SERVICE_CIDR", "ClusterFileError", "ClusterSpec", "NodeSpec",
           "spec_from_params"]

# The defaults RKE1 and RKE2 share (rancher/rke cluster/defaults.go, docs.rke2.io): pods, Services, the DNS Service
CLUSTER_CIDR = ipaddress.IPv4Network("10.42.0.0/16")
SERVICE_CIDR = ipaddress.IPv4Network("10.43.0.0/16")
CLUSTER_DNS = ipaddress.IPv4Address("10.43.0.10")
CLUSTER_DOMAIN = "cluster.local"


class ClusterFileError(RunbookError):
    """A rendered or hand-written cluster file that cannot be read back into a :class:`ClusterSpec`."""

    exit_code = 2

    def __init__(self, file: str, field: str, message: str):
        self.file, self.field, self.message = file, field, message
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")


@dataclass(frozen=True)
class NodeSpec:
    """One cluster node: its name, address, roles (etcd/controlplane/worker), labels and taints, and how SSH reaches it."""

    name: str
    address: str
    roles: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    taints: tuple[str, ...] = ()  # key=value:Effect, as written
    user: str = "root"
    port: int = 22

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class ClusterSpec:
    """A Kubernetes cluster as every distribution needs it; nodes in inventory order."""

    name: str
    distribution: str  # rke1 | rke2
    version: str  # v1.32.5, without any distribution suffix
    nodes: tuple[NodeSpec, ...]
    cluster_cidr: ipaddress.IPv4Network = CLUSTER_CIDR
    service_cidr: ipaddress.IPv4Network = SERVICE_CIDR
    cluster_dns: ipaddress.IPv4Address = CLUSTER_DNS
    cluster_domain: str = CLUSTER_DOMAIN
    cni: str = "canal"
    etcd_snapshot_interval_hours: int = 6
    etcd_snapshot_retention: int = 12  # snapshots kept
    system_default_registry: str | None = None
    tls_san: tuple[str, ...] = ()  # names beyond the control-plane nodes' own addresses
    kubelet_extra_args: tuple[tuple[str, str], ...] = ()  # in the parameter file's order
    # how nodes are upgraded (RKE1's upgrade_strategy; runbook 11 on RKE2): workers at a time, each drained first
    upgrade_worker_batch: int = 1
    drain_timeout_seconds: int = 300
    drain_delete_emptydir_data: bool = False

    def with_role(self, role: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.has(role)]

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in cluster {self.name}; nodes: {', '.join(n.name for n in self.nodes)}")


def canonical_roles(roles) -> tuple[str, ...]:
    """The cluster roles among ``roles``, in :data:`K8S_ROLES` order (what every format is compared in)."""
    return tuple(r for r in K8S_ROLES if r in roles)


def canonical_labels(labels: dict) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def extra_names(tls_san, nodes) -> tuple[str, ...]:
    """``tls_san`` without duplicates and without the etcd/control-plane addresses, which every certificate holds anyway."""
    own = {n.address for n in nodes if n.has("etcd") or n.has("controlplane")}
    return tuple(name for name in dict.fromkeys(tls_san) if name not in own)


def spec_from_params(params) -> ClusterSpec:
    """The cluster of ``params``: every host with an etcd, controlplane or worker role, in inventory order."""
    k = params.kubernetes
    if k is None:
        raise ClusterFileError(str(params.source), "kubernetes", "no kubernetes section; add one (see params/example-production.yaml)")
    nodes = tuple(NodeSpec(name=h.name, address=str(h.address), roles=canonical_roles(h.roles), labels=canonical_labels(h.labels),
                           taints=tuple(h.taints), user=h.user, port=h.ssh_port)
                  for h in params.hosts if h.in_cluster)
    return ClusterSpec(
        name=k.cluster_name, distribution=k.distribution, version=k.version, nodes=nodes,
        cluster_cidr=k.cluster_cidr, service_cidr=k.service_cidr, cluster_dns=k.cluster_dns, cluster_domain=k.cluster_domain,
        cni=k.network_plugin, etcd_snapshot_interval_hours=k.etcd_snapshot_interval_hours,
        etcd_snapshot_retention=k.etcd_snapshot_retention, system_default_registry=k.system_default_registry,
        tls_san=extra_names(k.tls_san, nodes), kubelet_extra_args=tuple(k.kubelet_extra_args.items()),
        upgrade_worker_batch=k.upgrade_worker_batch, drain_timeout_seconds=k.drain_timeout_seconds,
        drain_delete_emptydir_data=k.drain_delete_emptydir_data)


# -- what the readers share: values from a file, each error naming the file and the field ---------

def network_at(value, file: str, field: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value))
    except ValueError as e:
        raise ClusterFileError(file, field, f"{value!r} is not an IPv4 network ({e}); write it like 10.43.0.0/16") from None


def address_at(value, file: str, field: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ClusterFileError(file, field, f"{value!r} is not an IPv4 address; write it like 10.43.0.10") from None


def mapping_at(value, file: str, field: str) -> dict:
    """``value`` when it is a mapping (an absent one is empty), else an error naming the field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClusterFileError(file, field, f"expected a mapping, found {type(value).__name__}")
    return value


def list_at(value, file: str, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ClusterFileError(file, field, f"expected a list, found {type(value).__name__}")
    return value
