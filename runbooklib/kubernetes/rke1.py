"""RKE1's cluster.yml, rendered from the parameter file.

Catches the seed's own pitfall: ``service_cluster_ip_range`` must be the same on ``kube-api`` and
``kube-controller`` (RKE defaults them independently), and the cluster DNS address must lie inside
that range; both are set here from ``kubernetes.service_cidr`` and ``kubernetes.cluster_dns``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..params import Params
from ..schema import K8S_ROLES


def render_cluster_yml(params: Params, ssh_key_path: str | Path | None = None) -> str:
    """cluster.yml for the Kubernetes nodes of ``params`` (hosts with etcd/controlplane/worker roles)."""
    k = params.kubernetes
    if k is None:
        raise ValueError(f"{params.source}: no kubernetes section; nothing to render")
    key = str(ssh_key_path or params.ssh.key.path(params.source_dir))
    nodes = []
    for h in params.hosts:
        roles = [r for r in K8S_ROLES if r in h.roles]
        if not roles:
            continue
        node = {"address": str(h.address), "port": str(h.ssh_port), "user": h.user, "role": roles,
                "hostname_override": h.name, "ssh_key_path": key}
        if h.labels:
            node["labels"] = dict(h.labels)
        nodes.append(node)
    service_range = str(k.service_cidr)
    config = {
        "cluster_name": k.cluster_name,
        "kubernetes_version": f"{k.version}-rancher1-1",
        "nodes": nodes,
        "services": {
            "etcd": {"snapshot": True, "retention": "72h", "creation": "6h"},
            "kube-api": {"service_cluster_ip_range": service_range},
            "kube-controller": {"service_cluster_ip_range": service_range, "cluster_cidr": str(k.cluster_cidr)},
            "kubelet": {"cluster_domain": k.cluster_domain, "cluster_dns_server": str(k.cluster_dns)},
        },
        "network": {"plugin": k.network_plugin},
        "authentication": {"strategy": "x509"},
        "authorization": {"mode": "rbac"},
        "ignore_docker_version": k.ignore_docker_version,
        "ssh_key_path": key,
    }
    header = (f"# cluster.yml for {params.environment.name}, rendered by runbooklib from {params.source}.\n"
              "# Keep it with cluster.rkestate: every later `rke up` needs both.\n")
    return header + yaml.safe_dump(config, sort_keys=False)
