"""RKE2's certificates, where RKE2 keeps them (``/var/lib/rancher/rke2/server/tls``, ``.../agent``).

The first server creates the CAs RKE2 has: ``server-ca`` (serving certificates), ``client-ca`` (client
certificates, also the CSR signer's), ``request-header-ca`` (the front proxy), ``etcd/server-ca`` and
``etcd/peer-ca``, and the service-account key ``service.key``. Joining servers receive them over port
9345 (the bootstrap data) and issue their own certificates; agents receive only theirs. Issued with
the lab's :class:`~runbooklab.kubernetes.pki.Pki` (RKE2's ``.crt``/``.key`` names); every subject
says it is the lab's (``OU=runbook lab simulation``).
"""

from __future__ import annotations

from pathlib import Path

from .. import cluster as lab_cluster
from ..pki import Pki
from . import AGENT_DIR, API_PORT, CRED_DIR, TLS_DIR

CAS = ("server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca")
# what joining servers receive: every CA with its key, and the service-account key
BOOTSTRAP = tuple(f"{ca}{suffix}" for ca in CAS for suffix in (".crt", ".key")) + ("service.key", "service.crt")
KWOK_NAME = "client-kwok"  # the lab's: KWOK's certificate (group runbook-lab:kwok), no such file in RKE2


def server_pki() -> Pki:
    return Pki(Path(TLS_DIR), ".crt", ".key")


def agent_pki() -> Pki:
    return Pki(Path(AGENT_DIR), ".crt", ".key")


def create_cas(pki: Pki, cluster: str) -> None:
    """The first server's CAs and service-account key (kept when present)."""
    for ca in CAS:
        pki.ensure_ca(cluster, ca, f"rke2-{ca.replace('/', '-')}")
    pki.ensure_key("service")


def bootstrap_files(pki: Pki) -> dict[str, bytes]:
    return {name: pki.path(name).read_bytes() for name in BOOTSTRAP if pki.path(name).exists()}


def write_bootstrap(pki: Pki, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        if name not in BOOTSTRAP:
            continue
        path = pki.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600 if name.endswith(".key") else 0o644)


def issue_server(pki: Pki, node: str, address: str, sans: list[str], service_cidr: str, domain: str) -> None:
    """This server's own certificates: the API's serving certificate (also port 9345's), the control plane's
    client certificates, etcd's serving, client and peer certificates."""
    local = (address, node, "127.0.0.1", "localhost")
    api_names = tuple(dict.fromkeys(local + ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                             f"kubernetes.default.svc.{domain}", lab_cluster.first_service_ip(service_cidr),
                                             *sans)))
    pki.issue("serving-kube-apiserver", "kube-apiserver", server_names=api_names, client=False, ca="server-ca")
    pki.issue("client-admin", "system:admin", ("system:masters",), ca="client-ca")
    pki.issue("client-controller", "system:kube-controller-manager", ca="client-ca")
    pki.issue("client-scheduler", "system:kube-scheduler", ca="client-ca")
    pki.issue("client-auth-proxy", "system:auth-proxy", ca="request-header-ca")
    pki.issue("etcd/client", "etcd-client", ca="etcd/server-ca")
    pki.issue("etcd/server-client", "etcd-server", server_names=local, ca="etcd/server-ca")
    pki.issue("etcd/peer-server-client", "etcd-peer", server_names=local, ca="etcd/peer-ca")


def node_credentials(pki: Pki, node: str) -> dict[str, bytes]:
    """What a node's agent needs, issued by the server: its kubelet certificate and the lab's KWOK certificate."""
    out = {}
    for name, cn, org in (("client-kubelet", f"system:node:{node}", "system:nodes"),
                          (KWOK_NAME, f"{lab_cluster.KWOK_GROUP}:{node}", lab_cluster.KWOK_GROUP)):
        cert, key = pki.issue(f"nodes/{node}/{name}", cn, (org,), ca="client-ca")
        out[f"{name}.crt"], out[f"{name}.key"] = cert.read_bytes(), key.read_bytes()
    return out


def write_agent(files: dict[str, bytes]) -> None:
    """The agent's certificates in ``/var/lib/rancher/rke2/agent`` (keys 0600)."""
    d = Path(AGENT_DIR)
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = d / name
        if path.exists() and path.read_bytes() == data:
            continue
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o600 if name.endswith(".key") else 0o644)
        tmp.replace(path)


def component_kubeconfig(user: str, cert: str, ca: str, port: int = API_PORT) -> str:
    """A component's kubeconfig naming its certificate files (``cert`` is the path without ``.crt``)."""
    return lab_cluster.file_kubeconfig(user, f"https://127.0.0.1:{port}", ca, f"{cert}.crt", f"{cert}.key")


def write_file(path: str, text: str, mode: int = 0o600) -> bool:
    """Write ``text`` unless the file already holds it; True if written."""
    p = Path(path)
    if p.exists() and p.read_text() == text:
        p.chmod(mode)
        return False
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(p)
    return True


def server_kubeconfigs() -> dict[str, str]:
    """The control plane's kubeconfigs in ``server/cred`` (as RKE2 writes them), by path."""
    ca = f"{TLS_DIR}/server-ca.crt"
    return {
        f"{CRED_DIR}/admin.kubeconfig": component_kubeconfig("system:admin", f"{TLS_DIR}/client-admin", ca),
        f"{CRED_DIR}/controller.kubeconfig": component_kubeconfig("system:kube-controller-manager", f"{TLS_DIR}/client-controller", ca),
        f"{CRED_DIR}/scheduler.kubeconfig": component_kubeconfig("system:kube-scheduler", f"{TLS_DIR}/client-scheduler", ca),
    }
