"""The lab's RKE2 artifact folder: what an air-gapped RKE2 install copies to each node, in the lab's format.

``runbook lab up`` on an RKE2 site writes ``<lab>/rke2-artifacts/`` (LAB SIMULATION, said in every file):

- ``rke2.linux-amd64.tar.gz``: laid out as RKE2's (``bin/rke2``, ``bin/rke2-killall.sh``,
  ``bin/rke2-uninstall.sh``, ``lib/systemd/system/rke2-{server,agent}.service`` and ``.env``,
  ``share/rke2/``); its ``bin/rke2`` is a launcher of the lab's stand-in (:mod:`runbooklab.kubernetes.rke2`)
  with the lab's Python, from the project every VM sees read-only; built byte for byte the same each time;
- ``sha256sum-amd64.txt``: ``<sha256>  rke2.linux-amd64.tar.gz``;
- ``install.sh``: RKE2's installer interface for air-gapped installs (``INSTALL_RKE2_ARTIFACT_PATH``,
  ``INSTALL_RKE2_TYPE``, ``INSTALL_RKE2_TAR_PREFIX``): it checks the tarball against the checksum file,
  refuses a mismatch, and unpacks into the prefix (``/usr/local``).

The tarball is of one Kubernetes release, the lab's default unless another is asked for and built.
Every release the lab runs (``runbooklab/kbin``: the default and each ``kubernetes-<version>/``) also
gets a folder of its own, ``<lab>/rke2-artifacts/<version>/``, when its parts are built: what an
upgrade installs release by release (``kubernetes.upgrade_path[].artifacts``), and what a cluster
of an older release is brought up from.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shlex
import sys
import tarfile
from pathlib import Path

from ...common import PROJECT
from .. import parts
from . import RELEASE, VERSION_ENV

FOLDER = "rke2-artifacts"
TARBALL = "rke2.linux-amd64.tar.gz"
SUMS = "sha256sum-amd64.txt"
INSTALLER = "install.sh"
MTIME = 1767225600  # every member's time (2026-01-01): the same inputs make the same tarball, hence the same checksum

LAUNCHER = """#!/bin/sh
# rke2 {version}+{release} of the runbooklib lab: a LAB SIMULATION stand-in for RKE2, not Rancher's rke2 binary.
# It runs runbooklab.kubernetes.rke2 with the lab's Python, from the project that every lab VM sees
# read-only at the path below; that starts the real Kubernetes parts the lab built (runbooklab/kbin).
{env}={version}
PYTHONPATH={project}
export {env} PYTHONPATH
PYTHON={python}
if [ ! -x "$PYTHON" ]; then
  echo "rke2 (lab simulation): the lab's Python $PYTHON is not here; this rke2 runs only in the runbooklib lab's VMs" >&2
  exit 1
fi
exec "$PYTHON" -m runbooklab.kubernetes.rke2 "$@"
"""

UNIT = """[Unit]
Description=Rancher Kubernetes Engine v2 ({kind}) - LAB SIMULATION: the runbooklib lab's stand-in, starting the real Kubernetes parts
Documentation=https://github.com/rancher/rke2#readme
Wants=network-online.target
After=network-online.target
Conflicts=rke2-{other}.service

[Install]
WantedBy=multi-user.target

[Service]
# RKE2's unit, less what a lab VM must not do (modprobe on the shared kernel, cgroup clean-up). The lab's
# service manager runs Type=notify as simple and ignores KillMode, Delegate, the limits and the timeout.
Type=notify
EnvironmentFile=-/etc/default/rke2-{kind}
EnvironmentFile=-/etc/sysconfig/rke2-{kind}
EnvironmentFile=-/usr/local/lib/systemd/system/rke2-{kind}.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=/usr/local/bin/rke2 {kind}
"""

KILLALL = """#!/bin/sh
# rke2-killall.sh of the runbooklib lab's RKE2 stand-in (LAB SIMULATION): stops rke2 and every part it started
for unit in rke2-server rke2-agent; do
  systemctl stop "$unit" >/dev/null 2>&1 || true
done
"""

UNINSTALL = """#!/bin/sh
# rke2-uninstall.sh of the runbooklib lab's RKE2 stand-in (LAB SIMULATION): stops RKE2, removes it, its
# configuration and its data (etcd's too), as RKE2's uninstaller does
set -e
PREFIX=$(cd "$(dirname "$0")/.." && pwd)
"$PREFIX/bin/rke2-killall.sh"
for unit in rke2-server rke2-agent; do
  systemctl disable "$unit" >/dev/null 2>&1 || true
  rm -f "/etc/systemd/system/$unit.service" "$PREFIX/lib/systemd/system/$unit.service" "$PREFIX/lib/systemd/system/$unit.env"
done
rm -rf /etc/rancher/rke2 /var/lib/rancher/rke2 /var/log/pods/kube-system_*_lab "$PREFIX/share/rke2"
rm -f "$PREFIX/bin/rke2" "$PREFIX/bin/rke2-killall.sh" "$PREFIX/bin/rke2-uninstall.sh"
echo "rke2 (lab simulation) uninstalled"
"""

NOTICE = """This is the runbooklib lab's RKE2 artifact (LAB SIMULATION), not Rancher's.

bin/rke2 runs the lab's stand-in for RKE2 {version}+{release} (runbooklab/kubernetes/rke2 in the
project). Like RKE2 it reads /etc/rancher/rke2/config.yaml, keeps its state in /var/lib/rancher/rke2,
joins servers and agents on port 9345 with the token, and runs the real etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (built from their Go modules by runbooklab/kbin, seen by
every lab VM at /opt/runbook-lab/kbin) as its children. No kubelet and no container runtime run: KWOK
manages each node's Node object and pods.
"""

INSTALL = """#!/bin/sh
# install.sh of the runbooklib lab's RKE2 artifact (LAB SIMULATION). It has the interface of RKE2's
# install.sh (get.rke2.io) for air-gapped installs from INSTALL_RKE2_ARTIFACT_PATH, and installs the
# lab's stand-in for rke2 {version}+{release}, which starts the real Kubernetes parts. It downloads nothing.
set -e

info() {{ echo "[INFO]  $*"; }}
fatal() {{ echo "[ERROR]  $*" >&2; exit 1; }}

info "runbooklib lab: this installs the lab's stand-in for RKE2 {version}+{release}"
info "(LAB SIMULATION, not Rancher's rke2: it starts the real Kubernetes parts the lab built)"
[ "$(id -u)" -eq 0 ] || fatal "You need to be root to perform this install"
INSTALL_RKE2_TYPE="${{INSTALL_RKE2_TYPE:-server}}"
case "$INSTALL_RKE2_TYPE" in
  server|agent) ;;
  *) fatal "invalid INSTALL_RKE2_TYPE '$INSTALL_RKE2_TYPE': use server or agent" ;;
esac
if [ -n "$INSTALL_RKE2_METHOD" ] && [ "$INSTALL_RKE2_METHOD" != tar ]; then
  fatal "INSTALL_RKE2_METHOD=$INSTALL_RKE2_METHOD: the lab's artifact installs with the tar method only"
fi
[ -n "$INSTALL_RKE2_ARTIFACT_PATH" ] || fatal "INSTALL_RKE2_ARTIFACT_PATH is not set: this installer installs from an artifact folder \
(rke2.linux-amd64.tar.gz and sha256sum-amd64.txt) and downloads nothing"
INSTALL_RKE2_TAR_PREFIX="${{INSTALL_RKE2_TAR_PREFIX:-/usr/local}}"
case "$(uname -m)" in
  x86_64|amd64) ARCH=amd64 ;;
  *) fatal "unsupported architecture $(uname -m): the lab's artifact is for amd64" ;;
esac
TARBALL="$INSTALL_RKE2_ARTIFACT_PATH/rke2.linux-$ARCH.tar.gz"
SUMS="$INSTALL_RKE2_ARTIFACT_PATH/sha256sum-$ARCH.txt"
[ -f "$SUMS" ] || fatal "$SUMS not found: copy the checksum file of the release into $INSTALL_RKE2_ARTIFACT_PATH"
[ -f "$TARBALL" ] || fatal "$TARBALL not found: copy the tarball of the release into $INSTALL_RKE2_ARTIFACT_PATH"
info "staging local checksums from $SUMS"
info "staging tarball from $TARBALL"
info "verifying tarball"
EXPECTED=$(awk -v f="rke2.linux-$ARCH.tar.gz" '$2 == f || $2 == "*" f {{ print $1 }}' "$SUMS")
[ -n "$EXPECTED" ] || fatal "$SUMS lists no checksum for rke2.linux-$ARCH.tar.gz"
ACTUAL=$(sha256sum "$TARBALL" | awk '{{ print $1 }}')
[ "$EXPECTED" = "$ACTUAL" ] || fatal "download sha256 does not match $EXPECTED, got $ACTUAL: the tarball is damaged \
or not the one the checksum file names; nothing was installed"
info "unpacking tarball file to $INSTALL_RKE2_TAR_PREFIX"
mkdir -p "$INSTALL_RKE2_TAR_PREFIX"
tar xzf "$TARBALL" -C "$INSTALL_RKE2_TAR_PREFIX"
if [ "$INSTALL_RKE2_TAR_PREFIX" != /usr/local ]; then
  # the units name /usr/local: for another prefix they go to /etc/systemd/system, pointing at it
  for unit in rke2-server rke2-agent; do
    sed "s|/usr/local|$INSTALL_RKE2_TAR_PREFIX|g" "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system/$unit.service" > "/etc/systemd/system/$unit.service"
  done
  info "wrote rke2-server.service and rke2-agent.service to /etc/systemd/system for the prefix $INSTALL_RKE2_TAR_PREFIX"
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
fi
info "installed rke2 {version}+{release} (lab simulation); start it with: systemctl enable --now rke2-$INSTALL_RKE2_TYPE"
"""


def members(version: str, python: str, project: Path) -> list[tuple[str, bytes, int]]:
    """The tarball's files: (path, content, mode), in order."""
    launcher = LAUNCHER.format(version=version, release=RELEASE, env=VERSION_ENV, project=shlex.quote(str(project)),
                               python=shlex.quote(python))
    out = [("bin/rke2", launcher, 0o755), ("bin/rke2-killall.sh", KILLALL, 0o755), ("bin/rke2-uninstall.sh", UNINSTALL, 0o755)]
    for kind, other in (("agent", "server"), ("server", "agent")):
        out += [(f"lib/systemd/system/rke2-{kind}.env", "HOME=/root\n", 0o644),
                (f"lib/systemd/system/rke2-{kind}.service", UNIT.format(kind=kind, other=other), 0o644)]
    out.append(("share/rke2/LAB-SIMULATION.txt", NOTICE.format(version=version, release=RELEASE), 0o644))
    return [(path, text.encode(), mode) for path, text, mode in out]


def tarball(files: list[tuple[str, bytes, int]]) -> bytes:
    """A gzipped tar of ``files`` (their folders first), the same bytes for the same files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders = sorted({str(Path(p).parents[i]) + "/" for p, _, _ in files for i in range(len(Path(p).parents) - 1)})
        for name, data, mode in [(d, None, 0o755) for d in folders] + files:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.mode, info.uname, info.gname = MTIME, mode, "root", "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build(root: Path, actions: list[str] | None = None, version: str | None = None, python: str = sys.executable,
          project: Path = PROJECT, folder: Path | None = None) -> Path:
    """``<root>/rke2-artifacts/`` (or ``folder``), each file rewritten only when it differs; what changed goes to ``actions``."""
    version = parts.require("kubernetes", version)
    folder = folder or root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    data = tarball(members(version, python, project))
    files = {TARBALL: data, SUMS: f"{hashlib.sha256(data).hexdigest()}  {TARBALL}\n".encode(),
             INSTALLER: INSTALL.format(version=version, release=RELEASE).encode()}
    for name, content in files.items():
        path = folder / name
        if path.exists() and path.read_bytes() == content:
            continue
        path.write_bytes(content)
        path.chmod(0o755 if name == INSTALLER else 0o644)
        if actions is not None:
            actions.append(f"wrote {path} (the lab's RKE2 {version} artifact: LAB SIMULATION)")
    return folder


def releases() -> list[str]:
    """The Kubernetes releases the lab runs: its default and each further one pinned in ``runbooklab/kbin``."""
    from ...kbin import build as kbin

    return sorted({parts.default_version("kubernetes"), *kbin.lab_kubernetes_versions()}, key=lambda v: tuple(map(int, v[1:].split("."))))


def build_releases(root: Path, actions: list[str] | None = None) -> dict[str, Path]:
    """``<root>/rke2-artifacts/<version>/`` for every release the lab runs and has built; a release not built is said in ``actions``."""
    out = {}
    for version in releases():
        try:
            out[version] = build(root, actions, version, folder=root / FOLDER / version)
        except parts.PartMissing as e:
            if actions is not None:
                actions.append(f"no RKE2 artifact for {version}: {e}")
    return out
