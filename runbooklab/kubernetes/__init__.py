"""What the Kubernetes phase needs of the lab: Docker on RKE1 nodes, a cluster.yml and ``rke``.

Registered in :data:`runbooklab.site.PROVISIONERS`; ``runbook lab up`` calls :func:`provision`
after the VMs are up. Everything here is a LAB SIMULATION where nothing real can run (see the
README's "real or stand-in" table): the Docker API stand-in (``dockerd.py``), the rke stand-in
(``rke.py``), the API server stand-in (``apiserver.py``) and the node heartbeat (``heartbeat.py``).
"""

from __future__ import annotations

import shlex
import sys

from runbooklib.kubernetes.rke1 import render_cluster_yml


def is_rke1(params) -> bool:
    return params.kubernetes is not None and params.kubernetes.distribution == "rke1"


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


def provision(lab, params, actions: list[str]) -> None:
    """RKE1 sites: Docker on every cluster node, ``cluster.yml`` rendered by the product, ``rke``."""
    if not is_rke1(params):
        return
    for host in params.hosts:
        if host.in_cluster and start_docker(lab, host.name):
            actions.append(f"{host.name}: started the Docker stand-in (lab simulation)")
    install_rke(lab, actions)
    cluster_yml = lab.root / "cluster.yml"
    text = render_cluster_yml(params)
    if not cluster_yml.exists() or cluster_yml.read_text() != text:
        cluster_yml.write_text(text)
