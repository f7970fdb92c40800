"""The edge phase's facts: what each edge node runs and which configuration it holds, in one round trip.

Every fact is a shell command and a pure parser of its output (tested on recorded outputs). The
configuration that *runs* is read from nginx itself: the edge's port-80 server answers its
configuration's id on the node's loopback (``/.runbooklib-edge``), so a file written but never
loaded (a reload that failed or was interrupted) is seen as such.
"""

from __future__ import annotations

import base64
from typing import Optional, TypedDict

from ..phase.facts import Fact, FactSet, Gathered
from .render import DEFAULT_SITE, HEALTH_PATH, HTTP_FILE, STREAM_FILE, STREAM_LOADER, STREAM_MODULE
from .settings import cdn_root

MANAGED = (HTTP_FILE, STREAM_FILE)


class Nginx(TypedDict):
    installed: bool
    version: str
    stream_module: bool  # libnginx-mod-stream's module and its loader in modules-enabled
    curl: bool  # the checks after a reload ask nginx over loopback with curl


class Service(TypedDict):
    active: str
    enabled: str


class CdnRoot(TypedDict):
    exists: bool
    fstype: str  # fuse.glusterfs once runbook 06 mounted the volume; "" when not a mount point
    probe: bool  # the probe file (edge.cdn_probe_file) is there


class HostFacts(TypedDict):
    nginx: Nginx
    files: dict[str, Optional[str]]  # managed path -> content, None: absent
    default_site: bool  # Debian's default site is enabled (it claims port 80's default_server)
    service: Service
    running_config: str  # the id the running nginx answers; "" when it does not answer
    cdn_root: CdnRoot


def parse_nginx(text: str) -> Nginx:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    version = next((line.split("nginx version:", 1)[1].strip() for line in lines if "nginx version:" in line), "")
    return {"installed": bool(version), "version": version, "stream_module": "stream=yes" in lines, "curl": "curl=yes" in lines}


def parse_files(text: str) -> dict[str, Optional[str]]:
    """``<path> present <base64>`` or ``<path> absent`` per line."""
    out: dict[str, Optional[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = None if parts[1] == "absent" else (base64.b64decode(parts[2]).decode(errors="replace") if len(parts) > 2 else "")
    missing = [p for p in MANAGED if p not in out]
    if missing:
        raise ValueError(f"no answer for {', '.join(missing)}")
    return out


def parse_flag(text: str) -> bool:
    return "yes" in text.split()


def parse_service(text: str) -> Service:
    """``active=<state>`` and ``enabled=<state>`` lines; a state systemctl did not print is ``unknown``."""
    values = dict(line.strip().split("=", 1) for line in text.splitlines() if "=" in line)
    return {"active": values.get("active") or "unknown", "enabled": values.get("enabled") or "unknown"}


def parse_running(text: str) -> str:
    value = text.strip()
    return value if len(value) == 12 and all(c in "0123456789abcdef" for c in value) else ""


def parse_cdn_root(text: str) -> CdnRoot:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"exists": "dir=yes" in lines, "fstype": next((line[7:] for line in lines if line.startswith("fstype=")), ""),
            "probe": "probe=yes" in lines}


def _file(path: str) -> str:
    return f"if [ -f {path} ]; then echo {path} present $(base64 -w0 < {path}); else echo {path} absent; fi"


FACTS = (
    Fact("nginx", "nginx and its stream module",
         f"command -v nginx >/dev/null && nginx -v 2>&1; test -f {STREAM_MODULE} && test -e {STREAM_LOADER} && echo stream=yes; "
         "command -v curl >/dev/null && echo curl=yes",
         parse_nginx, {"installed": False, "version": "", "stream_module": False, "curl": False}),
    Fact("files", "the edge's configuration files", "; ".join(_file(p) for p in MANAGED), parse_files, {}),
    Fact("default_site", "Debian's default site enabled", f"if [ -e {DEFAULT_SITE} ] || [ -L {DEFAULT_SITE} ]; then echo yes; fi",
         parse_flag, False),
    Fact("service", "nginx: active, enabled", "echo active=$(systemctl is-active nginx); echo enabled=$(systemctl is-enabled nginx)",
         parse_service, {"active": "unknown", "enabled": "unknown"}),
    Fact("running_config", "the configuration the running nginx answers with",
         "curl -s -m 3 http://127.0.0.1:{http_port}" + HEALTH_PATH, parse_running, ""),
    Fact("cdn_root", "the CDN folder and what is mounted there",
         "test -d {cdn_root} && echo dir=yes; echo fstype=$(findmnt -n -o FSTYPE --mountpoint {cdn_root}); "
         "test -f {cdn_root}/{probe} && echo probe=yes",
         parse_cdn_root, {"exists": False, "fstype": "", "probe": False}),
)


def fact_set(p) -> FactSet:
    return FactSet(FACTS, context=lambda host: {"http_port": str(p.edge.http_port), "cdn_root": cdn_root(p),
                                                "probe": p.edge.cdn_probe_file})


def edge_hosts(p) -> list:
    return [p.host(n) for n in p.edge.hosts]


def gather(p, fleet, hosts: list | None = None) -> Gathered:
    """Facts of every edge node, in parallel, one round trip each.

    A node whose answer came back cut short (seen on a busy machine: the last fact missing) is asked
    once more; if it is cut again, the plan blocks that node as the house does.
    """
    hosts = hosts if hosts is not None else edge_hosts(p)
    got = fact_set(p).gather(fleet, hosts, desc="edge facts")
    cut = [h for h in hosts if any("cut short" in why for why in (got.fact_errors or {}).get(h.name, {}).values())]
    if not cut:
        return got
    again = fact_set(p).gather(fleet, cut, desc="edge facts (again)")
    facts, errors, fact_errors = dict(got.facts), dict(got.errors), dict(got.fact_errors or {})
    for h in cut:
        fact_errors.pop(h.name, None)
        facts.pop(h.name, None)
        if h.name in again.facts:
            facts[h.name] = again.facts[h.name]
        if h.name in (again.fact_errors or {}):
            fact_errors[h.name] = again.fact_errors[h.name]
        if h.name in again.errors:
            errors[h.name] = again.errors[h.name]
    return Gathered(facts, errors, fact_errors)
