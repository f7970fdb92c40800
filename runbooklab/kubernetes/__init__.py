"""What the Kubernetes phase needs of the lab: RKE1's Docker, cluster.yml and ``rke``; RKE2's artifact folder.

Registered in :data:`runbooklab.site.PROVISIONERS`; ``runbook lab up`` calls :func:`provision`
after the VMs are up. The cluster itself is real Kubernetes and etcd built from their Go modules
(``runbooklab/kbin``, located by ``parts.py``), started by the ``rke`` stand-in (``rke.py``, with
``cluster.py`` and ``etcd.py``) on RKE1 sites, and on RKE2 sites by the ``rke2`` stand-in that the
lab's RKE2 artifact installs (``rke2/``). LAB SIMULATION where nothing real can run (see the README's
"real or stand-in" table): the Docker API (``dockerd.py``), RKE and RKE2 themselves, and the kubelets
(KWOK manages each VM's Node instead).
"""

from __future__ import annotations

import shlex
import sys

from runbooklib.kubernetes.rke1 import render_cluster_yml


def is_rke1(params) -> bool:
    return params.kubernetes is not None and params.kubernetes.distribution == "rke1"


def is_rke2(params) -> bool:
    return params.kubernetes is not None and params.kubernetes.distribution == "rke2"


def start_docker(lab, vm: str) -> bool:
    """Start the Docker API stand-in in a VM, now and at every boot (the lab's 'install Docker')."""
    lab._require_vm(vm)
    return lab.enable_daemon(vm, "lab-dockerd", f"{shlex.quote(sys.executable)} -m runbooklab.kubernetes.dockerd")


def install_rke(lab, actions: list[str]) -> None:
    """The rke stand-in as ``<lab>/bin/rke`` (put that folder on PATH to call it ``rke``)."""
    wrapper = lab.root / "bin" / "rke"
    text = ("#!/bin/sh\n# rke for the runbooklib lab: a LAB SIMULATION stand-in, not Rancher's rke\n"
            f"exec {shlex.quote(sys.executable)} -m runbooklab.kubernetes.rke \"$@\"\n")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
        actions.append(f"installed the rke stand-in as {wrapper}")


def install_tools(lab, actions: list[str], kubernetes_version: str | None = None) -> None:
    """kubectl (of the cluster's release), etcdctl and helm, in ``<lab>/bin`` beside ``rke``."""
    from . import parts

    tools = {"kubectl": ("kubernetes", "kubectl"), "etcdctl": ("etcd", "etcdctl"), "etcdutl": ("etcd", "etcdutl"),
             "helm": ("helm", "helm")}
    for name, (component, binary) in tools.items():
        target = parts.host_path(component, binary, kubernetes_version if component == "kubernetes" else None)
        link = lab.root / "bin" / name
        if not target.exists():
            continue  # not built: rke up says which command builds it
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() or link.readlink() != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            actions.append(f"linked {link} -> {target}")


def provision(lab, params, actions: list[str]) -> None:
    """RKE1 sites: Docker on every cluster node and ELK VM, ``cluster.yml`` rendered by the product, ``rke`` and the tools.
    RKE2 sites: the lab's RKE2 artifact folder (``<lab>/rke2-artifacts``, and ``<lab>/rke2-artifacts/<version>/`` for each
    release the lab runs) and the tools; the runbook installs RKE2."""
    if is_rke2(params):
        from . import parts
        from .rke2 import artifact

        install_tools(lab, actions)
        try:
            artifact.build(lab.root, actions)
        except parts.PartMissing as e:
            actions.append(f"no RKE2 artifact: {e}")
        artifact.build_releases(lab.root, actions)  # one folder per release, for upgrades and older clusters
        return
    if not is_rke1(params):
        return
    install_tools(lab, actions, params.kubernetes.version)
    for host in params.hosts:
        # the old ELK VMs ran their stack in Docker (and join as workers in 10-capacity-fold-in)
        if (host.in_cluster or "elk" in host.roles) and start_docker(lab, host.name):
            actions.append(f"{host.name}: started the Docker stand-in (lab simulation)")
    install_rke(lab, actions)
    cluster_yml = lab.root / "cluster.yml"
    text = render_cluster_yml(params)
    if not cluster_yml.exists() or cluster_yml.read_text() != text:
        cluster_yml.write_text(text)
