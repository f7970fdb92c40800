"""The ``storage.ceph`` section: Rook/Ceph block volumes, and the replication policy.

Ceph keeps ``pool_size`` copies of every object, each in a different failure domain (a host, a rack,
a zone). Three copies survive one failure domain lost while a second is being repaired; two copies
lose data on the second failure, and Ceph then blocks writes (``min_size``) on a degraded pool; one
copy is no redundancy at all. So the policy: below 3 only in the lab, and 1 nowhere else.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Name, Section, need_host

# Rook release line -> the Kubernetes releases it supports (Rook's prerequisites page, per release)
ROOK_KUBERNETES = {
    "v1.15": ("v1.26", "v1.31"),
    "v1.16": ("v1.27", "v1.32"),
    "v1.17": ("v1.28", "v1.33"),
    "v1.18": ("v1.29", "v1.34"),
}
# operator settings of the FlexVolume driver, removed in Rook 1.8 (CSI only since)
FLEX_SETTINGS = ("ROOK_ENABLE_FLEX_DRIVER", "FLEXVOLUME_DIR_PATH", "ROOK_FLEX_VOLUME_DIR_PATH")


def _version(value: str) -> str:
    if not re.fullmatch(r"v\d+\.\d+\.\d+", value):
        raise ValueError(f"{value!r} is not a Rook release; write it as vX.Y.Z, like v1.18.8")
    return value


def _device(value: str) -> str:
    name = value.removeprefix("/dev/")
    if not re.fullmatch(r"[a-z][a-z0-9]*(/[A-Za-z0-9_.:-]+)*|disk/by-[a-z]+/[A-Za-z0-9_.:-]+", name):
        raise ValueError(f"{value!r} is not a device name; write one like sdb, nvme1n1 or disk/by-id/<id>")
    return name


class CephNode(Section):
    host: Name
    # raw devices under /dev for OSDs: no partition table, no filesystem (Rook refuses them otherwise)
    devices: Annotated[list[Annotated[str, AfterValidator(_device)]], Field(min_length=1)]


class CephInstall(Section):
    # helm: `location` holds the rook-ceph and rook-ceph-cluster charts (a copy of Rook's deploy/charts);
    # manifests (air-gapped sites): `location` holds Rook's deploy/examples crds.yaml, common.yaml, operator.yaml
    method: Literal["helm", "manifests"] = "helm"
    location: str  # a folder, relative to the parameter file


class Ceph(Section):
    rook_version: Annotated[str, AfterValidator(_version)] = "v1.18.8"
    ceph_image: str = "quay.io/ceph/ceph:v19.2.3"
    namespace: Name = "rook-ceph"
    install: Optional[CephInstall] = None
    nodes: list[CephNode] = []  # the storage nodes and their raw devices (empty: none planned yet)
    pool: Name = "replicapool"
    pool_size: Annotated[int, Field(ge=1, le=7)] = 3
    failure_domain: Literal["host", "osd", "rack", "zone"] = "host"
    # a Kubernetes object name (DNS subdomain): it is written into objects and commands
    storage_class: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")] = "ceph-block"
    default_storage_class: bool = False
    # enforce: a failing prerequisite on a storage node blocks the apply; report: shown, not blocking
    # (a rehearsal site whose VMs have no raw disks)
    prerequisites: Literal["enforce", "report"] = "enforce"
    # false on a site where Rook's containers cannot run (the lab): the objects are applied and checked,
    # the cluster's health and the volume smoke test are not, and the record says that no Ceph daemon runs
    daemons_run: bool = True
    operator_env: dict[str, str] = {}  # extra settings of the operator (the chart's / ConfigMap's)
    smoke_image: str = "busybox:1.36"  # the image of the pod that writes and reads a volume
    smoke_timeout_seconds: Annotated[int, Field(ge=10, le=3600)] = 300

    @property
    def release_line(self) -> str:
        return ".".join(self.rook_version.split(".")[:2])


# where each failure domain is read from: the host's labels (the Node labels the cluster gives it)
DOMAIN_LABELS = {"zone": "topology.kubernetes.io/zone", "rack": "topology.rook.io/rack"}


def failure_domains(p) -> dict[str, str]:
    """Each storage node's failure domain (its name for host/osd, a label for rack/zone; '' when unlabelled)."""
    c = p.storage.ceph
    out = {}
    for n in c.nodes:
        host = p.host(n.host) if any(h.name == n.host for h in p.hosts) else None
        if c.failure_domain in ("host", "osd"):
            out[n.host] = n.host
        else:
            out[n.host] = (host.labels if host else {}).get(DOMAIN_LABELS[c.failure_domain], "")
    return out


def ceph_rules(p) -> list[Problem]:
    c = p.storage.ceph
    out: list[Problem] = []
    lab = p.environment.kind == "lab"
    if c.pool_size == 1 and not lab:
        out.append(Problem("storage.ceph.pool_size", "1 keeps a single copy of every block: one lost disk loses data. "
                                                     "Only the lab may run it; use 3"))
    elif c.pool_size < 3 and not lab:
        out.append(Problem("storage.ceph.pool_size", f"{c.pool_size} copies lose data on a second failure and block writes "
                                                     "while a copy is missing; use 3 (the lab alone may go lower)"))
    for i, n in enumerate(c.nodes):
        out += need_host(p, f"storage.ceph.nodes[{i}].host", n.host, "worker")
    names = [n.host for n in c.nodes]
    for name in sorted({x for x in names if names.count(x) > 1}):
        out.append(Problem("storage.ceph.nodes", f"{name} is listed twice; list each storage node once with all its devices"))
    flex = sorted(k for k in c.operator_env if k in FLEX_SETTINGS or "FLEX" in k.upper())
    if flex:
        out.append(Problem("storage.ceph.operator_env", f"{', '.join(flex)}: FlexVolume was removed in Rook 1.8; volumes are "
                                                        "provisioned by Ceph CSI. Remove these settings"))
    if c.release_line not in ROOK_KUBERNETES:
        out.append(Problem("storage.ceph.rook_version", f"{c.rook_version}: this runbook knows Rook {', '.join(ROOK_KUBERNETES)}; "
                                                        "use one of them (or teach ROOK_KUBERNETES the new line)"))
    if c.nodes and c.install is None:
        out.append(Problem("storage.ceph.install", "storage nodes are listed but not how to install Rook: give "
                                                   "{method: helm|manifests, location: <folder>}"))
    return out
