"""etcd 3.6 on the lab's etcd nodes: health, snapshots and restores with the real etcdctl and etcdutl.

The members themselves are systemd units written by :mod:`.cluster` (``rke-etcd``). These helpers
run etcd's own tools inside an etcd node over SSH, with that node's certificate, as an operator
would on an RKE node (``docker exec etcd etcdctl ...``).
"""

from __future__ import annotations

import shlex
import time

from . import parts
from .cluster import ETCD_DATA, SSL_DIR, ClusterError, ClusterSpec, NodeSpec


def etcdctl(spec: ClusterSpec, n: NodeSpec, args: str, endpoints: list[NodeSpec] | None = None) -> str:
    """An etcdctl command line to run on etcd node ``n`` (its own certificate; every member as endpoint)."""
    eps = ",".join(f"https://{m.address}:2379" for m in (endpoints or spec.with_role("etcd")))
    cert = f"{SSL_DIR}/kube-etcd-{n.name}"
    return (f"{parts.vm_path('etcd', 'etcdctl', spec.etcd)} --endpoints={eps} --cacert={SSL_DIR}/ca.pem "
            f"--cert={cert}.pem --key={cert}-key.pem --command-timeout=10s {args}")


def wait_healthy(fleet, hosts: dict, spec: ClusterSpec, timeout: float = 90.0) -> None:
    """Until every member answers ``endpoint health`` (asked from the first etcd node)."""
    members = spec.with_role("etcd")
    first = members[0]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = fleet.run_on(hosts[first.name], etcdctl(spec, first, "endpoint health"))
        if r.ok:
            return
        last = (r.stderr or r.error or "").strip().splitlines()[-1:] or [""]
        last = last[0]
        time.sleep(1)
    raise ClusterError(f"etcd on {', '.join(m.name for m in members)} is not healthy after {timeout:g} s: {last} "
                       "(see /var/log/lab-systemd/rke-etcd.service.log on the etcd nodes)")


def holds_data(fleet, hosts: dict, spec: ClusterSpec) -> list[str]:
    """The etcd nodes whose data directory already holds a member."""
    return [m.name for m in spec.with_role("etcd") if fleet.run_on(hosts[m.name], f"test -d {ETCD_DATA}/member").ok]


def snapshot_save(fleet, host, spec: ClusterSpec, n: NodeSpec, path: str) -> None:
    d = shlex.quote(path.rsplit("/", 1)[0])
    fleet.run_on(host, f"mkdir -p {d} && " + etcdctl(spec, n, f"snapshot save {shlex.quote(path)}", endpoints=[n])).check()


def restore_command(spec: ClusterSpec, n: NodeSpec, path: str) -> str:
    """Wipe the member's data and restore it from ``path`` with etcdutl, as the same member of the same cluster."""
    initial = ",".join(f"etcd-{m.name}=https://{m.address}:2380" for m in spec.with_role("etcd"))
    return (f"rm -rf {ETCD_DATA} && {parts.vm_path('etcd', 'etcdutl', spec.etcd)} snapshot restore {shlex.quote(path)} "
            f"--name=etcd-{n.name} --initial-cluster={initial} --initial-cluster-token=etcd-cluster-1 "
            f"--initial-advertise-peer-urls=https://{n.address}:2380 --data-dir={ETCD_DATA} && chmod 700 {ETCD_DATA}")
