"""rke-tools' ``rke-etcd-backup`` for the lab (LAB SIMULATION): how RKE1 packs and unpacks etcd snapshots on a node.

Real RKE runs rancher/rke-tools in a container on each etcd node. There, ``etcd-backup save --once
--name N`` has etcdctl write ``/backup/N`` (``/opt/rke/etcd-snapshots`` on the node), then zips it
with the cluster's state file that rke copied to ``/etc/kubernetes/N.rkestate`` into ``N.zip``
(entries named by their full paths, ``/backup/N`` and ``/etc/kubernetes/N.rkestate``, deflated, time
zero), removes both and makes the zip ``0600``; a restore unzips ``/backup/N`` again, and the state
file is read back out of the zip. The lab's ``rke`` runs this module inside a VM for the same steps
(after its own ``etcdctl snapshot save``), with the Python and project every VM sees:

    python -m runbooklab.kubernetes.rketools compress --name N
    python -m runbooklab.kubernetes.rketools decompress --name N
    python -m runbooklab.kubernetes.rketools statefile --name N
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

BACKUP_DIR = "/opt/rke/etcd-snapshots"  # /backup inside rke-tools' container
K8S_DIR = "/etc/kubernetes"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # rke-tools writes time zero; a zip's clock starts in 1980


def entry_names(name: str) -> tuple[str, str]:
    """The zip's entries as rke-tools names them: the container's paths of the snapshot and of the state file."""
    return f"/backup/{name}", f"{K8S_DIR}/{name}.rkestate"


def compress(name: str, backup_dir: str = BACKUP_DIR, k8s_dir: str = K8S_DIR) -> Path:
    snapshot = Path(backup_dir) / name
    state = Path(k8s_dir) / f"{name}.rkestate"
    target = Path(backup_dir) / f"{name}.zip"
    tmp = target.with_name(target.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as z:
        for path, entry in zip((snapshot, state), entry_names(name)):
            if path == state and not path.exists():
                continue  # rke could not deploy the state file: the snapshot is still valid without it
            info = zipfile.ZipInfo(entry, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o600 | 0o100000) << 16
            with open(path, "rb") as src, z.open(info, "w") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    os.replace(tmp, target)
    target.chmod(0o600)
    snapshot.unlink()
    state.unlink(missing_ok=True)
    return target


def _member(z: zipfile.ZipFile, entry: str) -> zipfile.ZipInfo:
    for info in z.infolist():
        if info.filename == entry:
            return info
    raise FileNotFoundError(f"File [{entry}] not found in file [{z.filename}]")


def decompress(name: str, backup_dir: str = BACKUP_DIR) -> Path:
    """``N.zip`` -> ``N`` (0600), as rke-tools does before a restore."""
    target = Path(backup_dir) / name
    with zipfile.ZipFile(Path(backup_dir) / f"{name}.zip") as z, z.open(_member(z, entry_names(name)[0])) as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return target


def statefile(name: str, backup_dir: str = BACKUP_DIR) -> bytes:
    with zipfile.ZipFile(Path(backup_dir) / f"{name}.zip") as z:
        return z.read(_member(z, entry_names(name)[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rke-etcd-backup", description="rke-tools etcd-backup (runbooklib LAB SIMULATION)")
    parser.add_argument("action", choices=("compress", "decompress", "statefile"))
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "compress":
            print(compress(args.name))
        elif args.action == "decompress":
            print(decompress(args.name))
        else:
            sys.stdout.buffer.write(statefile(args.name))
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        print(f"rke-etcd-backup {args.action} {args.name}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
