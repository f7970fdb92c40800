"""The ``cache`` section: the session cache, Redis on two VMs or Redis in the cluster (Helm).

Sites without persistent volumes run Redis on VMs (``variant: vms``): a primary and a replica on
hosts with the ``cache`` role. Sites with block storage run it in the cluster (``variant: cluster``),
the seed's way: a Bitnami-style chart whose volumes use the block StorageClass. Either way the
password is a secret reference, and applications reach the cache through ``client_endpoint`` (a DNS
name or an application setting that a failover re-points).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Name, Port, SecretField, Section, need_host

MAXMEMORY_POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                      "volatile-random", "volatile-ttl")


def _save_point(value: str) -> str:
    if not re.fullmatch(r"\d+ \d+", value):
        raise ValueError(f"{value!r} is not a save point; write 'seconds changes', like '900 1'")
    return value


def _endpoint(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:\d{1,5}", value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"{value!r} is not an endpoint; write host:port, like sessions.internal:6379")
    return value


def _size(value: str) -> str:
    if not re.fullmatch(r"[1-9]\d*(Mi|Gi|Ti)", value):
        raise ValueError(f"{value!r} is not a volume size; write it as Kubernetes does, like 8Gi")
    return value


class Persistence(Section):
    """How Redis keeps sessions across a restart: RDB snapshots, an append-only file, both, or nothing."""

    rdb: bool = True
    save: list[Annotated[str, AfterValidator(_save_point)]] = ["900 1", "300 10", "60 10000"]  # Redis's defaults
    aof: bool = False
    appendfsync: Literal["always", "everysec", "no"] = "everysec"


class RedisVMs(Section):
    """Redis on two VMs with the ``cache`` role: a primary, and a replica that a failover promotes."""

    primary: Name
    replica: Name
    port: Port = 6379
    maxmemory_mb: Annotated[int, Field(ge=0)] = 0  # 0: no limit
    maxmemory_policy: Literal[MAXMEMORY_POLICIES] = "volatile-lru"  # sessions carry a TTL: evict those first
    persistence: Persistence = Persistence()


class RedisInCluster(Section):
    """Redis in the cluster from a Bitnami-style chart, its volumes on the block StorageClass."""

    namespace: Name = "sessions"
    release: Name = "sessions"
    chart: str = "oci://registry-1.docker.io/bitnamicharts/redis"
    chart_version: str = "20.11.4"
    # Bitnami moved its images to docker.io/bitnamilegacy in 2025; name your mirror here
    image_registry: Optional[str] = None
    image_repository: str = "bitnamilegacy/redis"
    storage_class: Optional[str] = None  # default: storage.ceph.storage_class
    size: Annotated[str, AfterValidator(_size)] = "8Gi"
    replicas: Annotated[int, Field(ge=0, le=10)] = 1
    secret_name: Name = "sessions-redis-auth"
    persistence: Persistence = Persistence()


class Failover(Section):
    """An incident: promote the replica. Set it for that run only."""

    candidate: Optional[Name] = None  # default: cache.vms.replica
    # when the old primary answers again: re-point it at the new primary as its replica
    repoint_old_primary: bool = True


class Cache(Section):
    variant: Literal["vms", "cluster"]
    password: SecretField
    # what applications connect to: a DNS name (or an application setting) that follows the primary
    client_endpoint: Annotated[str, AfterValidator(_endpoint)]
    session_ttl_seconds: Annotated[int, Field(ge=1, le=31_536_000)] = 1800
    vms: Optional[RedisVMs] = None
    cluster: Optional[RedisInCluster] = None
    failover: Optional[Failover] = None

    def roles(self) -> dict[str, str]:
        """host name -> its cache role (primary, replica), for the VM variant."""
        return {self.vms.primary: "primary", self.vms.replica: "replica"} if self.vms else {}


def storage_class(p) -> Optional[str]:
    """The StorageClass of the in-cluster variant: its own, else the block storage's."""
    c = p.cache.cluster
    if c and c.storage_class:
        return c.storage_class
    ceph = getattr(p.storage, "ceph", None) if p.storage is not None else None
    return ceph.storage_class if ceph is not None else None


def rules(p) -> list[Problem]:
    c = p.cache
    if c is None:
        return []
    out: list[Problem] = []
    if c.variant == "vms":
        if c.vms is None:
            return [Problem("cache.vms", "variant vms needs cache.vms (primary and replica, hosts with the cache role)")]
        out += need_host(p, "cache.vms.primary", c.vms.primary, "cache")
        out += need_host(p, "cache.vms.replica", c.vms.replica, "cache")
        if c.vms.replica == c.vms.primary:
            out.append(Problem("cache.vms.replica", f"{c.vms.replica} is also cache.vms.primary; the replica needs a host of its own "
                                                    "(a failover promotes it when the primary's host is lost)"))
        if c.cluster is not None:
            out.append(Problem("cache.cluster", "variant vms: remove cache.cluster (or set variant: cluster)"))
        if c.failover and c.failover.candidate:
            out += need_host(p, "cache.failover.candidate", c.failover.candidate, "cache")
            if c.failover.candidate == c.vms.primary:
                out.append(Problem("cache.failover.candidate", f"{c.vms.primary} is already the primary; name the replica"))
            elif c.failover.candidate != c.vms.replica:
                out.append(Problem("cache.failover.candidate", f"{c.failover.candidate} is not cache.vms.replica ({c.vms.replica}); "
                                                              "only the replica holds the sessions"))
        p_ = c.vms.persistence
        if p_.rdb and not p_.save:
            out.append(Problem("cache.vms.persistence.save", "rdb is on but no save point is set; add one ('900 1') or set rdb: false"))
    else:
        if c.cluster is None:
            return [Problem("cache.cluster", "variant cluster needs cache.cluster (namespace, release, size)")]
        if c.vms is not None:
            out.append(Problem("cache.vms", "variant cluster: remove cache.vms (or set variant: vms)"))
        if c.failover is not None:
            out.append(Problem("cache.failover", "the failover drill is for the VM variant; in the cluster the chart's replicas "
                                                 "and Sentinel (if enabled) handle it"))
        if storage_class(p) is None:
            out.append(Problem("cache.cluster.storage_class", "no StorageClass: set it, or storage.ceph (block storage) whose class "
                                                              "the cache then uses; without persistent volumes use variant vms"))
        if p.kubernetes is None:
            out.append(Problem("cache.variant", "variant cluster needs the kubernetes section (Redis runs in the cluster)"))
    return out
