"""The ``kubernetes`` section: distribution, version, the cluster's address ranges and what the renderers need.

Every field has a default that works except ``version``; ``rules`` are the cross-field checks that
stop a parameter file from loading. The complete list of what is wrong with a cluster definition
(including what only matters against an existing cluster) is :mod:`runbooklib.kubernetes.lint`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field

from ..errors import Problem
from ..schema import Country, Name, Section, need_host, need_role
from .spec import CLUSTER_CIDR, CLUSTER_DNS, CLUSTER_DOMAIN, SERVICE_CIDR


def _matching(pattern: str, otherwise: str):
    """A validator: the value as given if it matches ``pattern``, else a ValueError saying ``otherwise``."""
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{value!r} {otherwise}")
        return value
    return check


# RKE2 prefixes every system image with the registry: a scheme or a path would make every image name invalid
_registry_host = _matching(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:\d{1,5})?",
                           "is not a registry host; write host or host:port without a scheme or a path, like registry.example.internal:5000")
_san = _matching(r"[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?",
                 "is not a host name or an IP address; a certificate name is one of those, like api.example.internal or 192.0.2.10")


def _kubelet_args(value: dict[str, str]) -> dict[str, str]:
    for flag in value:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", flag):
            raise ValueError(f"{flag!r} is not a kubelet flag name; write it without leading dashes and without "
                             "its value, like volume-plugin-dir (the value goes after the colon)")
    return value


def _own_folder(value: str) -> str:
    # the folder holds cluster.rkestate and kubeconfigs: it must be a folder of its own, made private
    if value.strip() in ("", ".", "./"):
        raise ValueError(f"{value!r} is the parameter file's own folder; the state (cluster.rkestate, kubeconfigs) "
                         "needs a folder of its own, like kubernetes-state")
    return value


def _snapshot_name(value: str) -> str:
    # RKE1 takes it as the file name under /opt/rke/etcd-snapshots (and adds .zip), RKE2 as a file name under its db folder
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", value):
        raise ValueError(f"{value!r} is not a snapshot name; write it as the runbook lists it (letters, digits, '.', '_', ':', '-'), "
                         "like runbook-20261128t120000z or etcd-snapshot-cp1-1764331200")
    return value


class EtcdBackup(Section):
    """Where etcd snapshots are copied off the nodes, and what the incident runbook does beyond taking one.

    A snapshot holds every Secret of the cluster (RKE1's also holds ``cluster.rkestate``, the cluster's
    keys): the copies must stay in the data country, in a folder only you can read.
    """

    # a local folder (relative to the parameter file) with ``country``, where it physically is; or, with
    # ``host``, an absolute folder on that inventory host (the host's location.country then counts)
    path: str
    country: Optional[Country] = None
    host: Optional[str] = None
    # the restore drill (etcd-snapshot-restore with --apply): canary namespace, snapshot, delete, restore,
    # check. It rolls the whole cluster back to a snapshot taken moments before: refused in production
    drill: bool = False
    # an incident: the snapshot to restore (a name the runbook lists), restored only with --apply and
    # once verified on its node. Set it for the incident's run only
    restore: Optional[Annotated[str, AfterValidator(_snapshot_name)]] = None


def _release(value):
    # `- v1.35.4` is short for `- {version: v1.35.4}` (RKE1 needs no more: rke pulls the release's images)
    return {"version": value} if isinstance(value, str) else value


VERSION_PATTERN = r"^v1\.\d+\.\d+$"


class UpgradeRelease(Section):
    """An intermediate release of an upgrade path: the one patch release of its minor the cluster goes through."""

    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    # RKE2: that release's air-gapped files (tarball, checksums, install.sh), relative to the parameter file
    artifacts: Optional[str] = None


class Kubernetes(Section):
    distribution: Literal["rke1", "rke2"] = "rke2"
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    cluster_name: Name = "local"
    cluster_cidr: ipaddress.IPv4Network = CLUSTER_CIDR  # pods; cannot change after creation
    service_cidr: ipaddress.IPv4Network = SERVICE_CIDR  # Services; cannot change after creation
    cluster_dns: ipaddress.IPv4Address = CLUSTER_DNS  # must lie inside service_cidr
    cluster_domain: str = CLUSTER_DOMAIN
    network_plugin: Literal["canal", "flannel", "calico", "cilium", "weave", "none"] = "canal"
    ignore_docker_version: bool = False
    # recurring etcd snapshots, the backup of the whole cluster: every N hours (a divisor of 24, so
    # the cron schedule 0 */N * * * keeps even gaps), keeping the last M
    etcd_snapshot_interval_hours: Literal[1, 2, 3, 4, 6, 8, 12, 24] = 6
    etcd_snapshot_retention: Annotated[int, Field(ge=1, le=1000)] = 12
    # where every system image comes from (air-gapped sites): host[:port], no scheme
    system_default_registry: Optional[Annotated[str, AfterValidator(_registry_host)]] = None
    # extra names in the API server's certificate (a load balancer's name or address); the
    # control-plane nodes' own addresses are always in it
    tls_san: list[Annotated[str, AfterValidator(_san)]] = []
    # rendered files, cluster.rkestate and kubeconfigs, relative to the parameter file. PROTECTED:
    # it holds the cluster's credentials (keep it out of version control, readable by you only)
    state_dir: Annotated[str, AfterValidator(_own_folder)] = "kubernetes-state"
    # RKE2 air-gapped artifacts (images tarball, install script), relative to the parameter file
    artifacts: Optional[str] = None
    # kubelet flags without leading dashes, e.g. {max-pods: "150"}
    kubelet_extra_args: Annotated[dict[str, str], AfterValidator(_kubelet_args)] = {}
    # RKE1: the rke binary the runbook runs, a name on PATH or a path relative to the parameter file
    rke: str = "rke"
    # the kubectl and helm the runbooks run on this machine (names on PATH, or paths relative to the parameter
    # file), for what the API client does not do: server-side apply of manifests, kubectl diff, Helm releases
    kubectl: str = "kubectl"
    helm: str = "helm"
    # how to run etcdctl on an etcd node; default: RKE1's `docker exec etcd etcdctl`, on RKE2 `etcdctl`
    # (RKE2 ships none: install the etcd release's etcdctl on the servers, or name its path here)
    etcdctl: Optional[str] = None
    # draining a node (removal, upgrades): how long its pods may take to leave before the runbook stops
    # and lists what blocks; and whether pods' emptyDir data may be lost (kubectl's --delete-emptydir-data)
    drain_timeout_seconds: Annotated[int, Field(ge=10, le=3600)] = 300
    drain_delete_emptydir_data: bool = False
    # after a change (bring-up, nodes added or removed, an upgrade, a restore) the cluster takes a while to
    # settle (add-on pods scheduled, evicted pods started elsewhere): verification asks again for up to this long
    settle_seconds: Annotated[int, Field(ge=0, le=3600)] = 180
    # how to run etcdutl on an etcd node (it verifies snapshots); default: RKE1's `docker exec etcd etcdutl`
    # (the etcd image ships it), on RKE2 `etcdutl` (RKE2 ships none: install the etcd release's etcdutl)
    etcdutl: Optional[str] = None
    # where etcd snapshots are copied off the nodes (see EtcdBackup); the incident runbook needs it
    etcd_backup: Optional[EtcdBackup] = None
    # upgrades (runbook 11) go one minor at a time up to `version`: for every minor between the running
    # cluster's and the target's, the release to go through (RKE2: with its artifact folder), e.g.
    # [{version: v1.35.4, artifacts: rke2-artifacts/v1.35.4}]; releases below the running minor are ignored
    upgrade_path: list[Annotated[UpgradeRelease, BeforeValidator(_release)]] = []
    # workers upgraded together (each cordoned and drained first); RKE1's upgrade_strategy.max_unavailable_worker
    upgrade_worker_batch: Annotated[int, Field(ge=1, le=100)] = 1


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
    out += _upgrade_path_rules(k)
    for i, h in enumerate(p.hosts):
        for field in ("cluster_cidr", "service_cidr"):
            net = getattr(k, field)
            if h.address.version == 4 and h.address in net:
                out.append(Problem(f"inventory.hosts[{i}].address",
                                   f"{h.address} lies inside kubernetes.{field} {net}; node addresses must not "
                                   "overlap the cluster's internal ranges"))
    return out + backup_rules(p)


def backup_rules(p) -> list[Problem]:
    """``kubernetes.etcd_backup``: one place for the copies, in the data country; no drill in production."""
    b = p.kubernetes.etcd_backup
    if b is None:
        return []
    at = "kubernetes.etcd_backup"
    country = p.environment.data_country
    why = ("an etcd snapshot holds every Secret of the cluster (and RKE1's the cluster's keys in cluster.rkestate), "
           f"so its copies are data that must stay in {country} (environment.data_country)")
    out = []
    if (b.host is None) == (b.country is None):
        out.append(Problem(at, "give either country (the copies go to a local folder; say where it is) or host (an "
                               "inventory host keeps them; its location counts), not both and not neither"))
    if b.host is not None:
        found = need_host(p, f"{at}.host", b.host)
        out += found
        if not found:
            where = next(h for h in p.hosts if h.name == b.host).location.country
            if where != country:
                out.append(Problem(f"{at}.host", f"{b.host} is located in {where} (its location.country), outside {country}; "
                                                 f"{why}: choose a host located in {country}"))
        if not b.path.startswith("/"):
            out.append(Problem(f"{at}.path", f"{b.path!r} is relative; on a host it must be an absolute folder, like "
                                             "/srv/etcd-backups"))
    elif b.path.strip() in ("", ".", "./"):
        out.append(Problem(f"{at}.path", f"{b.path!r} is the parameter file's own folder; the copies need a folder of "
                                         "their own (created 0700), like etcd-backups"))
    if b.country is not None and b.country != country:
        out.append(Problem(f"{at}.country", f"{b.country} is outside {country}; {why}: keep the copies in a folder "
                                            f"located in {country}"))
    if b.drill and b.restore:
        out.append(Problem(f"{at}.restore", "drill and restore in one run: a drill restores its own snapshot; run the incident's "
                                            "restore on its own (leave drill false)"))
    if b.drill and p.environment.kind == "production":
        out.append(Problem(f"{at}.drill", "a restore drill rolls the whole cluster back to a snapshot taken moments "
                                          "before (every write since is lost); rehearse it on a lab or staging cluster"))
    return out


def _upgrade_path_rules(k) -> list[Problem]:
    """One release per minor, none at or past the target's minor (the target is ``version`` itself)."""
    out = []
    target = tuple(int(x) for x in k.version[1:].split("."))
    seen: dict[int, int] = {}
    for i, r in enumerate(k.upgrade_path):
        where = f"kubernetes.upgrade_path[{i}]"
        minor = int(r.version.split(".")[1])
        if minor in seen:
            out.append(Problem(where, f"{r.version} is a second release of v1.{minor} (kubernetes.upgrade_path[{seen[minor]}] is "
                                      f"{k.upgrade_path[seen[minor]].version}); an upgrade goes through one release per minor: keep one"))
        seen.setdefault(minor, i)
        if minor >= target[1]:
            out.append(Problem(where, f"{r.version} is not below kubernetes.version {k.version}'s minor; the path lists the releases "
                                      f"on the way (v1.{target[1] - 1} and older), the target is kubernetes.version: remove it"))
    return out
