"""RKE1's cluster.yml, rendered from the cluster spec, and read back into one.

Catches the seed's own pitfall: ``service_cluster_ip_range`` must be the same on ``kube-api`` and
``kube-controller`` (RKE defaults them independently: the founding story set only kube-api), and
the cluster DNS address must lie inside that range; both are written here from the one
``service_cidr`` of the spec. Keys follow rancher/rke ``types/rke_types.go``.

Round trip: ``read_cluster_yml(render_cluster_yml(spec, key)) == spec`` for an RKE1 spec. The file
carries every field of the spec; it also carries what the spec does not (each node's
``ssh_key_path``, ``ignore_docker_version``), which the reader leaves out. Recurring etcd snapshots
are ``services.etcd.backup_config`` (``interval_hours`` and ``retention``, a count, as the spec has
them: RKE's documented form since v0.2, which rke-tools runs as ``--creation=<N>h
--retention=<count x N>h``), with ``snapshot: true``, which starts the rolling snapshot container;
the reader also takes the legacy ``creation``/``retention`` durations of older files. ``upgrade_strategy``
says how ``rke up`` upgrades nodes: control-plane nodes one at a time, workers
``upgrade_worker_batch`` at a time, each drained first (with the spec's drain timeout).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import yaml

from ..schema import parse_taint
from .spec import (
    CLUSTER_CIDR,
    CLUSTER_DNS,
    CLUSTER_DOMAIN,
    SERVICE_CIDR,
    ClusterFileError,
    ClusterSpec,
    NodeSpec,
    address_at,
    canonical_labels,
    canonical_roles,
    extra_names,
    list_at,
    mapping_at,
    network_at,
    spec_from_params,
)

__all__ = ["NETWORK_PLUGINS", "RKE_DEFAULTS", "RKE_VERSION_SUFFIX", "read_cluster_yml", "render_cluster_yml"]

# the network plugins RKE1 ships (rancher/rke cluster/network.go): cilium is not one of them
NETWORK_PLUGINS: tuple[str, ...] = ("canal", "flannel", "calico", "weave", "aci", "none")

# RKE names a Kubernetes release v1.30.14-rancher1-1; the last number is RKE's own build of it and can
# be higher (rke v1.8.14 ships v1.32.13-rancher1-3; `rke config --list-version --all` lists them)
RKE_VERSION_SUFFIX = "-rancher1-1"

# RKE's own defaults (rancher/rke cluster/defaults.go), for what a hand-written file leaves out
RKE_DEFAULTS = {"cluster_cidr": str(CLUSTER_CIDR), "service_range": str(SERVICE_CIDR), "cluster_dns": str(CLUSTER_DNS),
                "cluster_domain": CLUSTER_DOMAIN, "plugin": "canal", "creation": "12h", "retention": "72h", "name": "local"}


def render_cluster_yml(source, ssh_key_path: str | Path | None = None, *, ignore_docker_version: bool | None = None,
                       version: str | None = None) -> str:
    """cluster.yml for a :class:`ClusterSpec` or a parameter file (its Kubernetes nodes, in inventory order).

    ``source``: a parameter file (``Params``) or a spec. ``ssh_key_path``: the key RKE uses on every
    node; for a parameter file it defaults to ``ssh.key``, a spec needs it given (a spec holds no
    SSH key). ``ignore_docker_version``: RKE's Docker version check; the parameter file's setting
    by default, else off. ``version``: the Kubernetes release to write instead of the spec's (an
    upgrade's intermediate step).
    """
    if isinstance(source, ClusterSpec):
        spec, header = source, f"# cluster.yml for cluster {source.name}, rendered by runbooklib.\n"
        if ssh_key_path is None:
            raise ValueError(f"cluster {spec.name}: pass ssh_key_path; a cluster spec does not say which SSH key RKE uses")
    else:
        spec = spec_from_params(source)
        header = f"# cluster.yml for {source.environment.name}, rendered by runbooklib from {source.source}.\n"
        ssh_key_path = ssh_key_path or source.ssh.key.path(source.source_dir)
        if ignore_docker_version is None:
            ignore_docker_version = source.kubernetes.ignore_docker_version
    key = str(ssh_key_path)
    if version is not None:
        spec = dataclasses.replace(spec, version=version)
    config = {
        "cluster_name": spec.name,
        "kubernetes_version": f"{spec.version}{RKE_VERSION_SUFFIX}",
        "nodes": [_node(n, key) for n in spec.nodes],
        "services": _services(spec),
        "network": {"plugin": spec.cni},
        "authentication": {"strategy": "x509", **({"sans": list(spec.tls_san)} if spec.tls_san else {})},
        "authorization": {"mode": "rbac"},
        "upgrade_strategy": _upgrade_strategy(spec),
    }
    if spec.system_default_registry:
        # is_default: RKE pulls every system image from it (the RKE1 form of RKE2's system-default-registry)
        config["private_registries"] = [{"url": spec.system_default_registry, "is_default": True}]
    config["ignore_docker_version"] = bool(ignore_docker_version)
    config["ssh_key_path"] = key
    header += "# Keep it with cluster.rkestate: every later `rke up` needs both.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def _upgrade_strategy(spec: ClusterSpec) -> dict:
    # RKE's types take the counts as strings (an integer or a percentage); drain as kubectl drain does
    return {"max_unavailable_controlplane": "1", "max_unavailable_worker": str(spec.upgrade_worker_batch), "drain": True,
            "node_drain_input": {"ignore_daemonsets": True, "delete_local_data": spec.drain_delete_emptydir_data,
                                 "grace_period": -1, "timeout": spec.drain_timeout_seconds}}


def _node(n: NodeSpec, key: str) -> dict:
    node = {"address": n.address, "port": str(n.port), "user": n.user, "role": list(n.roles), "hostname_override": n.name,
            "ssh_key_path": key}
    if n.labels:
        node["labels"] = dict(n.labels)
    if n.taints:
        node["taints"] = [dict(zip(("key", "value", "effect"), parse_taint(t))) for t in n.taints]
    return node


def _services(spec: ClusterSpec) -> dict:
    service_range = str(spec.service_cidr)
    hours = spec.etcd_snapshot_interval_hours
    kubelet = {"cluster_domain": spec.cluster_domain, "cluster_dns_server": str(spec.cluster_dns)}
    if spec.kubelet_extra_args:
        kubelet["extra_args"] = dict(spec.kubelet_extra_args)
    return {
        "etcd": {"snapshot": True, "backup_config": {"enabled": True, "interval_hours": hours,
                                                      "retention": spec.etcd_snapshot_retention}},
        # BOTH: RKE defaults each on its own, and a range set on kube-api alone leaves the controller on 10.43.0.0/16
        "kube-api": {"service_cluster_ip_range": service_range},
        "kube-controller": {"service_cluster_ip_range": service_range, "cluster_cidr": str(spec.cluster_cidr)},
        "kubelet": kubelet,
    }


# -- reading ---------------------------------------------------------------------------------------

def read_cluster_yml(text: str, source: str = "cluster.yml") -> ClusterSpec:
    """The spec a cluster.yml describes (rendered or hand-written); what it leaves out takes RKE's defaults.

    The service range is kube-api's (the one Services get their addresses from); whether
    kube-controller agrees is :func:`runbooklib.kubernetes.lint.lint_cluster_yml`'s business.
    Raises :class:`ClusterFileError` naming the file and the field it cannot read.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ClusterFileError(source, where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    data = mapping_at(data, source, "")
    services = mapping_at(data.get("services"), source, "services")
    api = mapping_at(services.get("kube-api"), source, "services.kube-api")
    controller = mapping_at(services.get("kube-controller"), source, "services.kube-controller")
    kubelet = mapping_at(services.get("kubelet"), source, "services.kubelet")
    nodes = tuple(_read_node(n, source, f"nodes[{i}]") for i, n in enumerate(list_at(data.get("nodes"), source, "nodes")))
    interval, retention = _snapshots(mapping_at(services.get("etcd"), source, "services.etcd"), source)
    registries = [mapping_at(r, source, f"private_registries[{i}]")
                  for i, r in enumerate(list_at(data.get("private_registries"), source, "private_registries"))]
    default_registry = next((str(r["url"]) for r in registries if r.get("is_default") and r.get("url")), None)
    authentication = mapping_at(data.get("authentication"), source, "authentication")
    batch, drain_timeout, emptydir = _upgrade(mapping_at(data.get("upgrade_strategy"), source, "upgrade_strategy"), source)
    return ClusterSpec(
        name=str(data.get("cluster_name") or RKE_DEFAULTS["name"]),
        distribution="rke1",
        version=str(data.get("kubernetes_version") or "").split("-rancher")[0],
        nodes=nodes,
        cluster_cidr=network_at(controller.get("cluster_cidr", RKE_DEFAULTS["cluster_cidr"]), source, "services.kube-controller.cluster_cidr"),
        service_cidr=network_at(api.get("service_cluster_ip_range", RKE_DEFAULTS["service_range"]), source,
                                "services.kube-api.service_cluster_ip_range"),
        cluster_dns=address_at(kubelet.get("cluster_dns_server", RKE_DEFAULTS["cluster_dns"]), source, "services.kubelet.cluster_dns_server"),
        cluster_domain=str(kubelet.get("cluster_domain") or RKE_DEFAULTS["cluster_domain"]),
        cni=str(mapping_at(data.get("network"), source, "network").get("plugin") or RKE_DEFAULTS["plugin"]),
        etcd_snapshot_interval_hours=interval,
        etcd_snapshot_retention=retention,
        system_default_registry=default_registry,
        tls_san=extra_names([str(s) for s in list_at(authentication.get("sans"), source, "authentication.sans")], nodes),
        kubelet_extra_args=tuple((str(k), str(v)) for k, v in
                                 mapping_at(kubelet.get("extra_args"), source, "services.kubelet.extra_args").items()),
        upgrade_worker_batch=batch, drain_timeout_seconds=drain_timeout, drain_delete_emptydir_data=emptydir,
    )


def _upgrade(strategy: dict, source: str) -> tuple[int, int, bool]:
    """(workers at a time, drain timeout, emptyDir data may go) from ``upgrade_strategy``; RKE's defaults where absent.

    RKE's default batch is 10% of the workers (at least one): a percentage is read as one, the batch it
    gives on a small cluster. Its default drain timeout is 120 s.
    """
    raw = str(strategy.get("max_unavailable_worker", "10%"))
    drain = mapping_at(strategy.get("node_drain_input"), source, "upgrade_strategy.node_drain_input")
    try:
        batch = 1 if raw.endswith("%") else int(raw)
        timeout = int(drain.get("timeout", 120))
    except ValueError:
        raise ClusterFileError(source, "upgrade_strategy", "max_unavailable_worker must be a whole number or a percentage, "
                                                           "node_drain_input.timeout a whole number of seconds") from None
    return batch, timeout, bool(drain.get("delete_local_data", False))


def _read_node(raw, source: str, at: str) -> NodeSpec:
    n = mapping_at(raw, source, at)
    if not n.get("address"):
        raise ClusterFileError(source, f"{at}.address", "no address; every node needs the address RKE reaches it at")
    try:
        port = int(str(n.get("port", 22)))
    except ValueError:
        raise ClusterFileError(source, f"{at}.port", f"{n['port']!r} is not a port number") from None
    taints = []
    for j, t in enumerate(list_at(n.get("taints"), source, f"{at}.taints")):
        t = mapping_at(t, source, f"{at}.taints[{j}]")
        text = f"{t.get('key', '')}={t.get('value', '')}:{t.get('effect', 'NoSchedule')}"
        try:
            parse_taint(text)
        except ValueError as e:
            raise ClusterFileError(source, f"{at}.taints[{j}]", f"{e} (RKE's form: key, value, effect)") from None
        taints.append(text)
    return NodeSpec(name=str(n.get("hostname_override") or n["address"]), address=str(n["address"]),
                    roles=canonical_roles(list_at(n.get("role"), source, f"{at}.role")),
                    labels=canonical_labels(mapping_at(n.get("labels"), source, f"{at}.labels")),
                    taints=tuple(taints), user=str(n.get("user") or "root"), port=port)


def _snapshots(etcd: dict, source: str) -> tuple[int, int]:
    """(interval hours, snapshots kept) from ``backup_config`` if there is one (it wins), else creation/retention."""
    if etcd.get("snapshot") is False:
        raise ClusterFileError(source, "services.etcd.snapshot", "false turns off recurring etcd snapshots, the cluster's only "
                                                                 "backup; set it to true (runbooklib always keeps them)")
    backup = mapping_at(etcd.get("backup_config"), source, "services.etcd.backup_config")
    if backup and backup.get("enabled", True) is not False:
        try:
            return int(backup.get("interval_hours", 12)), int(backup.get("retention", 6))
        except (TypeError, ValueError):
            raise ClusterFileError(source, "services.etcd.backup_config", "interval_hours and retention must be whole numbers") from None
    creation = _hours(etcd.get("creation", RKE_DEFAULTS["creation"]), source, "services.etcd.creation")
    kept = _hours(etcd.get("retention", RKE_DEFAULTS["retention"]), source, "services.etcd.retention")
    if creation != int(creation) or creation < 1:
        raise ClusterFileError(source, "services.etcd.creation", f"{etcd.get('creation')!r} is not a whole number of hours; "
                                                                 "runbooklib schedules snapshots every N hours (6h, 12h)")
    # RKE keeps every snapshot younger than the retention: ceil(retention / creation) of them
    return int(creation), max(1, math.ceil(kept / creation))


def _hours(value, source: str, field: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(value))
    if not m or not any(m.groups()):
        raise ClusterFileError(source, field, f"{value!r} is not a duration; write it like 6h or 72h")
    h, mins, s = (int(g or 0) for g in m.groups())
    return h + mins / 60 + s / 3600
