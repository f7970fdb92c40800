"""RKE2 in the lab: a stand-in for Rancher's ``rke2`` (LAB SIMULATION) that starts the real Kubernetes parts.

A runbook installs RKE2 on the lab's VMs exactly as on production Debian VMs, air-gapped: it copies
the artifact folder the lab builds (:mod:`.artifact`: ``rke2.linux-amd64.tar.gz``, ``sha256sum-amd64.txt``
and ``install.sh``) to each node, runs ``install.sh``, writes ``/etc/rancher/rke2/config.yaml`` and
enables ``rke2-server`` or ``rke2-agent``. The tarball's ``bin/rke2`` is a launcher of this package
(``python -m runbooklab.kubernetes.rke2``, from the project that every VM sees read-only), which
does what RKE2 does, with the real binaries the lab built from their Go modules (``runbooklab/kbin``)
as its own child processes where RKE2 runs static pods:

- ``rke2 server`` (:mod:`.server`): the first server creates the cluster's CAs and its token
  (``/var/lib/rancher/rke2/server/node-token``, ``K10<CA hash>::server:<secret>``), starts etcd, the
  API server, the controller manager and the scheduler, registers its Node, creates the DNS add-on
  and writes ``/etc/rancher/rke2/rke2.yaml``; it serves joiners on port 9345 (:mod:`.join`). Other
  servers fetch the CAs from there with the token, join etcd with the real etcdctl (as a learner,
  then promoted), and start the same parts.
- ``rke2 agent`` (:mod:`.agent`): fetches its node certificates over 9345 with the token, balances
  127.0.0.1:6443 over the servers' API and 127.0.0.1:6444 over their port 9345 (:mod:`.lb`), and
  registers its Node.
- ``rke2 etcd-snapshot save|ls``, ``rke2 --version``.

No kubelet and no container runtime run: KWOK, one per node as RKE2's child, manages that node's
Node object and pods (as in the RKE1 lab). Everything simulated says so: ``rke2 --version``, the unit
descriptions, install.sh, the label ``runbook.lab/simulated=true`` and the annotation
``runbook.lab/simulation`` on every Node.
"""

from __future__ import annotations

import os
import sys
import time

DATA_DIR = "/var/lib/rancher/rke2"
SERVER_DIR = f"{DATA_DIR}/server"
TLS_DIR = f"{SERVER_DIR}/tls"
CRED_DIR = f"{SERVER_DIR}/cred"
ETCD_DIR = f"{SERVER_DIR}/db/etcd"
SNAPSHOT_DIR = f"{SERVER_DIR}/db/snapshots"
AGENT_DIR = f"{DATA_DIR}/agent"
BIN_DIR = f"{DATA_DIR}/bin"
CONFIG_DIR = "/etc/rancher/rke2"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
KUBECONFIG = f"{CONFIG_DIR}/rke2.yaml"
TOKEN_FILE = f"{SERVER_DIR}/token"
NODE_TOKEN = f"{SERVER_DIR}/node-token"
POD_LOGS = "/var/log/pods"
SUPERVISOR_PORT = 9345
API_PORT = 6443
LB_PORT = 6444
RELEASE = "rke2r1"
VERSION_ENV = "RKE2_LAB_KUBERNETES_VERSION"  # set by the tarball's launcher: the release it was built for
NOTE = "LAB SIMULATION: the runbooklib lab's stand-in for RKE2"


def kubernetes_version() -> str:
    """The Kubernetes release this rke2 runs: the one its tarball was built for, else the lab's default."""
    from .. import parts

    return os.environ.get(VERSION_ENV) or parts.default_version("kubernetes")


def version_text() -> str:
    from .. import parts

    k8s = kubernetes_version()
    return (f"rke2 version {k8s}+{RELEASE} (lab simulation: the runbooklib lab's stand-in for RKE2, not Rancher's rke2; "
            f"it starts the real kube-apiserver, kube-controller-manager and kube-scheduler {k8s} and etcd "
            f"{parts.default_version('etcd')} built from their Go modules, and KWOK {parts.default_version('kwok')} "
            "in place of the kubelet)\ngo version: none (a Python stand-in)")


class Fatal(Exception):
    """RKE2 stops: the message is its ``level=fatal`` line."""


class Log:
    """RKE2's log lines (logrus text format), on stderr: the service manager keeps them in the unit's log."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def _line(self, level: str, msg: str) -> None:
        text = msg.replace("\\", "\\\\").replace('"', '\\"')
        print(f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level={level} msg="{text}"', file=self.stream, flush=True)

    def info(self, msg: str) -> None:
        self._line("info", msg)

    def warn(self, msg: str) -> None:
        self._line("warning", msg)

    def error(self, msg: str) -> None:
        self._line("error", msg)

    def fatal(self, msg: str) -> None:
        self._line("fatal", msg)
