"""The lab's simulated Kubernetes cluster, assembled from real parts where they exist.

Real: the etcd cluster on the etcd nodes, SSH to every node, TLS with x509 client certificates.
Stand-ins (LAB SIMULATION): the API server on the control-plane nodes, and a heartbeat per node
instead of a kubelet. The ``rke`` stand-in drives these functions from a cluster.yml.
"""

from __future__ import annotations

import json
import shlex
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import yaml

from .. import daemon
from . import etcd as lab_etcd
from .apiserver import SIMULATED
from .pki import Pki

SSL_DIR = "/etc/kubernetes/ssl"
API_PORT = 6443
API_LOG = "/var/log/kube-apiserver-lab.log"
HEARTBEAT_LOG = "/var/log/lab-heartbeat.log"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class NodeSpec:
    """One node as cluster.yml describes it (address, SSH, roles, labels, taints)."""

    name: str
    address: str
    roles: list[str]
    user: str = "root"
    port: int = 22
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)


class ClusterError(Exception):
    pass


class ApiClient:
    """A tiny HTTPS client with the admin certificate (no dependency on the kubernetes package)."""

    def __init__(self, servers: list[str], pki: Pki, user: str = "kube-admin"):
        self.servers = servers
        self.ctx = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
        self.ctx.load_cert_chain(str(pki.path(f"{user}.pem")), str(pki.path(f"{user}-key.pem")))

    def request(self, method: str, path: str, body: dict | None = None,
                ctype: str = "application/json") -> tuple[int, dict]:
        """(status code, JSON body) from the first API server that answers; HTTP errors are answers too."""
        last = ""
        for server in self.servers:
            req = urllib.request.Request(server + path, method=method, headers={"Content-Type": ctype},
                                         data=json.dumps(body).encode() if body is not None else None)
            try:
                with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                    return resp.status, json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"{}")
            except (urllib.error.URLError, OSError) as e:
                last = f"{server}: {e}"
        raise ClusterError(f"no API server answered ({last})")

    def ready(self) -> bool:
        try:
            code, _ = self.request("GET", "/version")
            return code == 200
        except ClusterError:
            return False


def issue_certificates(pki: Pki, cluster_name: str, control_plane: list[NodeSpec], nodes: list[NodeSpec]) -> None:
    pki.ensure_ca(cluster_name)
    names = tuple(n.address for n in control_plane) + tuple(n.name for n in control_plane) + (
        "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    pki.issue("kube-apiserver", "kube-apiserver", server_names=names, client=False)
    pki.issue("kube-admin", "kube-admin", ("system:masters",))
    for n in nodes:
        pki.issue(f"node-{n.name}", f"system:node:{n.name}", ("system:nodes",))


def kubeconfig(pki: Pki, cluster_name: str, server: str) -> str:
    import base64

    def b64(name: str) -> str:
        return base64.b64encode(pki.path(name).read_bytes()).decode()

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": b64("ca.pem")}}],
        "users": [{"name": f"kube-admin-{cluster_name}", "user": {"client-certificate-data": b64("kube-admin.pem"),
                                                                  "client-key-data": b64("kube-admin-key.pem")}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": f"kube-admin-{cluster_name}"}}],
        "current-context": cluster_name,
    }, sort_keys=False)


def copy_certificates(fleet, host, pki: Pki, node: NodeSpec, control_plane: bool) -> None:
    r = fleet.run_on(host, f"mkdir -p {SSL_DIR} && chmod 700 {SSL_DIR}")
    r.check()
    files = [("ca.pem", "ca.pem", 0o644), (f"node-{node.name}.pem", "node.pem", 0o644),
             (f"node-{node.name}-key.pem", "node-key.pem", 0o600)]
    if control_plane:
        files += [("kube-apiserver.pem", "kube-apiserver.pem", 0o644), ("kube-apiserver-key.pem", "kube-apiserver-key.pem", 0o600)]
    for local, remote, mode in files:
        fleet.put(host, pki.path(local), f"{SSL_DIR}/{remote}", mode)


def start_api_servers(fleet, hosts, etcd_hosts, version: str) -> None:
    """Start the API stand-in on each control-plane host (idempotent); the first runs the controllers."""
    endpoints = ",".join(lab_etcd.endpoints(etcd_hosts))
    python = shlex.quote(sys.executable)
    for i, h in enumerate(hosts):
        cmd = (f"{python} -m runbooklab.kubernetes.apiserver --listen {h.address}:{API_PORT} --etcd {endpoints} "
               f"--tls-dir {SSL_DIR} --kubernetes-version {version}" + (" --controllers" if i == 0 else ""))
        fleet.run_on(h, daemon.enable("lab-apiserver", cmd, API_LOG)).check()


def stop_api_server(fleet, host) -> None:
    fleet.run_on(host, daemon.disable("lab-apiserver"))


def start_heartbeat(fleet, host, servers: list[str]) -> None:
    python = shlex.quote(sys.executable)
    cmd = (f"{python} -m runbooklab.kubernetes.heartbeat --server {','.join(servers)} --node {host.name} --tls-dir {SSL_DIR}")
    fleet.run_on(host, daemon.enable("lab-heartbeat", cmd, HEARTBEAT_LOG)).check()


def wait_ready(api: ApiClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.ready():
            return
        time.sleep(0.2)
    raise ClusterError(f"the API server stand-in did not answer within {timeout:g} s (see {API_LOG} on the control plane)")


def ensure_namespaces(api: ApiClient) -> None:
    for ns in SYSTEM_NAMESPACES:
        code, body = api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                "metadata": {"name": ns}})
        if code not in (201, 409):
            raise ClusterError(f"cannot create namespace {ns}: {body.get('message')}")


def node_object(n: NodeSpec, version: str) -> dict:
    labels = {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "runbook.lab/simulated": "true", **n.labels}
    for role in n.roles:
        labels[f"node-role.kubernetes.io/{role}"] = "true"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": labels,
                         "annotations": {"runbook.lab/simulation": "this node is a lab VM; no kubelet runs on it"}},
            "spec": {"taints": n.taints} if n.taints else {},
            "status": {"addresses": [{"type": "InternalIP", "address": n.address}, {"type": "Hostname", "address": n.name}],
                       "nodeInfo": {"kubeletVersion": f"{version}+{SIMULATED}", "kubeProxyVersion": f"{version}+{SIMULATED}",
                                    "containerRuntimeVersion": f"{SIMULATED}://none", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                    "kernelVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                                    "machineID": "", "systemUUID": "", "bootID": ""},
                       "conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                                       "message": "waiting for the first heartbeat (lab simulation)"}]}}


def register_node(api: ApiClient, n: NodeSpec, version: str) -> bool:
    """Create the Node, or bring its labels, taints and addresses in line. True if it was created."""
    obj = node_object(n, version)
    code, body = api.request("POST", "/api/v1/nodes", obj)
    if code == 201:
        return True
    if code != 409:
        raise ClusterError(f"cannot register node {n.name}: {body.get('message')}")
    patch = {"metadata": {"labels": obj["metadata"]["labels"]}, "spec": {"taints": n.taints or None}}
    code, body = api.request("PATCH", f"/api/v1/nodes/{n.name}", patch, "application/merge-patch+json")
    if code != 200:
        raise ClusterError(f"cannot update node {n.name}: {body.get('message')}")
    return False


def remove_node(api: ApiClient, name: str) -> None:
    api.request("DELETE", f"/api/v1/nodes/{name}")
    api.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
