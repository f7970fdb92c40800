"""The cache hosts' facts (VM variant): the server, the service, its configuration and its replication, in one round trip.

Every fact is a shell command (``rcli`` is ``redis-cli`` logged in, see :mod:`runbooklib.cache.client`)
and a pure parser of its output, tested on recorded outputs (``tests/data/cache/``). The drop-in is
read with its two secret lines replaced by placeholders on the host; whether those lines hold the
password the parameters name is compared on the host too (``same``/``differs``), so no password
ever leaves it.
"""

from __future__ import annotations

import base64
from typing import Optional, TypedDict

from ..phase.facts import Fact, FactSet, Gathered
from .client import PLACEHOLDER

DROPIN = "/etc/redis/runbooklib.conf"
MAIN_CONFIG = "/etc/redis/redis.conf"  # Debian's, read by Debian's unit (ExecStart=... /etc/redis/redis.conf)
SERVICE = "redis-server"


class Server(TypedDict):
    installed: bool
    version: str


class Service(TypedDict):
    active: str
    enabled: str


class Replication(TypedDict):
    """``INFO replication``, or why the server did not answer."""

    answering: bool
    error: str
    info: dict[str, str]


# -- parsers -----------------------------------------------------------------------------------

def parse_server(text: str) -> Server:
    line = " ".join(text.split())
    version = next((w.split("=", 1)[1] for w in line.split() if w.startswith("v=")), "")
    return {"installed": bool(line), "version": version or line}


def parse_service(text: str) -> Service:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"active": lines[0] if lines else "unknown", "enabled": lines[1] if len(lines) > 1 else "unknown"}


def parse_file(text: str) -> Optional[str]:
    """``present <base64>`` or ``absent``."""
    parts = text.split()
    if not parts or parts[0] == "absent":
        return None
    return base64.b64decode(parts[1]).decode(errors="replace") if len(parts) > 1 else ""


def parse_last_directive(text: str) -> Optional[str]:
    """The main configuration's last directive (what an ``include`` must be to win), or None without the file."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] == "absent":
        return None
    return " ".join(lines[-1].split())


def parse_secret_lines(text: str) -> dict[str, str]:
    """``requirepass=same`` lines as a mapping (same, differs, absent)."""
    return {k: v for k, v in (line.strip().split("=", 1) for line in text.splitlines() if "=" in line)}


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output (``key:value`` lines, ``#`` section headers) as a mapping."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k] = v
    return out


def parse_replication(text: str) -> Replication:
    body, _, rc = text.rpartition("--rc--")
    rc = rc.strip().removeprefix("rc:")
    info = parse_info(body)
    if rc != "0" or "role" not in info:
        return {"answering": False, "error": " ".join(body.split())[-300:] or f"redis-cli exited {rc or '?'}", "info": {}}
    return {"answering": True, "error": "", "info": info}


def parse_persistence(text: str) -> dict[str, str]:
    """``INFO persistence`` as a mapping; empty when the server did not answer."""
    body, _, rc = text.rpartition("--rc--")
    info = parse_info(body)
    return info if rc.strip().removeprefix("rc:") == "0" and "aof_enabled" in info else {}


def replicas_of(info: dict[str, str]) -> list[dict[str, str]]:
    """A primary's ``slaveN:ip=...,port=...,state=online,offset=...,lag=...`` entries."""
    out = []
    for key in sorted(k for k in info if k.startswith("slave") and k[5:].isdigit()):
        out.append(dict(part.split("=", 1) for part in info[key].split(",") if "=" in part))
    return out


# -- the fact table ----------------------------------------------------------------------------

def _file(path: str, redact: bool = False) -> str:
    # a secret directive in any case, indented or not, separated by spaces or tabs: its value never leaves the host
    read = (f"sed -E 's/^([[:space:]]*)([Rr][Ee][Qq][Uu][Ii][Rr][Ee][Pp][Aa][Ss][Ss]|[Mm][Aa][Ss][Tt][Ee][Rr][Aa][Uu][Tt][Hh])"
            f"([[:space:]]).*/\\1\\2\\3{PLACEHOLDER}/' {path}") if redact else f"cat {path}"
    return f"if [ -f {path} ]; then echo present $({read} | base64 -w0); else echo absent; fi"


FACTS: tuple[Fact, ...] = (
    Fact("server", "the server binary and its version", "command -v redis-server >/dev/null && redis-server --version",
         parse_server, {"installed": False, "version": ""}),
    Fact("service", "the service: active, enabled", f"systemctl is-active {SERVICE}; systemctl is-enabled {SERVICE}",
         parse_service, {"active": "unknown", "enabled": "unknown"}),
    Fact("last_directive", "the main configuration's last directive (the drop-in's include must be it)",
         f"if [ -f {MAIN_CONFIG} ]; then grep -vE '^[[:space:]]*(#|$)' {MAIN_CONFIG} | tail -1 | "
         "sed -E 's/^([[:space:]]*([Rr][Ee][Qq][Uu][Ii][Rr][Ee][Pp][Aa][Ss][Ss]|[Mm][Aa][Ss][Tt][Ee][Rr][Aa][Uu][Tt][Hh]|"
         "[Uu][Ss][Ee][Rr])[[:space:]]).*/\\1<value not shown>/'; else echo absent; fi",
         parse_last_directive, None),
    Fact("dropin", "the drop-in, its secret lines as placeholders", _file(DROPIN, redact=True), parse_file, None),
    Fact("dropin_secrets", "whether the drop-in's secret lines hold the parameters' password (compared on the host)",
         "for k in requirepass masterauth; do want=$(grep \"^$k \" \"$FILE_secret_lines\"); "
         f"have=$(grep \"^$k \" {DROPIN} 2>/dev/null); if [ -z \"$have\" ]; then echo $k=absent; "
         "elif [ \"$want\" = \"$have\" ]; then echo $k=same; else echo $k=differs; fi; done",
         parse_secret_lines, {}),
    Fact("replication", "INFO replication (or why the server does not answer)",
         "rcli INFO replication 2>&1; rc=$?; echo --rc--; echo rc:$rc", parse_replication,
         {"answering": False, "error": "not read", "info": {}}),
    Fact("persistence", "INFO persistence (empty when the server does not answer)",
         "rcli INFO persistence 2>&1; rc=$?; echo --rc--; echo rc:$rc", parse_persistence, {}),
)


def cache_hosts(params) -> list:
    """The VM variant's hosts, primary first."""
    return [params.host(name) for name in params.cache.roles()]


def gather(params, client, hosts: list | None = None) -> Gathered:
    """Facts of the cache hosts, in parallel, one round trip each: ``(facts, errors, fact_errors)``."""
    return FactSet(FACTS).gather(client.transport(), hosts if hosts is not None else cache_hosts(params), desc="cache facts")
