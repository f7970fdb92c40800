"""The lab's Kubernetes cluster: real components on the VMs, started as RKE1 starts them.

Real, built from their Go modules (``runbooklab/kbin``): etcd 3.6 on the etcd nodes (TLS between
members and to clients), kube-apiserver on every control-plane node (x509 client certificates,
service-account keys, ``--authorization-mode=Node,RBAC``), kube-controller-manager and
kube-scheduler with leader election across the control-plane nodes, and on every other node
Debian's nginx as RKE1's ``nginx-proxy`` (a TCP balancer over the API servers on 127.0.0.1:6443).
RKE1 runs these as Docker containers; the lab runs the same binaries as systemd units under the
lab's service manager (``rke-etcd``, ``rke-kube-apiserver``, ...), with ``Restart=always`` as
RKE's containers have, so ``lab stop``/``lab start`` and ``lab cut`` hit real processes.

LAB SIMULATION, said wherever it shows: no kubelet runs. KWOK, one instance inside each VM
(``lab-kwok-node``), manages that VM's Node object: conditions, lease, and the pods bound to it
(Running, with an IP from the node's pod range). A stopped VM stops its KWOK, so the real node
lifecycle controller turns the node NotReady. KWOK lists nodes and pods the way a controller does,
which the Node authorizer refuses to a node's own identity (``system:node:<name>`` may read only its
own Node); so each KWOK has a certificate of the group ``runbook-lab:kwok``, bound to the rules of
KWOK's own ``kwok-controller`` ClusterRole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import yaml

from . import parts
from .pki import Pki

SSL_DIR = "/etc/kubernetes/ssl"
UNIT_DIR = "/etc/systemd/system"
CONTAINERS_DIR = "/etc/kubernetes/containers"
API_PORT = 6443
ETCD_DATA = "/var/lib/etcd"
SIMULATED = "runbook.lab/simulated"
KWOK_NOTE = "LAB SIMULATION: no kubelet runs on this lab VM; KWOK inside the VM manages this Node and its pods"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
KWOK_GROUP = "runbook-lab:kwok"
# the rules of KWOK's own ClusterRole (kustomize/rbac/role.yaml of sigs.k8s.io/kwok), less its CRDs
KWOK_RULES = [
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": ["patch", "update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "get", "list", "patch", "update", "watch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "list", "patch", "update", "watch"]},
]
# every unit the rke stand-in may start on a node, in the order it stops them
UNITS = ("lab-kwok-node", "rke-nginx-proxy", "rke-kube-scheduler", "rke-kube-controller-manager", "rke-kube-apiserver", "rke-etcd")


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


@dataclass
class ClusterSpec:
    """What every component's flags come from: versions, ranges and the nodes by role."""

    name: str
    kubernetes: str
    etcd: str
    kwok: str
    service_range: str
    cluster_cidr: str
    nodes: list[NodeSpec]
    extra_args: dict[str, dict[str, str]] = field(default_factory=dict)  # RKE's services.<name>.extra_args

    def with_role(self, role: str) -> list[NodeSpec]:
        return [n for n in self.nodes if role in n.roles]


class ClusterError(Exception):
    pass


# -- the API, from the machine running rke ----------------------------------------------------------

class ApiClient:
    """A tiny HTTPS client with the admin certificate (no dependency on the kubernetes package)."""

    def __init__(self, servers: list[str], pki: Pki, user: str = "kube-admin", ca: str = "ca", timeout: float = 10):
        self.servers = servers
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=str(pki.cert(ca)))
        self.ctx.load_cert_chain(str(pki.cert(user)), str(pki.key(user)))

    def request(self, method: str, path: str, body: dict | None = None,
                ctype: str = "application/json") -> tuple[int, dict]:
        """(status code, JSON body) from the first API server that answers; HTTP errors are answers too."""
        last = ""
        for server in self.servers:
            req = urllib.request.Request(server + path, method=method, headers={"Content-Type": ctype},
                                         data=json.dumps(body).encode() if body is not None else None)
            try:
                with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as resp:
                    return resp.status, _json(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, _json(e.read())
            except (urllib.error.URLError, OSError) as e:
                last = f"{server}: {e}"
        raise ClusterError(f"no API server answered ({last})")

    def ready(self) -> bool:
        try:
            code, _ = self.request("GET", "/readyz")
            return code == 200
        except ClusterError:
            return False


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {"message": data.decode(errors="replace")[:300]}
    return value if isinstance(value, dict) else {"value": value}


# -- certificates and kubeconfigs ---------------------------------------------------------------

def issue_certificates(pki: Pki, spec: ClusterSpec) -> None:
    """Everything the components need (kept when still valid for the nodes cluster.yml names)."""
    pki.ensure_ca(spec.name)
    pki.ensure_ca(spec.name, "kube-apiserver-requestheader-ca", "kube-apiserver-requestheader-ca")
    pki.ensure_key("kube-service-account-token")
    cp = spec.with_role("controlplane")
    names = tuple(n.address for n in cp) + tuple(n.name for n in cp) + (
        "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", first_service_ip(spec.service_range))
    pki.issue("kube-apiserver", "kube-apiserver", server_names=names, client=False)
    pki.issue("kube-apiserver-etcd-client", "kube-apiserver-etcd-client")
    pki.issue("kube-apiserver-proxy-client", "kube-apiserver-proxy-client", ca="kube-apiserver-requestheader-ca")
    pki.issue("kube-admin", "kube-admin", ("system:masters",))
    pki.issue("kube-controller-manager", "system:kube-controller-manager")
    pki.issue("kube-scheduler", "system:kube-scheduler")
    for n in spec.with_role("etcd"):
        pki.issue(f"kube-etcd-{n.name}", f"kube-etcd-{n.name}", server_names=(n.address, n.name, "127.0.0.1", "localhost"))
    for n in spec.nodes:
        pki.issue(f"kube-node-{n.name}", f"system:node:{n.name}", ("system:nodes",))
        pki.issue(f"kwok-{n.name}", f"{KWOK_GROUP}:{n.name}", (KWOK_GROUP,))


def first_service_ip(service_range: str) -> str:
    import ipaddress

    return str(next(ipaddress.ip_network(service_range).hosts()))


def kubeconfig(pki: Pki, cluster_name: str, server: str, user: str = "kube-admin", ca: str = "ca",
               entry: str | None = None) -> str:
    """A kubeconfig with the certificates inline (what rke writes as kube_config_cluster.yml).

    ``entry`` names its cluster, user and context (RKE2's rke2.yaml calls them all ``default``);
    RKE1 names the cluster after the cluster and the user ``<user>-<cluster>``.
    """
    def b64(path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    cluster, user_name = (entry, entry) if entry else (cluster_name, f"{user}-{cluster_name}")
    return _kubeconfig(cluster, user_name, {"server": server, "certificate-authority-data": b64(pki.cert(ca))},
                       {"client-certificate-data": b64(pki.cert(user)), "client-key-data": b64(pki.key(user))})


def _kubeconfig(name: str, user: str, cluster: dict, credentials: dict) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }, sort_keys=False)


def file_kubeconfig(user: str, server: str, ca: str, cert: str, key: str) -> str:
    """A kubeconfig on a node naming its certificate files (a component's own, as RKE and RKE2 write them)."""
    return _kubeconfig("local", user, {"server": server, "certificate-authority": ca},
                       {"client-certificate": cert, "client-key": key})


def node_kubeconfig(user: str, cert: str) -> str:
    """A kubeconfig on an RKE1 node, naming the certificate files in SSL_DIR, for the API on 127.0.0.1."""
    return file_kubeconfig(user, f"https://127.0.0.1:{API_PORT}", f"{SSL_DIR}/ca.pem", f"{SSL_DIR}/{cert}.pem",
                           f"{SSL_DIR}/{cert}-key.pem")


# -- what each node runs ----------------------------------------------------------------------------

def _unit(description: str, argv: list[str], restart: bool = True) -> str:
    lines = ["[Unit]", f"Description={description}", "", "[Service]", "Type=simple",
             "ExecStart=" + " \\\n    ".join(argv)]
    if restart:
        lines += ["Restart=always", "RestartSec=2"]
    return "\n".join(lines + ["", "[Install]", "WantedBy=multi-user.target", ""])


def flag_args(defaults: dict[str, str], extra: dict[str, str]) -> list[str]:
    """``--name=value`` flags: the defaults, then RKE's ``services.<svc>.extra_args`` (RKE2's ``<component>-arg``) over them."""
    merged = {**defaults, **{str(k).lstrip("-"): str(v) for k, v in extra.items()}}
    return [f"--{k}={v}" for k, v in merged.items()]


# -- the components' flags, shared by RKE1's units and the RKE2 stand-in (their certificate paths differ) --

@dataclass(frozen=True)
class EtcdTls:
    """etcd's certificate files on a node: its serving and client pair, its peer pair, and the CA that checks each."""

    cert: str
    key: str
    ca: str
    peer_cert: str
    peer_key: str
    peer_ca: str


def etcd_flags(name: str, address: str, data_dir: str, initial: str, tls: EtcdTls, state: str = "new",
               listen_clients: str = "https://0.0.0.0:2379", listen_peers: str = "https://0.0.0.0:2380") -> dict[str, str]:
    """etcd's flags as the lab runs it: client and peer TLS with client certificates required, RKE's timings."""
    return {
        "name": name, "data-dir": data_dir,
        "listen-client-urls": listen_clients, "advertise-client-urls": f"https://{address}:2379",
        "listen-peer-urls": listen_peers, "initial-advertise-peer-urls": f"https://{address}:2380",
        "initial-cluster": initial, "initial-cluster-state": state, "initial-cluster-token": "etcd-cluster-1",
        "cert-file": tls.cert, "key-file": tls.key, "client-cert-auth": "true",
        "trusted-ca-file": tls.ca, "peer-cert-file": tls.peer_cert, "peer-key-file": tls.peer_key,
        "peer-client-cert-auth": "true", "peer-trusted-ca-file": tls.peer_ca,
        "heartbeat-interval": "500", "election-timeout": "5000",
    }


@dataclass(frozen=True)
class ApiserverTls:
    """kube-apiserver's certificate files: clients' CA, its serving pair, etcd's, service accounts', the front proxy's."""

    client_ca: str
    cert: str
    key: str
    etcd_ca: str
    etcd_cert: str
    etcd_key: str
    service_account_key: str
    service_account_signing_key: str
    requestheader_ca: str
    proxy_cert: str
    proxy_key: str
    proxy_cn: str  # the front-proxy client certificate's CN, the one name allowed to pass request headers


def apiserver_flags(address: str, etcd_servers: str, service_range: str, tls: ApiserverTls, issuer: str) -> dict[str, str]:
    """kube-apiserver's flags as the lab runs it (x509 clients, Node,RBAC, NodeRestriction, a front-proxy CA)."""
    return {
        "advertise-address": address, "bind-address": "0.0.0.0", "secure-port": str(API_PORT),
        "etcd-servers": etcd_servers, "etcd-cafile": tls.etcd_ca, "etcd-certfile": tls.etcd_cert,
        "etcd-keyfile": tls.etcd_key, "storage-backend": "etcd3",
        "client-ca-file": tls.client_ca, "tls-cert-file": tls.cert,
        "tls-private-key-file": tls.key, "anonymous-auth": "false",
        "service-account-issuer": issuer, "service-account-key-file": tls.service_account_key,
        "service-account-signing-key-file": tls.service_account_signing_key,
        "service-cluster-ip-range": service_range, "service-node-port-range": "30000-32767",
        "authorization-mode": "Node,RBAC", "enable-admission-plugins": "NodeRestriction",
        "allow-privileged": "true", "profiling": "false",
        "requestheader-client-ca-file": tls.requestheader_ca,
        "proxy-client-cert-file": tls.proxy_cert,
        "proxy-client-key-file": tls.proxy_key,
        "requestheader-allowed-names": tls.proxy_cn, "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "requestheader-group-headers": "X-Remote-Group", "requestheader-username-headers": "X-Remote-User",
        "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
    }


def controller_manager_flags(kubeconfig: str, service_account_key: str, root_ca: str, signing_cert: str, signing_key: str,
                             cluster_cidr: str, service_range: str) -> dict[str, str]:
    """kube-controller-manager's flags: leader election, the CSR signer, node CIDRs from the cluster range."""
    return {
        "kubeconfig": kubeconfig, "authentication-kubeconfig": kubeconfig, "authorization-kubeconfig": kubeconfig,
        "leader-elect": "true", "bind-address": "127.0.0.1", "profiling": "false",
        "service-account-private-key-file": service_account_key,
        "root-ca-file": root_ca, "use-service-account-credentials": "true",
        "cluster-signing-cert-file": signing_cert, "cluster-signing-key-file": signing_key,
        "allocate-node-cidrs": "true", "cluster-cidr": cluster_cidr, "node-cidr-mask-size": "24",
        "service-cluster-ip-range": service_range, "terminated-pod-gc-threshold": "1000",
    }


def scheduler_flags(kubeconfig: str) -> dict[str, str]:
    return {"kubeconfig": kubeconfig, "authentication-kubeconfig": kubeconfig, "authorization-kubeconfig": kubeconfig,
            "leader-elect": "true", "bind-address": "127.0.0.1", "profiling": "false"}


# LAB SIMULATION of what a kubelet does when it comes back (its service restarted, its VM started, its link healed):
# its status sync says again that the pods it runs are ready. While the node was NotReady the node lifecycle
# controller set their Ready condition to False; KWOK's own stages make a pod Ready only once, when it starts (Pending),
# so without this a Deployment stayed short of available for good after its node came back. Only the Ready condition
# (what the controller changed) is set back; a Job's pods are left to KWOK's pod-complete stage, and a pod with
# readiness gates to the controllers that own its gates (a kubelet would not call it ready on its containers alone)
POD_READY_AGAIN = """apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lab-pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'NotIn'
      values:
      - 'Job'
    - key: '.spec.readinessGates'
      operator: 'DoesNotExist'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
"""


def kwok_stages_config(version: str) -> str:
    """KWOK's ``--config``: the Stage documents saved with its build (nodes Ready with a lease, pods Running), and the
    lab's :data:`POD_READY_AGAIN` (a node back from NotReady makes its pods ready again, as a kubelet does)."""
    return "---\n".join([*(p.read_text() for p in sorted(parts.kwok_stages(version).glob("*.yaml"))), POD_READY_AGAIN])


def kwok_argv(version: str, kubeconfig: str, config: str, node: str, address: str) -> list[str]:
    """KWOK managing one node, its own: what stands in for that node's kubelet (LAB SIMULATION)."""
    return [parts.vm_path("kwok", "kwok", version), f"--kubeconfig={kubeconfig}", f"--config={config}",
            f"--manage-single-node={node}", f"--node-name={node}", f"--node-ip={address}",
            "--server-address=127.0.0.1:10247", "--node-lease-duration-seconds=40"]


# -- RKE1's units -----------------------------------------------------------------------------------

def etcd_files(spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    members = spec.with_role("etcd")
    initial = ",".join(f"etcd-{m.name}=https://{m.address}:2380" for m in members)
    cert = f"{SSL_DIR}/kube-etcd-{n.name}"
    tls = EtcdTls(f"{cert}.pem", f"{cert}-key.pem", f"{SSL_DIR}/ca.pem", f"{cert}.pem", f"{cert}-key.pem", f"{SSL_DIR}/ca.pem")
    flags = flag_args(etcd_flags(f"etcd-{n.name}", n.address, ETCD_DATA, initial, tls), spec.extra_args.get("etcd", {}))
    unit = _unit(f"etcd {spec.etcd} (real etcd; RKE runs it as the etcd container)",
                 [parts.vm_path("etcd", "etcd", spec.etcd), *flags])
    # what RKE sets in its etcd container, so that `docker exec etcd etcdctl ...` works as on an RKE node
    env = {"ETCDCTL_CACERT": f"{SSL_DIR}/ca.pem", "ETCDCTL_CERT": f"{cert}.pem",
           "ETCDCTL_KEY": f"{cert}-key.pem", "ETCDCTL_ENDPOINTS": f"https://{n.address}:2379"}
    return {f"{UNIT_DIR}/rke-etcd.service": (unit.encode(), 0o644),
            **container_env("etcd", parts.vm_path("etcd", "etcd", spec.etcd), env)}


def container_env(name: str, binary: str, env: dict[str, str] | None = None) -> dict[str, tuple[bytes, int]]:
    """The environment of RKE's container ``name``, for the lab Docker stand-in's ``docker exec`` (its tools on PATH)."""
    bindir = binary.rsplit("/", 1)[0]
    lines = [f"# the environment of RKE's {name} container (lab simulation: docker exec runs in the VM with it)",
             f"PATH={bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    lines += [f"{k}={v}" for k, v in (env or {}).items()]
    return {f"{CONTAINERS_DIR}/{name}.env": (("\n".join(lines) + "\n").encode(), 0o644)}


def apiserver_files(spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    etcd = ",".join(f"https://{m.address}:2379" for m in spec.with_role("etcd"))
    ssl_ = SSL_DIR
    tls = ApiserverTls(
        client_ca=f"{ssl_}/ca.pem", cert=f"{ssl_}/kube-apiserver.pem", key=f"{ssl_}/kube-apiserver-key.pem",
        etcd_ca=f"{ssl_}/ca.pem", etcd_cert=f"{ssl_}/kube-apiserver-etcd-client.pem", etcd_key=f"{ssl_}/kube-apiserver-etcd-client-key.pem",
        service_account_key=f"{ssl_}/kube-service-account-token.pem", service_account_signing_key=f"{ssl_}/kube-service-account-token-key.pem",
        requestheader_ca=f"{ssl_}/kube-apiserver-requestheader-ca.pem", proxy_cert=f"{ssl_}/kube-apiserver-proxy-client.pem",
        proxy_key=f"{ssl_}/kube-apiserver-proxy-client-key.pem", proxy_cn="kube-apiserver-proxy-client")
    flags = flag_args(apiserver_flags(n.address, etcd, spec.service_range, tls, "rke"), spec.extra_args.get("kube-api", {}))
    binary = parts.vm_path("kubernetes", "kube-apiserver", spec.kubernetes)
    return {f"{UNIT_DIR}/rke-kube-apiserver.service": (_unit(
        f"kube-apiserver {spec.kubernetes} (real; RKE runs it as the kube-apiserver container)", [binary, *flags]).encode(), 0o644),
            **container_env("kube-apiserver", binary)}


def controller_files(spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    cm_config = f"{SSL_DIR}/kubecfg-kube-controller-manager.yaml"
    sched_config = f"{SSL_DIR}/kubecfg-kube-scheduler.yaml"
    cm = flag_args(controller_manager_flags(cm_config, f"{SSL_DIR}/kube-service-account-token-key.pem", f"{SSL_DIR}/ca.pem",
                                         f"{SSL_DIR}/ca.pem", f"{SSL_DIR}/ca-key.pem", spec.cluster_cidr, spec.service_range),
                spec.extra_args.get("kube-controller", {}))
    sched = flag_args(scheduler_flags(sched_config), spec.extra_args.get("scheduler", {}))
    return {
        cm_config: (node_kubeconfig("system:kube-controller-manager", "kube-controller-manager").encode(), 0o600),
        sched_config: (node_kubeconfig("system:kube-scheduler", "kube-scheduler").encode(), 0o600),
        f"{UNIT_DIR}/rke-kube-controller-manager.service": (_unit(
            f"kube-controller-manager {spec.kubernetes} (real; RKE runs it as the kube-controller-manager container)",
            [parts.vm_path("kubernetes", "kube-controller-manager", spec.kubernetes), *cm]).encode(), 0o644),
        f"{UNIT_DIR}/rke-kube-scheduler.service": (_unit(
            f"kube-scheduler {spec.kubernetes} (real; RKE runs it as the kube-scheduler container)",
            [parts.vm_path("kubernetes", "kube-scheduler", spec.kubernetes), *sched]).encode(), 0o644),
    }


NGINX_PROXY = """\
# RKE1's nginx-proxy: the node's API endpoint 127.0.0.1:{port}, balanced over every control-plane node
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid /run/rke-nginx-proxy.pid;
error_log /var/log/rke-nginx-proxy.log warn;
events {{ worker_connections 1024; }}
stream {{
    upstream kube_apiserver {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass kube_apiserver;
        proxy_connect_timeout 2s;
        proxy_timeout 30m;
    }}
}}
"""


def nginx_proxy_files(spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    servers = "\n".join(f"        server {c.address}:{API_PORT} max_fails=1 fail_timeout=10s;" for c in spec.with_role("controlplane"))
    conf = "/etc/kubernetes/nginx-proxy.conf"
    unit = _unit("nginx-proxy (Debian's nginx; RKE runs it as the nginx-proxy container on nodes without a control plane)",
                 ["/usr/sbin/nginx", "-c", conf, "-e", "/var/log/rke-nginx-proxy.log", "-g", "'daemon off;'"])
    return {conf: (NGINX_PROXY.format(port=API_PORT, servers=servers).encode(), 0o644),
            f"{UNIT_DIR}/rke-nginx-proxy.service": (unit.encode(), 0o644)}


def kwok_files(spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    kubecfg = f"{SSL_DIR}/kubecfg-kwok.yaml"
    argv = kwok_argv(spec.kwok, kubecfg, "/etc/kubernetes/kwok-stages.yaml", n.name, n.address)
    return {
        kubecfg: (node_kubeconfig(f"{KWOK_GROUP}:{n.name}", f"kwok-{n.name}").encode(), 0o600),
        "/etc/kubernetes/kwok-stages.yaml": (kwok_stages_config(spec.kwok).encode(), 0o644),
        f"{UNIT_DIR}/lab-kwok-node.service": (_unit(f"KWOK {spec.kwok} for node {n.name} ({KWOK_NOTE})", argv).encode(), 0o644),
    }


def certificate_files(pki: Pki, spec: ClusterSpec, n: NodeSpec) -> dict[str, tuple[bytes, int]]:
    def pair(name: str) -> dict[str, tuple[bytes, int]]:
        return {f"{SSL_DIR}/{name}.pem": (pki.path(f"{name}.pem").read_bytes(), 0o644),
                f"{SSL_DIR}/{name}-key.pem": (pki.path(f"{name}-key.pem").read_bytes(), 0o600)}

    files = {f"{SSL_DIR}/ca.pem": (pki.path("ca.pem").read_bytes(), 0o644), **pair(f"kube-node-{n.name}"), **pair(f"kwok-{n.name}")}
    if "etcd" in n.roles:
        files |= pair(f"kube-etcd-{n.name}")
    if "controlplane" in n.roles:
        files[f"{SSL_DIR}/ca-key.pem"] = (pki.path("ca-key.pem").read_bytes(), 0o600)
        files[f"{SSL_DIR}/kube-apiserver-requestheader-ca.pem"] = (
            pki.path("kube-apiserver-requestheader-ca.pem").read_bytes(), 0o644)
        for name in ("kube-apiserver", "kube-apiserver-etcd-client", "kube-apiserver-proxy-client",
                     "kube-service-account-token", "kube-controller-manager", "kube-scheduler"):
            files |= pair(name)
    return files


def node_plan(pki: Pki, spec: ClusterSpec, n: NodeSpec, planes: tuple[str, ...]) -> tuple[dict, list[tuple[str, tuple[str, ...]]]]:
    """The files a node gets and its units, each with the files whose change restarts it.

    ``planes`` limits what is set up: ``etcd``, ``controlplane``, ``worker`` (RKE's order); certificates
    always go. KWOK runs on every node (every node is a Node), nginx-proxy where no API server runs.
    """
    files = certificate_files(pki, spec, n)
    units: list[tuple[str, tuple[str, ...]]] = []
    certs = tuple(files)
    if "etcd" in planes and "etcd" in n.roles:
        f = etcd_files(spec, n)
        files |= f
        units.append(("rke-etcd", tuple(f) + certs))
    if "controlplane" in planes and "controlplane" in n.roles:
        f = apiserver_files(spec, n)
        files |= f
        units.append(("rke-kube-apiserver", tuple(f) + certs))
        f = controller_files(spec, n)
        files |= f
        units.append(("rke-kube-controller-manager", (f"{SSL_DIR}/kubecfg-kube-controller-manager.yaml",
                                                      f"{UNIT_DIR}/rke-kube-controller-manager.service") + certs))
        units.append(("rke-kube-scheduler", (f"{SSL_DIR}/kubecfg-kube-scheduler.yaml", f"{UNIT_DIR}/rke-kube-scheduler.service") + certs))
    if "worker" in planes:
        if "controlplane" not in n.roles:
            f = nginx_proxy_files(spec, n)
            files |= f
            units.append(("rke-nginx-proxy", tuple(f)))
        f = kwok_files(spec, n)
        files |= f
        units.append(("lab-kwok-node", tuple(f) + certs))
    return files, units


def write_files(fleet, host, files: dict[str, tuple[bytes, int]]) -> set[str]:
    """Put each file on ``host`` unless it is there already with this content; the paths that changed."""
    listing = " ".join(f"'{p}'" for p in files)
    r = fleet.run_on(host, f"mkdir -p {SSL_DIR} {UNIT_DIR} {CONTAINERS_DIR} && chmod 700 {SSL_DIR} && "
                           f"sha256sum {listing} 2>/dev/null; true")
    r.check()
    have = {}
    for line in r.stdout.splitlines():
        digest, _, path = line.partition("  ")
        have[path.strip()] = digest
    changed = {p for p, (data, _) in files.items() if have.get(p) != hashlib.sha256(data).hexdigest()}
    if changed:
        sftp = fleet.connection(host).sftp()
        for path in sorted(changed):
            data, mode = files[path]
            tmp = f"{path}.rke-tmp"
            with sftp.open(tmp, "wb") as f:
                f.write(data)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)
    return changed


PLANES = {"etcd": ("rke-etcd",), "controlplane": ("rke-kube-apiserver", "rke-kube-controller-manager", "rke-kube-scheduler"),
          "worker": ("rke-nginx-proxy", "lab-kwok-node")}


@dataclass
class NodeChanges:
    """A node's units (with their input files) and which files ``prepare_node`` changed."""

    units: list[tuple[str, tuple[str, ...]]]
    changed: set[str]


def prepare_node(fleet, host, pki: Pki, spec: ClusterSpec, n: NodeSpec) -> NodeChanges:
    """Every file the node's units need, written where it differs; nothing started yet."""
    files, units = node_plan(pki, spec, n, tuple(PLANES))
    changed = write_files(fleet, host, files)
    if "etcd" in n.roles:
        fleet.run_on(host, f"mkdir -p {ETCD_DATA} && chmod 700 {ETCD_DATA}").check()
    return NodeChanges(units, changed)


def start_units(fleet, host, n: NodeSpec, plan: NodeChanges, plane: str, api_healthy=None) -> list[str]:
    """The plane's units on the node: restarted when their files changed, else enabled and started if not running.
    ``api_healthy()``, when given, is called once kube-apiserver is started, before the units after it: RKE's
    healthcheck of kube-apiserver (``runKubeAPI``) before the controller manager, which exits at once when the API
    it looks its authentication up in does not answer yet."""
    done = []
    for unit, inputs in plan.units:
        if unit not in PLANES[plane]:
            continue
        verb = "restart" if plan.changed & set(inputs) else "start"
        r = fleet.run_on(host, f"systemctl daemon-reload && systemctl enable {unit} >/dev/null && "
                               f"{{ systemctl is-active -q {unit} && [ {verb} = start ] || systemctl {verb} {unit}; }}")
        if not r.ok:
            raise ClusterError(f"{n.name}: {unit} did not start: {(r.stderr or r.error or '').strip()[-400:]} "
                               f"(see /var/log/lab-systemd/{unit}.service.log on {n.name})")
        done.append(f"{unit} {'restarted' if verb == 'restart' else 'running'}")
        if unit == "rke-kube-apiserver" and api_healthy is not None:
            api_healthy()
    return done


def stop_command(wipe: bool = False) -> str:
    """Stop and disable every unit the stand-in starts; with ``wipe``, remove their files and etcd's data too."""
    cmd = "; ".join(f"systemctl disable --now {u} >/dev/null 2>&1" for u in UNITS)
    if wipe:
        cmd += (f"; rm -rf {ETCD_DATA} {SSL_DIR} {CONTAINERS_DIR} /etc/kubernetes/kwok-stages.yaml /etc/kubernetes/nginx-proxy.conf "
                + " ".join(f"{UNIT_DIR}/{u}.service" for u in UNITS))
    return cmd + "; true"


def wait_ready(api: ApiClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.ready():
            return
        time.sleep(0.5)
    raise ClusterError(f"kube-apiserver did not report ready within {timeout:g} s "
                       "(see /var/log/lab-systemd/rke-kube-apiserver.service.log on the control-plane nodes)")


def ensure_namespaces(api: ApiClient) -> None:
    for ns in SYSTEM_NAMESPACES:
        code, body = api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                "metadata": {"name": ns}})
        if code not in (201, 409):
            raise ClusterError(f"cannot create namespace {ns}: {body.get('message')}")


def ensure_kwok_role(api: ApiClient) -> None:
    """The ClusterRole and binding that let each VM's KWOK manage its node (created or brought in line)."""
    name = "runbook-lab:kwok-node"
    meta = {"name": name, "labels": {SIMULATED: "true"}, "annotations": {"runbook.lab/simulation": KWOK_NOTE}}
    objects = [
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                                             "metadata": meta, "rules": KWOK_RULES}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": KWOK_GROUP}]}),
    ]
    for collection, obj in objects:
        code, body = api.request("POST", collection, obj)
        if code == 409:
            code, body = api.request("PUT", f"{collection}/{name}", obj)
        if code not in (200, 201):
            raise ClusterError(f"cannot create {obj['kind']} {name}: {body.get('message')}")


COREDNS_IMAGE = "rancher/mirrored-coredns-coredns:1.11.3"


def ensure_addons(api: ApiClient, spec: ClusterSpec, dns_ip: str, domain: str) -> list[str]:
    """RKE1's DNS add-on: the ``kube-dns`` Service at the cluster DNS address and a ``coredns`` Deployment."""
    return ensure_dns(api, DnsAddon("kube-dns", "coredns", {"k8s-app": "kube-dns"}, COREDNS_IMAGE), dns_ip, domain)


@dataclass(frozen=True)
class DnsAddon:
    """What a distribution names its DNS add-on: the Service, the Deployment, their labels, the image."""

    service: str
    deployment: str
    labels: dict[str, str]
    image: str
    service_labels: dict[str, str] = field(default_factory=lambda: {"kubernetes.io/name": "CoreDNS"})
    tolerations: tuple[dict, ...] = ()


def ensure_dns(api: ApiClient, addon: DnsAddon, dns_ip: str, domain: str) -> list[str]:
    """The DNS add-on: its Service at the cluster DNS address and its Deployment, created where missing.

    The Service and Deployment are real API objects handled by the real controllers; their pods are
    marked Running by KWOK and run nothing (LAB SIMULATION, annotated on the pod template).
    """
    labels = addon.labels
    pod_spec = {"containers": [{"name": "coredns", "image": addon.image, "args": ["-conf", "/etc/coredns/Corefile"]}],
                "priorityClassName": "system-cluster-critical"}
    if addon.tolerations:
        pod_spec["tolerations"] = list(addon.tolerations)
    objects = [
        ("/api/v1/namespaces/kube-system/services", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": addon.service, "namespace": "kube-system", "labels": {**labels, **addon.service_labels}},
            "spec": {"clusterIP": dns_ip, "selector": labels,
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
        ("/apis/apps/v1/namespaces/kube-system/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": addon.deployment, "namespace": "kube-system", "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels, "annotations": {"runbook.lab/simulation": KWOK_NOTE}},
                                  "spec": pod_spec}}}),
    ]
    created = []
    for collection, obj in objects:
        if api.request("GET", f"{collection}/{obj['metadata']['name']}")[0] == 200:
            continue  # there already (a create would fail on the taken address before it says "exists")
        code, body = api.request("POST", collection, obj)
        if code == 201:
            created.append(f"{obj['kind']} {obj['metadata']['name']}")
        elif code != 409:
            raise ClusterError(f"cannot create the DNS add-on's {obj['kind']} {obj['metadata']['name']}: {body.get('message')} "
                               f"(cluster DNS {dns_ip} in {domain})")
    return created


def rke_taints(n: NodeSpec) -> list[dict]:
    """RKE1's taints on nodes that are not workers, then the ones cluster.yml gives."""
    taints = []
    if "worker" not in n.roles:
        if "controlplane" in n.roles:
            taints.append({"key": "node-role.kubernetes.io/controlplane", "value": "true", "effect": "NoSchedule"})
        if "etcd" in n.roles:
            taints.append({"key": "node-role.kubernetes.io/etcd", "value": "true", "effect": "NoExecute"})
    return taints + n.taints


def node_object(n: NodeSpec, spec: ClusterSpec, taints: list[dict] | None = None, annotations: dict | None = None) -> dict:
    """The Node as the lab registers it: a label per role (``node-role.kubernetes.io/<role>``), the given
    taints (default: RKE1's, :func:`rke_taints`), and the annotations that say it is simulated."""
    labels = {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              SIMULATED: "true", **n.labels}
    for role in n.roles:
        labels[f"node-role.kubernetes.io/{role}"] = "true"
    taints = rke_taints(n) if taints is None else taints
    capacity = {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "20Gi"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": labels,
                         "annotations": {"runbook.lab/simulation": KWOK_NOTE, "kwok.x-k8s.io/node": "fake", **(annotations or {})}},
            "spec": {"taints": taints} if taints else {},
            "status": {"addresses": [{"type": "InternalIP", "address": n.address}, {"type": "Hostname", "address": n.name}],
                       "capacity": capacity, "allocatable": capacity,
                       "nodeInfo": {"kubeletVersion": f"{spec.kubernetes}+kwok-lab-simulation",
                                    "kubeProxyVersion": f"{spec.kubernetes}+kwok-lab-simulation",
                                    "containerRuntimeVersion": f"kwok://{spec.kwok}", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                    "kernelVersion": "lab-simulation", "operatingSystem": "linux", "architecture": "amd64",
                                    "machineID": "", "systemUUID": "", "bootID": ""}}}


def register_node(api: ApiClient, n: NodeSpec, spec: ClusterSpec, taints: list[dict] | None = None,
                  annotations: dict | None = None) -> bool:
    """Create the Node (its status too: KWOK keeps what is set), or bring labels and taints in line. True if created.

    RKE1 (``taints`` None): RKE's taints, brought in line on every run. Given ``taints`` are set at
    registration only, as a kubelet's ``--register-with-taints`` (a node may not change its own taints
    later: NodeRestriction); an existing Node then gets only its labels brought in line. An existing
    Node's kubelet and kube-proxy versions are set to the release starting now, as a kubelet of a new
    release reports them (an upgrade).
    """
    obj = node_object(n, spec, taints, annotations)
    code, body = api.request("POST", "/api/v1/nodes", obj)
    if code == 201:
        code, body = api.request("PATCH", f"/api/v1/nodes/{n.name}/status", {"status": obj["status"]},
                                 "application/merge-patch+json")
        if code != 200:
            raise ClusterError(f"cannot set the status of node {n.name}: {body.get('message')}")
        return True
    if code != 409:
        raise ClusterError(f"cannot register node {n.name}: {body.get('message')}")
    patch = {"metadata": {"labels": obj["metadata"]["labels"]}}
    if taints is None:
        patch["spec"] = {"taints": rke_taints(n) or None}
    code, body = api.request("PATCH", f"/api/v1/nodes/{n.name}", patch, "application/merge-patch+json")
    if code != 200:
        raise ClusterError(f"cannot update node {n.name}: {body.get('message')}")
    # a kubelet of another release (an upgrade) reports its version in the Node's status when it starts; KWOK keeps what is set
    versions = {key: obj["status"]["nodeInfo"][key] for key in ("kubeletVersion", "kubeProxyVersion")}
    if {key: (body.get("status", {}).get("nodeInfo") or {}).get(key) for key in versions} != versions:
        code, body = api.request("PATCH", f"/api/v1/nodes/{n.name}/status", {"status": {"nodeInfo": versions}},
                                 "application/merge-patch+json")
        if code != 200:
            raise ClusterError(f"cannot set the version of node {n.name}: {body.get('message')}")
    return False


def remove_node(api: ApiClient, name: str) -> None:
    api.request("DELETE", f"/api/v1/nodes/{name}")
    api.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
