"""The edge nodes as people read them: one row per node, and what is wrong with it."""

from __future__ import annotations

from ..phase.facts import Gathered
from .operations import config_changes
from .render import render
from .settings import cdn_root


def node_rows(p, gathered: Gathered) -> list[dict]:
    """Per edge node: nginx, its stream module, the service, the configuration on disk and running, the CDN folder."""
    want = render(p).config_id
    rows = []
    for name in p.edge.hosts:
        f = gathered.facts.get(name)
        if f is None:
            rows.append({"edge": name, "nginx": "unreachable", "service": "", "config on disk": "", "running": "",
                         "cdn folder": "", "note": gathered.errors.get(name, "no facts")})
            continue
        n = f["nginx"]
        disk = "-" if not n["installed"] else ("as planned" if not config_changes(p, f) and not f["default_site"] else "differs")
        root = f["cdn_root"]
        rows.append({"edge": name,
                     "nginx": (n["version"] + (" + stream" if n["stream_module"] else " (no stream module)")) if n["installed"] else "not installed",
                     "service": f"{f['service']['active']}, {f['service']['enabled']}",
                     "config on disk": disk,
                     "running": ("this one" if f["running_config"] == want else (f["running_config"] or "none answers")),
                     "cdn folder": (f"{cdn_root(p)} ({root['fstype'] or 'not a mount'})" if root["exists"] else f"{cdn_root(p)} missing"),
                     "note": "" if root["fstype"] == "fuse.glusterfs" else "the CDN folder is not the Gluster mount: run 06-cdn-storage"})
    return rows


def colour(rows: list[dict], column: str = "result"):
    def tone(i: int, col: str) -> str:
        if col != column:
            return ""
        value = str(rows[i].get(column, ""))
        return "ok" if value == "ok" else ("bad" if value else "")
    return tone
