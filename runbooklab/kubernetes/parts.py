"""Where the lab's real Kubernetes parts are, on the machine and inside the VMs.

``runbooklab/kbin/build.py`` builds kube-apiserver, kube-controller-manager, kube-scheduler,
kubectl, etcd, etcdctl, etcdutl, kwok and helm from their Go modules into a cache outside the
checkout. Every VM sees that cache read-only at :data:`VM_KBIN` (the boot script binds it), the
way a node sees the images RKE pulled: the ``rke`` stand-in starts those binaries, never copies.
"""

from __future__ import annotations

from pathlib import Path

from ..kbin import build as kbin

VM_KBIN = "/opt/runbook-lab/kbin"


class PartMissing(Exception):
    """A binary the cluster needs has not been built; the message says which command builds it."""


def cache_root() -> Path:
    return kbin.cache_root()


def default_version(component: str) -> str:
    """The version a component's go.mod pins (Kubernetes: the lab's default minor)."""
    return kbin.required_version(kbin.HERE / component / "go.mod", kbin.COMPONENTS[component]["module"])


def host_path(component: str, binary: str, version: str | None = None) -> Path:
    return kbin.target_dir(component, version or default_version(component)) / "bin" / binary


def vm_path(component: str, binary: str, version: str | None = None) -> str:
    return f"{VM_KBIN}/{component}-{version or default_version(component)}/bin/{binary}"


def require(component: str, version: str | None = None) -> str:
    """The version, after checking its binaries are built; else :class:`PartMissing` with the build command."""
    version = version or default_version(component)
    if not kbin.present(component, version):
        extra = f" --kubernetes-version {version}" if component == "kubernetes" and version != default_version(component) else ""
        raise PartMissing(f"the lab has no build of {component} {version} (looked in {kbin.target_dir(component, version)}); "
                          f"build it with `python3 runbooklab/kbin/build.py{extra} {component}` (make kube-parts builds "
                          "the default set)")
    return version


def kwok_stages(version: str | None = None) -> Path:
    """The KWOK Stage documents saved beside the kwok binary at build time."""
    return kbin.target_dir("kwok", version or default_version("kwok")) / "stages"
