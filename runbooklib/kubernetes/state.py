"""The cluster's state folder: rendered files, ``cluster.rkestate`` and the kubeconfig, kept out of every record.

RKE1's ``cluster.rkestate`` holds every certificate and key of the cluster and
``kube_config_cluster.yml`` the administrator's key: both are credentials. They live in the folder
``kubernetes.state_dir`` names (relative to the parameter file), created ``0700``, never inside the
archive, and the runbooks show only the kubeconfig's path and the fingerprint of the cluster's CA.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import RunbookError

CLUSTER_YML = "cluster.yml"
RKESTATE = "cluster.rkestate"
KUBECONFIG_RKE1 = "kube_config_cluster.yml"


def state_dir(params, create: bool = False) -> Path:
    """The protected folder; with ``create``, made ``0700`` (an existing one readable by others is refused)."""
    archive = os.environ.get("RUNBOOK_ARCHIVE")
    return private_folder(params, params.kubernetes.state_dir, "kubernetes.state_dir", "the cluster's keys",
                          [Path(archive)] if archive else [], create)


def private_folder(params, value: str, field: str, holds: str, archives, create: bool = False,
                   error: type[RunbookError] = RunbookError) -> Path:
    """A local folder that holds credentials (``holds`` says which): relative to the parameter file, refused
    inside any of ``archives`` or when others can read it; ``create`` makes it ``0700``."""
    path = Path(os.path.expanduser(value))
    path = (path if path.is_absolute() else params.source_dir / path).resolve()
    for root in (Path(a).resolve() for a in archives):
        if path == root or root in path.parents:
            raise error(f"{params.source}: {field} {path} lies inside the archive {root}; it holds {holds} and must never "
                        "be archived: choose a folder outside it")
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise error(f"{params.source}: {field} {path} is readable by others (mode {mode:o}); it holds {holds}: "
                        f"run `chmod 700 {path}`")
    elif create:
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)
    return path


def kubeconfig_path(params) -> Path:
    """Where the distribution's kubeconfig is kept in the state folder."""
    return state_dir(params) / (KUBECONFIG_RKE1 if params.kubernetes.distribution == "rke1" else "rke2.yaml")


@dataclass(frozen=True)
class KubeconfigSummary:
    """What a record may show of a kubeconfig: where it is, which server, whose CA. Never a key."""

    path: str
    server: str
    ca_sha256: str

    def row(self) -> dict:
        return {"kubeconfig": self.path, "server": self.server, "CA fingerprint (SHA-256)": self.ca_sha256}


def summarize_kubeconfig(path: Path) -> KubeconfigSummary:
    try:
        data = yaml.safe_load(path.read_text())
        cluster = data["clusters"][0]["cluster"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise RunbookError(f"{path}: not a readable kubeconfig ({type(e).__name__}); run the bring-up again") from None
    ca = base64.b64decode(cluster.get("certificate-authority-data", "")) if "certificate-authority-data" in cluster else b""
    if not ca and cluster.get("certificate-authority"):
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return KubeconfigSummary(str(path), cluster.get("server", ""), _fingerprint(ca))


def _fingerprint(pem: bytes) -> str:
    """SHA-256 of the CA certificate's DER bytes, as ``openssl x509 -fingerprint -sha256`` prints it."""
    if not pem:
        return "(no CA in the kubeconfig)"
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    digest = hashlib.sha256(base64.b64decode(body)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def lost_state(params) -> str | None:
    """An incident: the cluster exists (its kubeconfig is here) but ``cluster.rkestate`` is gone. The recovery steps."""
    d = state_dir(params)
    if params.kubernetes.distribution != "rke1" or not (d / KUBECONFIG_RKE1).exists() or (d / RKESTATE).exists():
        return None
    return (f"INCIDENT: {d / RKESTATE} is missing but the cluster exists ({d / KUBECONFIG_RKE1} is there). `rke up` "
            "without the state file would issue new certificates and break the running cluster. Recover: 1) restore "
            "cluster.rkestate from your backup into the state folder; 2) if there is none, rebuild it from the cluster: "
            "`kubectl -n kube-system get configmap full-cluster-state -o jsonpath='{.data.full-cluster-state}' > "
            "cluster.rkestate` (RKE keeps a copy there); 3) run this runbook again. Record the incident.")


RKE2_CONFIGS = "rke2-configs"  # each node's config.yaml as last written, one file per node


def existing_spec(params):
    """The cluster as last brought up (read back from the state folder's rendered files), or None before the first."""
    d = state_dir(params)
    k = params.kubernetes
    if k.distribution == "rke1":
        from .rke1 import read_cluster_yml

        path = d / CLUSTER_YML
        return read_cluster_yml(path.read_text(), str(path)) if path.exists() else None
    from .rke2 import read_rke2_configs

    folder = d / RKE2_CONFIGS
    configs = {h.name: (folder / f"{h.name}.yaml").read_text() for h in params.hosts  # in inventory order
               if (folder / f"{h.name}.yaml").exists()}
    return read_rke2_configs(configs, name=k.cluster_name, version=k.version) if configs else None


def keep_rke2_config(params, node: str, text: str) -> None:
    folder = state_dir(params, create=True) / RKE2_CONFIGS
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / f"{node}.yaml").write_text(text)


def write_cluster_yml(params, text: str) -> Path:
    """Write RKE1's cluster.yml into the state folder (0600, atomically), the previous one kept as ``cluster.yml.runbook-bak``."""
    path = state_dir(params, create=True) / CLUSTER_YML
    if path.exists():
        backup = path.with_name(CLUSTER_YML + ".runbook-bak")
        backup.write_bytes(path.read_bytes())
        backup.chmod(0o600)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path
