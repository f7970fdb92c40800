"""Helpers for the cache tests: the lab-cache profile as data, and facts of a converged cache host."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from runbooklib.cache import operations as ops
from runbooklib.params import load_params

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "params" / "lab-cache.yaml"
DATA = ROOT / "tests" / "data" / "cache"


def profile_data() -> dict:
    return copy.deepcopy(yaml.safe_load(PROFILE.read_text()))


def params_from(tmp_path: Path, data: dict, name: str = "params.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_params(path)


def converged(p, host: str, primary: str | None = None) -> dict:
    """Facts of a cache host as 08-session-cache leaves it (``primary`` overrides the parameters', after a failover)."""
    h = p.host(host)
    primary = primary or p.cache.vms.primary
    port = str(p.cache.vms.port)
    if host == primary:
        replica = next(n for n in p.cache.roles() if n != primary)
        info = {"role": "master", "connected_slaves": "1", "master_repl_offset": "1356",
                "slave0": f"ip={p.host(replica).address},port={port},state=online,offset=1356,lag=0"}
    else:
        info = {"role": "slave", "master_host": str(p.host(primary).address), "master_port": port, "master_link_status": "up",
                "slave_repl_offset": "1356", "master_repl_offset": "1356"}
    return {
        "server": {"installed": True, "version": "7.0.15"},
        "service": {"active": "active", "enabled": "enabled"},
        "last_directive": ops.INCLUDE,
        "dropin": ops.desired_config(p, h, primary),
        "dropin_secrets": {"requirepass": "same", "masterauth": "same"},
        "replication": {"answering": True, "error": "", "info": info},
        "persistence": {"aof_enabled": "1" if p.cache.vms.persistence.aof else "0", "aof_rewrite_in_progress": "0"},
    }


def with_facts(f: dict, changes: dict) -> dict:
    """``f`` with ``changes`` merged one level deep (a dict value updates a dict fact; an empty dict replaces it:
    a fact whose command got no answer)."""
    out = copy.deepcopy(f)
    for key, value in (changes or {}).items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict) and key != "dropin_secrets":
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out
