"""The node half of ``rke2`` (servers and agents alike): its Node, registered as its kubelet would, and KWOK.

RKE2's kubelet registers its own Node with the node's identity (``system:node:<name>``, the
certificate ``agent/client-kubelet.crt``), with the ``node-label`` and ``node-taint`` of config.yaml:
so the real NodeRestriction admission applies (a node may not give itself labels in the
``kubernetes.io`` namespaces it does not own, such as ``node-role.kubernetes.io/worker``). A server
then adds the role labels RKE2 sets with its own identity (:func:`role_labels`). No kubelet runs
(LAB SIMULATION): KWOK, a child of ``rke2``, manages the Node and its pods; the Node says so in its
label ``runbook.lab/simulated`` and annotation ``runbook.lab/simulation``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import cluster as lab_cluster
from .. import parts
from . import AGENT_DIR, API_PORT, BIN_DIR, Fatal, certs
from .children import Children

KWOK_CONFIG = f"{AGENT_DIR}/kwok-stages.yaml"  # the lab's
KWOK_KUBECONFIG = f"{AGENT_DIR}/kwok.kubeconfig"  # the lab's
KUBELET_KUBECONFIG = f"{AGENT_DIR}/kubelet.kubeconfig"


@dataclass
class Node:
    name: str
    address: str
    labels: dict[str, str]
    taints: list[dict]
    annotations: dict[str, str]


def local_address(peer: str | None = None) -> str:
    """The address this node reaches ``peer`` from; else its first global IPv4 address."""
    if peer:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))
                return s.getsockname()[0]
        except OSError:
            pass
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    raise Fatal("cannot find this node's address: set node-ip in config.yaml")


def from_config(cfg, peer: str | None = None) -> Node:
    name = cfg.get("node-name") or socket.gethostname()
    address = cfg.get("node-ip") or local_address(peer)
    notes = {"rke2.io/hostname": socket.gethostname(), "rke2.io/internal-ip": address,
             "rke2.io/node-args": json.dumps(cfg.redacted_args())}
    if cfg.get("node-external-ip"):
        notes["rke2.io/external-ip"] = cfg.get("node-external-ip")
    return Node(name, address, cfg.labels(), cfg.taints(), notes)


def spec(version: str) -> lab_cluster.ClusterSpec:
    """What the lab's Node object needs of the cluster: the releases (the ranges are the servers')."""
    return lab_cluster.ClusterSpec(name="rke2", kubernetes=version, etcd=parts.default_version("etcd"), kwok=parts.default_version("kwok"),
                                   service_range="", cluster_cidr="", nodes=[])


def prepare(cfg, log, version: str) -> None:
    """What rke2 checks first: the parts of its release are built (else RKE2's missing images), and says what it ignores."""
    try:
        for component in ("kubernetes", "etcd", "kwok"):
            parts.require(component, version if component == "kubernetes" else None)
    except parts.PartMissing as e:
        raise Fatal(f"failed to find the images of Kubernetes {version}: {e}") from None
    for warning in cfg.warnings:
        log.warn(warning)
    private_registries(log)


REGISTRIES_FILE = "/etc/rancher/rke2/registries.yaml"


def private_registries(log, path: str = REGISTRIES_FILE) -> list[str]:
    """RKE2 reads ``registries.yaml`` when it starts (only then: a new file needs a restart) and fails on one it cannot parse.

    RKE2 renders it into containerd's configuration; no containerd runs here (LAB SIMULATION), so the
    stand-in checks its shape and says which registries it would log in to: never a credential.
    """
    import yaml

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise Fatal(f"failed to read private registries file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise Fatal(f"failed to parse private registries file {path}: {type(e).__name__}") from None
    if not isinstance(data, dict) or not set(data) <= {"mirrors", "configs"} or not all(isinstance(v, dict) for v in data.values()):
        raise Fatal(f"failed to parse private registries file {path}: expected the mappings mirrors and configs")
    hosts = sorted(data.get("configs") or {})
    log.info(f"Using private registry config file at {path}")
    log.info(f"Private registry logins for {', '.join(hosts) or 'no host'} (LAB SIMULATION: no containerd runs, nothing is pulled)")
    return hosts


def write_files(node: Node, version: str, api_port: int = API_PORT) -> None:
    """The kubelet's and KWOK's kubeconfigs, KWOK's stages, and ``/var/lib/rancher/rke2/bin/kubectl``."""
    ca = f"{AGENT_DIR}/server-ca.crt"
    certs.write_file(KUBELET_KUBECONFIG, certs.component_kubeconfig(f"system:node:{node.name}", f"{AGENT_DIR}/client-kubelet", ca, api_port))
    certs.write_file(KWOK_KUBECONFIG, certs.component_kubeconfig(f"{lab_cluster.KWOK_GROUP}:{node.name}",
                                                                 f"{AGENT_DIR}/{certs.KWOK_NAME}", ca, api_port))
    certs.write_file(KWOK_CONFIG, lab_cluster.kwok_stages_config(parts.default_version("kwok")), 0o644)
    Path(BIN_DIR).mkdir(parents=True, exist_ok=True)
    link = Path(BIN_DIR) / "kubectl"
    target = parts.vm_path("kubernetes", "kubectl", version)
    if not link.is_symlink() or os.readlink(link) != target:
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def kubelet_api(api_port: int = API_PORT) -> lab_cluster.ApiClient:
    return lab_cluster.ApiClient([f"https://127.0.0.1:{api_port}"], certs.agent_pki(), "client-kubelet", "server-ca")


def register(node: Node, version: str, log, stopping, api_port: int = API_PORT) -> bool:
    """Register the Node as its kubelet would (retried until the API answers); False if stopped first."""
    api = kubelet_api(api_port)
    me = lab_cluster.NodeSpec(node.name, node.address, roles=[], labels=node.labels)
    last = ""
    while not stopping.is_set():
        try:
            created = lab_cluster.register_node(api, me, spec(version), taints=node.taints, annotations=node.annotations)
            log.info(f"{'Registered' if created else 'Updated'} node {node.name} ({node.address}) with the API server "
                     "(LAB SIMULATION: KWOK manages it, no kubelet runs)")
            return True
        except lab_cluster.ClusterError as e:
            if str(e) != last:
                log.error(f"Unable to register node {node.name} with API server: {e}")
                last = str(e)
        stopping.wait(5)
    return False


def role_labels(api: lab_cluster.ApiClient, name: str, labels: dict[str, str]) -> None:
    """The role labels RKE2's server sets on its own Node (the kubelet may not set them)."""
    code, body = api.request("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}}, "application/merge-patch+json")
    if code != 200:
        raise lab_cluster.ClusterError(f"cannot label node {name}: {body.get('message')}")


def start_kwok(children: Children, node: Node, log=None, api_port: int = API_PORT) -> None:
    """KWOK for this node, once a stale Lease of a KWOK that ran here before (rke2 restarted, an upgrade) is released."""
    release_lease(kubelet_api(api_port), node.name, log)
    argv = lab_cluster.kwok_argv(parts.default_version("kwok"), KWOK_KUBECONFIG, KWOK_CONFIG, node.name, node.address)
    children.start("kwok", argv, f"{AGENT_DIR}/logs/kwok.log")


def release_lease(api: lab_cluster.ApiClient, name: str, log=None) -> bool:
    """Delete the node's Lease when a former KWOK of this node holds it; True if it did.

    A kubelet holds its node's Lease as the node itself and renews it at once when it restarts; each
    KWOK process holds it as ``<node>_<its own id>``, so a new one would wait for the old one's lease to
    expire (40 s) before it managed the node and its pods again, the Node still Ready meanwhile. The
    node's own identity may delete its own Lease (the Node authorizer).
    """
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
    try:
        code, body = api.request("GET", path)
        holder = (body.get("spec") or {}).get("holderIdentity") or "" if code == 200 else ""
        if not holder.startswith(f"{name}_"):
            return False
        code, body = api.request("DELETE", path)
    except lab_cluster.ClusterError as e:
        code, body = 0, {"message": str(e)}
    if code not in (200, 404) and log is not None:
        log.warn(f"could not release the Lease of node {name} held by a former KWOK ({body.get('message')}); "
                 "the new one takes over when it expires")
    return code in (200, 404)
