"""The edge nodes: operations named after the state they ensure, planned from the facts.

Each returns the steps still needed on one edge node (none when it is right), so a second apply
plans nothing. The configuration is written as one transaction per node: the files change, nginx
itself checks the whole configuration (``nginx -t``), and a refused one is put back as it was, so a
running nginx never sees it. The previous files are kept in ``/etc/nginx/runbooklib-previous/``; the
reload is checked (the edge answers the new configuration's id on port 80 and accepts connections
on its TLS port) and rolled back to those files when the check fails.
"""

from __future__ import annotations

import shlex

from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, file_diff, operation, write_file
from .render import DEFAULT_SITE, HEALTH_PATH, PACKAGES, render
from .settings import cdn_root

PREVIOUS = "/etc/nginx/runbooklib-previous"
CHECK_SECONDS = 10


def _flat(path: str) -> str:
    return path.strip("/").replace("/", "__")


def _saved_paths(p) -> list[str]:
    return [*render(p).files, DEFAULT_SITE]


def _restore(paths: list[str], folder: str) -> str:
    """Put every path back as ``folder`` holds it: a copy (a file or a link) or an ``.absent`` mark."""
    parts = []
    for path in paths:
        q, saved = shlex.quote(path), shlex.quote(f"{folder}/{_flat(path)}")
        parts.append(f"if [ -e {saved} ] || [ -L {saved} ]; then rm -f {q}; cp -a {saved} {q}; "
                     f"elif [ -e {saved}.absent ]; then rm -f {q}; fi")
    return "; ".join(parts)


def transaction(p, writes: dict[str, str], remove: list[str]) -> str:
    """Save the current files, write and remove, let ``nginx -t`` judge; refused: everything back as it was."""
    paths = _saved_paths(p)
    staged = PREVIOUS + ".new"
    save = "; ".join(f"if [ -e {shlex.quote(x)} ] || [ -L {shlex.quote(x)} ]; then cp -a {shlex.quote(x)} {staged}/{_flat(x)}; "
                     f"else touch {staged}/{_flat(x)}.absent; fi" for x in paths)
    change = " && ".join([write_file(path, content) for path, content in writes.items()] + [f"rm -f {shlex.quote(x)}" for x in remove])
    return (f"rm -rf {staged} && mkdir -p {staged} && {{ {save}; }} && "
            f"if {{ {change}; }} && out=$(nginx -t 2>&1); then rm -rf {PREVIOUS} && mv {staged} {PREVIOUS}; "
            f"else {_restore(paths, staged)}; rm -rf {staged}; "
            "echo \"nginx -t refused the new configuration; the files are back as they were and the running nginx "
            "never saw it: $(echo \"$out\" | grep -v 'test failed' | tail -3)\" >&2; exit 1; fi")


def answer_check(p, config_id: str) -> str:
    """True (exit 0) once the edge answers ``config_id`` on port 80 and accepts connections on its TLS port."""
    e = p.edge
    return (f"[ \"$(curl -s -m 2 http://127.0.0.1:{e.http_port}{HEALTH_PATH})\" = {config_id} ] && "
            f"timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{e.https_port}'")


def service_change(p, action: str, config_id: str, files_changed: bool = True) -> str:
    """``systemctl start|reload nginx``, then check that the edge answers; otherwise roll back to the kept files.

    The kept files are the ones this run's configuration step replaced: when it replaced none (``files_changed``
    false: a start or reload of the files already there), they are an older change's, and nothing is put back.
    """
    paths = _saved_paths(p)
    wait = (f"ok=0; for i in $(seq {CHECK_SECONDS * 2}); do if {answer_check(p, config_id)}; then ok=1; break; fi; sleep 0.5; done")
    back = (f"if [ -d {PREVIOUS} ]; then {_restore(paths, PREVIOUS)}; fi") if files_changed else "true"
    if action == "reload":
        undo = (f"{back}; if nginx -t >/dev/null 2>&1 && systemctl reload nginx; then "
                "echo 'the edge did not answer after the reload: the previous configuration is back and running' >&2; "
                "else echo 'the edge did not answer after the reload, and the previous configuration could not be reloaded: "
                "look at nginx -t and the error log now' >&2; fi; exit 1")
    else:
        undo = (f"{back}; echo 'nginx started but the edge did not answer on its ports: the previous files are back "
                "(nginx left as it is: look at nginx -t and /var/log/nginx/error.log)' >&2; exit 1")
    if not files_changed:
        undo = (f"echo 'the edge did not answer after the {action} of the configuration already on disk; no file changed in "
                "this run, so nothing was put back: look at nginx -t and /var/log/nginx/error.log' >&2; exit 1")
    return f"systemctl {action} nginx; {wait}; if [ $ok = 1 ]; then exit 0; fi; {undo}"


def _ready(f) -> bool:
    return f["nginx"]["installed"] and f["nginx"]["stream_module"] and f["nginx"].get("curl", True)


def config_changes(p, f) -> dict[str, str]:
    """The files whose content differs from what the parameters render."""
    want = render(p).files
    return {path: content for path, content in want.items() if f["files"].get(path) != content}


# -- operations --------------------------------------------------------------------------------

@operation("nginx installed", touches="nothing (missing packages are a blocked step: nginx, libnginx-mod-stream, curl)", undo="-")
def nginx_installed(p, h, f) -> list[Step]:
    if _ready(f):
        return []
    n = f["nginx"]
    missing = [pkg for pkg, ok in zip(PACKAGES + ("curl",), (n["installed"], n["stream_module"], n.get("curl", True))) if not ok]
    return [Step(h.name, "nginx installed", "nginx with the stream module (and curl for the checks)", None,
                 blocked=f"{' and '.join(missing)} not installed on {h.name}: install from your mirror "
                         f"(apt-get install {' '.join(missing if missing == ['curl'] else PACKAGES)}), then re-run")]


@operation("edge configuration",
           touches="`/etc/nginx/conf.d/runbooklib-edge.conf`, `/etc/nginx/modules-enabled/90-runbooklib-edge-stream.conf`, "
                   "Debian's `sites-enabled/default` link (disabled); checked by `nginx -t` before anything runs it",
           undo=f"copy the files back from `{PREVIOUS}/` (or remove them when they were absent), `nginx -t`, `systemctl reload nginx`")
def edge_configuration(p, h, f) -> list[Step]:
    if not _ready(f):
        return []
    writes = config_changes(p, f)
    remove = [DEFAULT_SITE] if f["default_site"] else []
    if not writes and not remove:
        return []
    what = [f"{'write' if f['files'].get(x) is None else 'update'} {x}" for x in writes] + [f"disable Debian's default site ({DEFAULT_SITE})"
                                                                                            for _ in remove]
    diff = "".join(file_diff(x, f["files"].get(x), c) for x, c in writes.items())
    return [Step(h.name, "edge configuration", "; ".join(what) + f" (configuration {render(p).config_id}, checked by nginx -t)",
                 transaction(p, writes, remove), None,
                 f"copy the files back from {PREVIOUS}/ (an .absent mark: remove the file), nginx -t, systemctl reload nginx",
                 diff=diff + (f"--- a{DEFAULT_SITE}\n+++ /dev/null\n(link removed; sites-available/default stays)\n" if remove else ""))]


@operation("service enabled", touches="nginx's unit: enabled at boot", undo="`systemctl disable nginx`")
def service_enabled(p, h, f) -> list[Step]:
    if not _ready(f) or f["service"]["enabled"] == "enabled":
        return []
    return [Step(h.name, "service enabled", "enable nginx at boot", "systemctl enable nginx", "systemctl disable nginx")]


@operation("service running",
           touches="the running nginx: started, or reloaded when its configuration changed; checked on its ports after",
           undo=f"automatic when the check fails (the files in `{PREVIOUS}/` back, reloaded); by hand: the configuration's undo")
def service_running(p, h, f) -> list[Step]:
    if not _ready(f):
        return []
    config = render(p)
    changed = bool(config_changes(p, f)) or f["default_site"]
    if f["service"]["active"] != "active":
        return [Step(h.name, "service running", f"start nginx (configuration {config.config_id}), check it answers on "
                                                f"ports {p.edge.http_port} and {p.edge.https_port}",
                     service_change(p, "start", config.config_id, changed), "systemctl stop nginx")]
    if changed or f["running_config"] != config.config_id:
        why = "its files changed" if changed else (f"it runs {f['running_config'] or 'another configuration'}, "
                                                   f"not the one on disk")
        return [Step(h.name, "service running", f"reload nginx ({why}), check it answers configuration {config.config_id} "
                                                f"on port {p.edge.http_port} and accepts on {p.edge.https_port}",
                     service_change(p, "reload", config.config_id, changed), None,
                     "rolled back automatically if the check fails; by hand: the edge configuration's undo")]
    return []


PROBE_TEXT = "runbooklib CDN probe: fetched through each edge node by 09-edge-load-balancing to check the CDN's path\n"


@operation("CDN probe file", touches="`<CDN folder>/<edge.cdn_probe_file>`, one small file on the CDN volume (written once, "
                                     "from the first edge node: the volume is shared)", undo="`rm <CDN folder>/<probe file>`")
def cdn_probe_file(p, h, f) -> list[Step]:
    root = f["cdn_root"]
    if h.name != p.edge.hosts[0] or not root["exists"] or root.get("probe", True):
        return []
    path = f"{cdn_root(p).rstrip('/')}/{p.edge.cdn_probe_file}"
    return [Step(h.name, "CDN probe file", f"write {path} (what the verification fetches through each edge node)",
                 write_file(path, PROBE_TEXT), f"rm -f {path}", diff=file_diff(path, None, PROBE_TEXT))]


OPERATIONS: tuple[Operation, ...] = (nginx_installed, edge_configuration, service_enabled, service_running, cdn_probe_file)


def plan(p, facts: dict[str, dict], fact_errors: dict[str, dict[str, str]] | None = None) -> list[Step]:
    """Every step still needed on the edge nodes, in operation order."""
    steps = phase_steps.plan(OPERATIONS, p, facts, fact_errors)
    edge = set(p.edge.hosts)
    return [s for s in steps if s.host in edge]


def apply(p, fleet, steps, on_change=None) -> dict[str, phase_steps.HostApply]:
    """Each edge node's steps in order, the nodes one after the other: never both edges reloading at once."""
    results: dict[str, phase_steps.HostApply] = {}
    for name in dict.fromkeys(s.host for s in steps):
        failed = next((r for r in results.values() if not r.ok), None)
        if failed is not None:  # what one node refused, the other would refuse too: keep it serving as it is
            results[name] = phase_steps.HostApply(name, error=f"{name}: not changed: {failed.host} failed first")
            continue
        results.update(phase_steps.apply(fleet, [s for s in steps if s.host == name], on_change=on_change, desc=f"edge {name}"))
    return results
