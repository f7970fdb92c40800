"""Rook's own manifests and charts for the lab, from Rook's Go module (the Go module proxy serves it).

An air-gapped site copies Rook's ``deploy/examples`` (crds.yaml, common.yaml, operator.yaml) or its
``deploy/charts`` to a folder the block-storage runbook reads (``storage.ceph.install.location``). The
lab does the same from the module ``github.com/rook/rook`` at the release the parameters name:
``python3 -m runbooklab.rook --fetch`` (run by ``make setup``) downloads it into Go's module cache,
and ``runbook lab up`` copies those files to ``<lab>/rook/<release>/``. Nothing is built and no
Rook container runs in the lab: the operator's Deployment is accepted by the lab's Kubernetes and its
pods are KWOK's (simulated); no Ceph daemon runs.

Registered in :data:`runbooklab.site.PROVISIONERS`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

MODULE = "github.com/rook/rook"
DEFAULT_RELEASE = "v1.18.8"
FILES = ("deploy/examples/crds.yaml", "deploy/examples/common.yaml", "deploy/examples/operator.yaml")
CHARTS = ("rook-ceph", "rook-ceph-cluster", "library")


def module_dir(release: str, download: bool = False) -> Path | None:
    """Rook's module at ``release`` in Go's module cache (downloaded first when ``download``), or None."""
    cmd = ["go", "mod", "download", "-json", f"{MODULE}@{release}"]
    try:
        if not download:
            gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True)
            path = Path(gomodcache.stdout.strip()) / f"{MODULE}@{release}"
            return path if (path / FILES[0]).is_file() else None
        r = subprocess.run(cmd, capture_output=True, text=True, env=_go_env())
    except FileNotFoundError:  # no Go here: nothing in its cache either
        if download:
            raise RuntimeError(f"go is not installed: it fetches {MODULE}@{release} (Rook's manifests for the lab)") from None
        return None
    if r.returncode != 0:
        raise RuntimeError(f"go mod download {MODULE}@{release} failed: {(r.stdout + r.stderr).strip()[-400:]}")
    return Path(json.loads(r.stdout)["Dir"])


def _go_env() -> dict:
    import os

    return dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")


def layout(lab_root: Path, release: str, actions: list[str]) -> Path | None:
    """``<lab>/rook/<release>/``: Rook's three manifests and its charts, copied from the module (once)."""
    target = lab_root / "rook" / release
    if (target / "operator.yaml").is_file():
        return target
    source = module_dir(release)
    if source is None:
        actions.append(f"no Rook {release} for the block-storage runbook: run `make setup` (python3 -m runbooklab.rook --fetch)")
        return None
    tmp = target.with_name(release + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(source / f, tmp / Path(f).name)
    for chart in CHARTS:
        shutil.copytree(source / "deploy" / "charts" / chart, tmp / chart)
    for p in tmp.rglob("*"):  # the module cache is read-only; the copy is the lab's
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp.rename(target)
    actions.append(f"Rook {release}'s manifests and charts copied to {target} (from the Go module {MODULE})")
    return target


def provision(lab, params, actions: list[str]) -> None:
    ceph = params.storage.ceph if params.storage else None
    if ceph is None or ceph.install is None:
        return
    layout(lab.root, ceph.rook_version, actions)


def main(argv: list[str]) -> int:
    release = argv[argv.index("--release") + 1] if "--release" in argv else DEFAULT_RELEASE
    if "--fetch" in argv:
        if module_dir(release) is None:
            path = module_dir(release, download=True)
            print(f"rook: {MODULE}@{release} downloaded to {path}")
        return 0
    print(module_dir(release) or f"{MODULE}@{release} is not in Go's module cache; run with --fetch")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
