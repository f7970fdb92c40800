"""RKE2's per-node ``/etc/rancher/rke2/config.yaml``, rendered from the cluster spec, read back into one.

A node with an etcd or controlplane role is a server (``rke2-server``), a worker-only node an agent
(``rke2-agent``). The first server (the first node with the controlplane role, in inventory order)
starts the cluster alone and has no ``server:``; every other node joins it on port 9345. Servers
split by role: etcd without controlplane disables the API server, controller manager and scheduler;
controlplane without etcd disables etcd (RKE2 cannot start such a node first: lint says so).

The join token is a secret: no config holds it. The first server creates it (in
``/var/lib/rancher/rke2/server/node-token``); every other node reads it from :data:`TOKEN_FILE`,
which the install step writes from there.

Round trip: ``read_rke2_configs(render_rke2_configs(spec))`` gives ``spec`` back except for what a
config cannot carry (:data:`NOT_CARRIED`): the cluster name, the Kubernetes version (chosen by the
installer, ``INSTALL_RKE2_VERSION``) and each node's SSH user and port; the reader takes those as
arguments (how nodes are upgraded is the runbook's business, not a config's: the reader gives the
defaults). A server without the worker role gets the taint :data:`SERVER_ONLY_TAINT`, as RKE2
documents for keeping workloads off servers; the reader turns it back into "no worker role".
"""

from __future__ import annotations

import re

import yaml

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
    extra_names,
    list_at,
    mapping_at,
    network_at,
)

__all__ = ["CNIS", "CONFIG_PATH", "NOT_CARRIED", "SERVER_ONLY_TAINT", "TOKEN_FILE", "first_server", "install_order", "node_kind",
           "read_rke2_configs", "render_rke2_configs"]

CONFIG_PATH = "/etc/rancher/rke2/config.yaml"
TOKEN_FILE = "/etc/rancher/rke2/join-token"
NODE_TOKEN = "/var/lib/rancher/rke2/server/node-token"
JOIN_PORT = 9345
SERVER_ONLY_TAINT = "CriticalAddonsOnly=true:NoExecute"
# the CNIs RKE2 ships (docs.rke2.io, networking): anything else is a lint error, never a silent swap
CNIS: tuple[str, ...] = ("canal", "calico", "cilium", "flannel", "none")
NOT_CARRIED: tuple[str, ...] = ("name", "version", "nodes[].user", "nodes[].port", "upgrade_worker_batch", "drain_timeout_seconds",
                                 "drain_delete_emptydir_data")
# RKE2's own defaults, for what a config leaves out
_DEFAULTS = {"cluster-cidr": str(CLUSTER_CIDR), "service-cidr": str(SERVICE_CIDR), "cluster-dns": str(CLUSTER_DNS),
             "cluster-domain": CLUSTER_DOMAIN, "cni": "canal", "etcd-snapshot-schedule-cron": "0 */12 * * *",
             "etcd-snapshot-retention": 5}
# what every server must agree on (RKE2 refuses to join a server that differs)
_CLUSTER_KEYS = ("cni", "cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "etcd-snapshot-schedule-cron",
                 "etcd-snapshot-retention", "system-default-registry", "tls-san")


def node_kind(spec: ClusterSpec, node: NodeSpec | str) -> str:
    """``server`` for a node with an etcd or controlplane role, ``agent`` for a worker-only node."""
    node = spec.node(node) if isinstance(node, str) else node
    return "server" if node.has("etcd") or node.has("controlplane") else "agent"


def first_server(spec: ClusterSpec) -> NodeSpec:
    """The node that starts the cluster: the first with the controlplane role, in inventory order."""
    for n in spec.nodes:
        if n.has("controlplane"):
            return n
    raise ClusterFileError(f"cluster {spec.name}", "nodes", "no node has the controlplane role; give one host etcd and controlplane")


def install_order(spec: ClusterSpec) -> list[list[str]]:
    """Node names in the waves they are installed in: the first server alone, then the other servers, then the agents.

    Nodes within a wave can be installed together; a wave starts when the one before it is up.
    """
    first = first_server(spec)
    servers = [n.name for n in spec.nodes if node_kind(spec, n) == "server" and n is not first]
    agents = [n.name for n in spec.nodes if node_kind(spec, n) == "agent"]
    return [w for w in ([first.name], servers, agents) if w]


def render_rke2_configs(spec: ClusterSpec) -> dict[str, str]:
    """``/etc/rancher/rke2/config.yaml`` of every node, by node name, in inventory order (no token in any)."""
    first = first_server(spec)
    servers = [n for n in spec.nodes if node_kind(spec, n) == "server"]
    tls_san = list(dict.fromkeys([n.address for n in servers] + list(spec.tls_san)))
    out = {}
    for n in spec.nodes:
        kind = node_kind(spec, n)
        config: dict = {} if n is first else {"server": f"https://{first.address}:{JOIN_PORT}"}
        if n is not first:  # the first server creates the token; the others read it from the file install writes
            config["token-file"] = TOKEN_FILE
        config["node-name"] = n.name
        config["node-ip"] = n.address
        taints = list(n.taints) + ([SERVER_ONLY_TAINT] if kind == "server" and not n.has("worker") else [])
        if n.labels:
            config["node-label"] = [f"{k}={v}" for k, v in n.labels]
        if taints:
            config["node-taint"] = taints
        if spec.kubelet_extra_args:
            config["kubelet-arg"] = [f"{k}={v}" for k, v in spec.kubelet_extra_args]
        if kind == "server":
            config.update(_server_settings(spec, n, tls_san))
        role = "server, first: starts the cluster" if n is first else kind
        token = (f"# It creates the cluster's join token ({NODE_TOKEN}); no config holds it.\n" if n is first else
                 f"# The join token is not here: install writes it to {TOKEN_FILE} from the first server's {NODE_TOKEN}.\n")
        header = f"# {CONFIG_PATH} of {n.name} ({role}) in cluster {spec.name}, rendered by runbooklib.\n" + token
        out[n.name] = header + yaml.safe_dump(config, sort_keys=False)
    return out


def _server_settings(spec: ClusterSpec, n: NodeSpec, tls_san: list[str]) -> dict:
    config = {
        "tls-san": tls_san,
        "cni": spec.cni,
        "cluster-cidr": str(spec.cluster_cidr),
        "service-cidr": str(spec.service_cidr),
        "cluster-dns": str(spec.cluster_dns),
        "cluster-domain": spec.cluster_domain,
        "etcd-snapshot-schedule-cron": f"0 */{spec.etcd_snapshot_interval_hours} * * *",
        "etcd-snapshot-retention": spec.etcd_snapshot_retention,
    }
    if spec.system_default_registry:
        config["system-default-registry"] = spec.system_default_registry
    if not n.has("controlplane"):
        config.update({"disable-apiserver": True, "disable-controller-manager": True, "disable-scheduler": True})
    if not n.has("etcd"):
        config["disable-etcd"] = True
    return config


# -- reading ---------------------------------------------------------------------------------------

def read_rke2_configs(configs: dict[str, str], *, name: str = "local", version: str = "", user: str = "root",
                      port: int = 22) -> ClusterSpec:
    """The spec that per-node configs (node name -> config.yaml text, in inventory order) describe.

    What a config cannot carry comes from the arguments (:data:`NOT_CARRIED`). A key every server
    must agree on but that differs between servers is an error naming both nodes.
    """
    parsed = {node: _load(text, node) for node, text in configs.items()}
    servers = {node: c for node, c in parsed.items() if _is_server(c)}
    if not servers:
        raise ClusterFileError("rke2 configs", "", "no server config (one without disable flags or with any server setting); "
                                                   "a cluster needs at least one")
    first_name, first = next(iter(servers.items()))
    for node, c in servers.items():
        for key in _CLUSTER_KEYS:
            if c.get(key) != first.get(key):
                raise ClusterFileError(f"{node} {CONFIG_PATH}", key, f"{c.get(key)!r} differs from {first.get(key)!r} on {first_name}; "
                                                                     "every server needs the same value")
    where = f"{first_name} {CONFIG_PATH}"
    nodes = tuple(_read_node(node, c, node in servers) for node, c in parsed.items())
    cron = str(first.get("etcd-snapshot-schedule-cron", _DEFAULTS["etcd-snapshot-schedule-cron"]))
    m = re.fullmatch(r"0 \*/(\d+) \* \* \*", cron)
    if not m:
        raise ClusterFileError(where, "etcd-snapshot-schedule-cron", f"{cron!r} is not every N hours (0 */N * * *); "
                                                                     "runbooklib schedules snapshots that way")
    return ClusterSpec(
        name=name, distribution="rke2", version=version,
        nodes=tuple(NodeSpec(n.name, n.address, n.roles, n.labels, n.taints, user, port) for n in nodes),
        cluster_cidr=network_at(first.get("cluster-cidr", _DEFAULTS["cluster-cidr"]), where, "cluster-cidr"),
        service_cidr=network_at(first.get("service-cidr", _DEFAULTS["service-cidr"]), where, "service-cidr"),
        cluster_dns=address_at(first.get("cluster-dns", _DEFAULTS["cluster-dns"]), where, "cluster-dns"),
        cluster_domain=str(first.get("cluster-domain", _DEFAULTS["cluster-domain"])),
        cni=str(first.get("cni", _DEFAULTS["cni"])),
        etcd_snapshot_interval_hours=int(m[1]),
        etcd_snapshot_retention=int(first.get("etcd-snapshot-retention", _DEFAULTS["etcd-snapshot-retention"])),
        system_default_registry=str(first["system-default-registry"]) if first.get("system-default-registry") else None,
        tls_san=extra_names([str(s) for s in list_at(first.get("tls-san"), where, "tls-san")], nodes),
        kubelet_extra_args=_pairs(first.get("kubelet-arg"), where, "kubelet-arg"),
    )


def _load(text: str, node: str) -> dict:
    try:
        return mapping_at(yaml.safe_load(text), f"{node} {CONFIG_PATH}", "")
    except yaml.YAMLError as e:
        raise ClusterFileError(f"{node} {CONFIG_PATH}", "", f"not valid YAML: {getattr(e, 'problem', None) or e}") from None


def _is_server(c: dict) -> bool:
    return any(key in c for key in _CLUSTER_KEYS + ("disable-etcd", "disable-apiserver"))


def _read_node(name: str, c: dict, server: bool) -> NodeSpec:
    where = f"{name} {CONFIG_PATH}"
    taints = [str(t) for t in list_at(c.get("node-taint"), where, "node-taint")]
    roles = ["worker"]
    if server:
        roles = [r for r, off in (("etcd", "disable-etcd"), ("controlplane", "disable-apiserver")) if not c.get(off)]
        if SERVER_ONLY_TAINT in taints:
            taints.remove(SERVER_ONLY_TAINT)
        else:
            roles.append("worker")
    return NodeSpec(name=str(c.get("node-name") or name), address=str(c.get("node-ip") or ""), roles=tuple(roles),
                    labels=canonical_labels(dict(_pairs(c.get("node-label"), where, "node-label"))), taints=tuple(taints))


def _pairs(items, where: str, field: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(list_at(items, where, field)):
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ClusterFileError(where, f"{field}[{i}]", f"{item!r} is not key=value")
        out.append((key, value))
    return tuple(out)
