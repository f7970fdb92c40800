"""The tools on the engineer's own machine that later phases need, and which are missing.

Read-only and local: nothing here connects anywhere. Tools whose version command would talk to a
server (kubectl's dispatcher asks a cluster first) are only located, never run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..params import Params


@dataclass(frozen=True)
class Tool:
    name: str
    needed_by: tuple[str, ...]  # parameter sections (phases) that use it; "*" for every environment
    purpose: str
    install: str
    version_args: tuple[str, ...] | None = ("--version",)
    python_module: bool = False
    setting: str = ""  # the kubernetes setting naming the binary the runbooks run (a name on PATH or a path)


TOOLS: tuple[Tool, ...] = (
    Tool("ssh", ("*",), "reach the hosts by hand when a step fails", "apt-get install openssh-client", ("-V",)),
    Tool("ssh-keygen", ("*",), "pin and check host keys", "apt-get install openssh-client", None),
    Tool("fabric", ("*",), "SSH from the runbooks (fabric over paramiko)", "pip install fabric", python_module=True),
    Tool("kubectl", ("kubernetes", "registry", "storage", "logging"), "talk to the cluster",
         "install kubectl matching the cluster's minor version", None, setting="kubectl"),
    Tool("kubernetes", ("kubernetes", "registry", "storage", "logging"), "the official Kubernetes client",
         "pip install kubernetes", python_module=True),
    Tool("rke", ("kubernetes:rke1",), "RKE1 cluster lifecycle (rke up, etcd snapshots)",
         "the rke binary for your version (in the lab: `runbook lab up` provides a stand-in)", setting="rke"),
    Tool("etcdctl", ("kubernetes",), "etcd health and snapshots", "apt-get install etcd-client", ("version",)),
    Tool("helm", ("storage", "logging"), "install Rook/Ceph and ECK charts", "install helm 3 from its release", setting="helm"),
    Tool("mariadb", ("database",), "SQL client for the database phase", "apt-get install mariadb-client"),
    Tool("pymysql", ("database",), "SQL from the runbooks", "pip install pymysql", python_module=True),
    Tool("nginx", ("edge",), "validate edge configuration locally (nginx -t)", "apt-get install nginx", ("-v",)),
)


def _needed(tool: Tool, params: Params) -> list[str]:
    out = []
    for need in tool.needed_by:
        section, _, variant = need.partition(":")
        if section == "*":
            out.append("every phase")
        elif getattr(params, section, None) is not None:
            if section == "kubernetes" and variant and params.kubernetes.distribution != variant:
                continue
            out.append(section)
    return out


def _version(path: str, args: tuple[str, ...]) -> str:
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0][:80] if text else "?"


def _locate(tool: Tool, params: Params) -> str:
    """Where the tool is: the binary the parameters name (``kubernetes.kubectl``, ``.helm``, ``.rke``), else on PATH."""
    name = getattr(params.kubernetes, tool.setting, None) if tool.setting and params.kubernetes else None
    name = name or tool.name
    if "/" in name:
        path = params.path(name)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else ""
    return shutil.which(name) or ""


def check_local_tools(params: Params) -> list[dict]:
    """One row per tool: found or missing, where, which phases of this environment need it."""
    rows = []
    for tool in TOOLS:
        needed = _needed(tool, params)
        if tool.python_module:
            spec = importlib.util.find_spec(tool.name)
            found, where, version = spec is not None, (spec.origin if spec else ""), ""
            if found:
                try:
                    from importlib.metadata import version as dist_version

                    version = dist_version(tool.name)
                except Exception:
                    version = "?"
        else:
            where = _locate(tool, params)
            found = bool(where)
            version = _version(where, tool.version_args) if found and tool.version_args else ("" if not found else "(not probed)")
        status = "ok" if found else ("MISSING" if needed else "missing (not needed here)")
        rows.append({"tool": tool.name, "status": status, "needed by": ", ".join(needed) or "-",
                     "version": version, "path": where, "purpose": tool.purpose,
                     "install": "" if found else tool.install})
    return rows


def missing_tools(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "MISSING"]
