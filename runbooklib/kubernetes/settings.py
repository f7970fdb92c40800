"""The ``kubernetes`` section: distribution, version and the cluster's address ranges."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field

from ..errors import Problem
from ..schema import Name, Section, need_role


class Kubernetes(Section):
    distribution: Literal["rke1", "rke2"] = "rke2"
    version: Annotated[str, Field(pattern=r"^v1\.\d+\.\d+$")]
    cluster_name: Name = "local"
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.43.0.0/16")
    cluster_dns: ipaddress.IPv4Address = ipaddress.IPv4Address("10.43.0.10")
    cluster_domain: str = "cluster.local"
    network_plugin: Literal["canal", "flannel", "calico", "cilium", "weave", "none"] = "canal"
    ignore_docker_version: bool = False


def rules(p) -> list[Problem]:
    k = p.kubernetes
    if k is None:
        return []
    out = need_role(p, "etcd", "kubernetes") + need_role(p, "controlplane", "kubernetes") + need_role(p, "worker", "kubernetes")
    etcd = len(p.hosts_with("etcd"))
    if etcd and etcd % 2 == 0:
        out.append(Problem("inventory.hosts", f"{etcd} hosts have role etcd; etcd needs an odd number "
                                               "(1, 3 or 5) to keep quorum through a failure"))
    if k.cluster_dns not in k.service_cidr:
        out.append(Problem("kubernetes.cluster_dns", f"{k.cluster_dns} is outside kubernetes.service_cidr "
                                                     f"{k.service_cidr}; use an address inside it (usually the .10)"))
    if k.cluster_cidr.overlaps(k.service_cidr):
        out.append(Problem("kubernetes.service_cidr", f"{k.service_cidr} overlaps kubernetes.cluster_cidr "
                                                      f"{k.cluster_cidr}; pods and services need separate ranges"))
    for i, h in enumerate(p.hosts):
        for field in ("cluster_cidr", "service_cidr"):
            net = getattr(k, field)
            if h.address.version == 4 and h.address in net:
                out.append(Problem(f"inventory.hosts[{i}].address",
                                   f"{h.address} lies inside kubernetes.{field} {net}; node addresses must not "
                                   "overlap the cluster's internal ranges"))
    return out
