"""The archive as a static HTML site: a plain folder of pages, opened from disk, no server.

```
index.html                  environments, their suites (newest first) and the chain's verification state
env/<env>.html              every run of the environment, newest first
suite/<suite-id>.html       the suite's steps in order, a timeline figure, the failing run marked
run/<run-id>.html           one run: status, verdict, duration, who and why, changes, parameters (redacted), chain state
notebook/<run-id>.html      the archived rendering of the notebook, as archived
change/<run-id>-<n>.html    one applied change: host, operation, what, when, the run and the plan part it belongs to
host/<env>/<host>.html      every change ever applied to the host, across runs
hosts.html                  every host, with a search box
```

The manifests are read once, through :func:`runbooklib.changes._manifests` (the archive's own
reader); the rendered notebooks through :func:`_record_file`. A file is written only when its
content changed (a hash of every page is kept in ``.site-state.json``), so a re-run over thousands
of runs rewrites only the new ones and the index pages.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..changes import _manifests

STATE = ".site-state.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _slug(text: str) -> str:
    return _SAFE.sub("_", str(text)) or "_"


def _record_file(archive, rel: str) -> bytes:
    """The bytes of one file of a record (the one place the site reads record files, for other archive backends)."""
    return (archive.root / rel).read_bytes()


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:10px 20px}header a{color:#cfe0ff;margin-right:14px}
main{padding:16px 20px;max-width:1300px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:12px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eef1f6}
.succeeded,.pass,.ok{color:#17692f}.failed,.killed,.interrupted,.fail,.bad{color:#b3261e;font-weight:600}
tr.failing{background:#fdecea}.badge{display:inline-block;padding:1px 8px;border-radius:9px;background:#b3261e;color:#fff;font-size:12px}
pre{background:#fff;border:1px solid #dde1e8;padding:8px;overflow:auto;max-height:420px}
dl{display:grid;grid-template-columns:180px 1fr;gap:3px 12px;background:#fff;padding:10px;border:1px solid #dde1e8}
dt{color:#5a6272}dd{margin:0}input{font-size:15px;padding:5px 8px;width:320px}.muted{color:#6b7280}
"""

SEARCH_JS = """
function filterHosts(q){q=q.trim().toLowerCase();var n=0;
document.querySelectorAll('#hosts tbody tr').forEach(function(tr){
var hit=!q||tr.dataset.host.indexOf(q)>=0;tr.style.display=hit?'':'none';if(hit)n++;});
document.getElementById('count').textContent=n+' host(s)';}
window.addEventListener('DOMContentLoaded',function(){var i=document.getElementById('q');
var p=new URLSearchParams(location.search).get('host');if(p){i.value=p;}filterHosts(i.value);
i.addEventListener('input',function(){filterHosts(i.value);});});
"""


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<link rel=stylesheet href='{up}style.css'></head><body><header><a href='{up}index.html'>Runbook record</a>"
            f"<a href='{up}hosts.html'>Hosts</a></header><main><h1>{_e(title)}</h1>{body}</main></body></html>\n")


def _table(headers: list[str], rows: list[str], attrs: str = "") -> str:
    return (f"<table{attrs}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _duration(m: dict) -> str:
    d = m.get("duration_s")
    return "" if d is None else (f"{d:.1f} s" if d < 120 else f"{d / 60:.1f} min")


def _verdict(m: dict) -> str:
    return (m.get("verdict") or {}).get("verdict") or ""


def _failing(m: dict) -> bool:
    from ..suite import good

    # a suite step whose bad verdict is a finding, not a stop (the first preflight), says so in its manifest
    allow = bool((m.get("suite") or {}).get("allow_not_ready"))
    return m.get("record") == "runbook run" and not good(m, allow)


@dataclass
class Summary:
    out: Path
    runs: int = 0
    suites: int = 0
    hosts: int = 0
    changes: int = 0
    written: int = 0
    chain_ok: bool = True
    chain_text: str = ""
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        return (f"report: {self.out / 'index.html'}\n  {self.runs} run(s), {self.suites} suite(s), {self.hosts} host(s), "
                f"{self.changes} change(s); {self.written} file(s) written\n  chain: {self.chain_text}")


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        self.old = {}
        try:
            self.old = json.loads((out / STATE).read_text())
        except (OSError, ValueError):
            pass
        self.new: dict[str, str] = {}
        self.written = 0

    def write(self, rel: str, data: str | bytes, key: str | None = None) -> None:
        """Write ``rel`` unless it holds the same content already (``key``: a hash known without the bytes)."""
        raw = data.encode() if isinstance(data, str) else data
        digest = key or hashlib.sha256(raw).hexdigest()
        self.new[rel] = digest
        path = self.out / rel
        if self.old.get(rel) == digest and path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
        self.written += 1

    def close(self) -> None:
        for rel in set(self.old) - set(self.new):  # pages of runs no longer in the archive
            (self.out / rel).unlink(missing_ok=True)
        (self.out / STATE).write_text(json.dumps(self.new, sort_keys=True))


def build(archive, out: Path) -> Summary:
    """Write the site for ``archive`` into ``out``; returns what was done."""
    out = Path(out)
    if out.resolve().is_relative_to(archive.root.resolve()):
        from ..errors import ArchiveError

        raise ArchiveError(f"{out} is inside the archive {archive.root}; the site goes beside it (only the runner writes there)")
    out.mkdir(parents=True, exist_ok=True)
    report = archive.verify()
    w = _Writer(out)
    w.write("style.css", CSS)
    w.write("search.js", SEARCH_JS)
    manifests = [m for m in _manifests(archive) if m.get("run_id")]
    s = Summary(out, chain_ok=report.ok, problems=report.problems)
    s.chain_text = (f"verified: {report.records} records intact, head {report.head}" if report.ok else
                    f"NOT verified: {len(report.problems)} problem(s); first: {report.problems[0]}")
    per_run_problems: dict[str, list[str]] = defaultdict(list)
    for p in report.problems:
        found = re.search(r"\(run ([^)]+)\)", p)
        if found:
            per_run_problems[found.group(1)].append(p)

    by_env: dict[str, list[dict]] = defaultdict(list)
    suites: dict[str, list[dict]] = defaultdict(list)
    host_changes: dict[tuple[str, str], list[tuple[dict, int, dict]]] = defaultdict(list)
    previous: dict[tuple[str, str], dict] = {}
    for m in manifests:
        env = (m.get("environment") or {}).get("name", "unknown")
        by_env[env].append(m)
        if m.get("suite"):
            suites[m["suite"]["id"]].append(m)
        for n, c in enumerate(m.get("changes") or [], 1):
            host_changes[(env, c.get("host", "?"))].append((m, n, c))
        key = (env, m.get("notebook", ""))
        if m.get("record") == "runbook run":
            _write_run(w, archive, m, previous.get(key), per_run_problems.get(m["run_id"], []), report.ok)
            previous[key] = m
        else:
            _write_run(w, archive, m, None, per_run_problems.get(m["run_id"], []), report.ok)
        s.changes += len(m.get("changes") or [])
    s.runs, s.suites, s.hosts = len(manifests), len(suites), len(host_changes)
    for sid, ms in suites.items():
        w.write(f"suite/{_slug(sid)}.html", _suite_page(sid, ms))
    for (env, host), items in host_changes.items():
        w.write(f"host/{_slug(env)}/{_slug(host)}.html", _host_page(env, host, items))
    for env, ms in by_env.items():
        w.write(f"env/{_slug(env)}.html", _env_page(env, ms))
    w.write("hosts.html", _hosts_page(host_changes))
    w.write("index.html", _index_page(by_env, suites, s))
    w.close()
    s.written = w.written
    return s


def _run_link(m: dict, depth: int = 1) -> str:
    return f"<a href='{'../' * depth}run/{_slug(m['run_id'])}.html'>{_e(m['run_id'])}</a>"


def _status(m: dict) -> str:
    st = m.get("status", "?")
    return f"<span class='{_e(st)}'>{_e(st)}</span>"


def _write_run(w: _Writer, archive, m: dict, prev: dict | None, problems: list[str], chain_ok: bool) -> None:
    rid = _slug(m["run_id"])
    files = m.get("files") or {}
    notebook_link = ""
    if "html" in files:
        try:
            w.write(f"notebook/{rid}.html", _record_file(archive, files["html"]["path"]), key=files["html"]["sha256"])
            notebook_link = f"<p><a id=notebook href='../notebook/{rid}.html'>The rendered notebook, as archived</a></p>"
        except OSError as e:
            notebook_link = f"<p class=bad>The rendered notebook cannot be read: {_e(e)}</p>"
    elif "journal" in files:
        notebook_link = "<p class=muted>No notebook: the run was archived from its journal.</p>"
    suite = m.get("suite") or {}
    env = (m.get("environment") or {}).get("name", "unknown")
    rows = [("status", _status(m) + (" <span class=badge>failing</span>" if _failing(m) else "")),
            ("verdict", _e(_verdict(m))), ("runbook", _e(m.get("notebook"))), ("mode", _e(m.get("mode"))),
            ("environment", f"<a href='../env/{_slug(env)}.html'>{_e(env)}</a> ({_e((m.get('environment') or {}).get('kind'))})"),
            ("started", _e(m.get("started_at"))), ("ended", _e(m.get("ended_at"))), ("duration", _e(_duration(m))),
            ("operator", _e(m.get("operator"))), ("reason", _e(m.get("reason"))), ("change id", _e(m.get("change"))),
            ("changes applied", str(len(m.get("changes") or []))),
            ("git commit", _e((m.get("git") or {}).get("commit"))),
            ("parameters", f"{_e((m.get('params') or {}).get('path'))} (sha256 {_e(((m.get('params') or {}).get('sha256') or '')[:16])})"),
            ("hash chain", ("<span class=ok>verified: record seq " + _e(m.get("seq")) + " is intact in the chain</span>")
             if chain_ok else ("<span class=bad>" + _e("; ".join(problems)) + "</span>" if problems else
                               "<span class=bad>the archive's chain does not verify (see the index); this record itself shows no problem</span>"))]
    if suite:
        rows.insert(0, ("suite", f"<a href='../suite/{_slug(suite['id'])}.html'>{_e(suite['id'])}</a>, step {_e(suite.get('step'))} "
                                 f"(phase {_e(suite.get('phase'))})"))
    if m.get("failure"):
        f = m["failure"]
        rows.insert(1, ("failure", f"<span class=bad>{_e(f.get('cell') or '')} {_e(f.get('ename'))}: {_e(f.get('evalue'))}</span>"))
    if m.get("record") != "runbook run":
        rows.insert(0, ("record", _e(m.get("record")) + (f", approves {_e(m.get('approves'))} by {_e(m.get('approver'))}"
                                                         if m.get("approves") else "")))
    body = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>" + notebook_link
    problems_v = (m.get("verdict") or {}).get("problems") or []
    if problems_v:
        body += "<h2>Verdict problems</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems_v[:200]) + "</ul>"
    changes = m.get("changes") or []
    if changes:
        body += "<h2>Changes applied</h2>" + _table(["#", "at", "host", "operation", "change"], [
            f"<tr><td><a href='../change/{rid}-{n}.html'>{n}</a></td><td>{_e(c.get('at'))}</td>"
            f"<td><a href='../host/{_slug(env)}/{_slug(c.get('host', '?'))}.html'>{_e(c.get('host'))}</a></td>"
            f"<td>{_e(c.get('operation'))}</td><td>{_e(c.get('change'))}</td></tr>" for n, c in enumerate(changes, 1)])
    for n, c in enumerate(changes, 1):
        w.write(f"change/{rid}-{n}.html", _change_page(m, n, c))
    if prev is not None:  # the difference itself is `runbook diff`'s (parsing both parameter files: too slow for every page)
        body += (f"<h2>The previous run of {_e(m.get('notebook'))} on {_e(env)}</h2><p>{_run_link(prev)} "
                 f"({_status(prev)}, {len(prev.get('changes') or [])} change(s)); what differs: "
                 f"<code>runbook diff {_e(prev['run_id'])} {_e(m['run_id'])} --html FILE</code></p>")
    params_text = (m.get("params") or {}).get("content_redacted")
    if params_text:
        body += "<h2>Parameters (secrets redacted)</h2><pre>" + _e(params_text) + "</pre>"
    w.write(f"run/{rid}.html", _page(f"Run {m['run_id']}: {m.get('notebook')}", body, 1))


def _change_page(m: dict, n: int, c: dict) -> str:
    env = (m.get("environment") or {}).get("name", "unknown")
    part = ""
    for p in m.get("plans") or []:
        if any(st.get("host") == c.get("host") and st.get("operation") == c.get("operation") and st.get("change") == c.get("change")
               for st in p.get("steps") or []):
            part = f"{p.get('title')} ({p.get('count')} step(s), digest {str(p.get('digest'))[:16]}...)"
            break
    rows = [("host", f"<a href='../host/{_slug(env)}/{_slug(c.get('host', '?'))}.html'>{_e(c.get('host'))}</a>"),
            ("operation", _e(c.get("operation"))), ("change", _e(c.get("change"))), ("applied at", _e(c.get("at"))),
            ("run", _run_link(m) + f" ({_e(m.get('notebook'))}, {_status(m)})"), ("environment", _e(env)),
            ("operator", _e(m.get("operator"))), ("reason", _e(m.get("reason"))), ("change id", _e(m.get("change"))),
            ("plan part", _e(part or "not in a confirmed plan")),
            ("approved plans", _e(", ".join(m.get("approved_plans") or []) or "none"))]
    body = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"
    body += (f"<p class=muted>The command, its undo and the file diff are shown in the run's "
             f"<a href='../notebook/{_slug(m['run_id'])}.html'>rendered notebook</a> (plan section).</p>")
    return _page(f"Change {n} of run {m['run_id']} on {c.get('host')}", body, 1)


def _host_page(env: str, host: str, items: list[tuple[dict, int, dict]]) -> str:
    rows = [f"<tr class=change><td>{_e(c.get('at'))}</td><td>{_e(c.get('operation'))}</td>"
            f"<td><a href='../../change/{_slug(m['run_id'])}-{n}.html'>{_e(c.get('change'))}</a></td>"
            f"<td>{_run_link(m, 2)}</td><td>{_e(m.get('notebook'))}</td><td>{_e(m.get('operator'))}</td></tr>"
            for m, n, c in sorted(items, key=lambda t: (t[2].get("at") or "", t[1]), reverse=True)]
    return _page(f"Host {host} on {env}: {len(items)} change(s)", _table(["applied at", "operation", "change", "run", "runbook", "operator"],
                                                                         rows, " id=changes"), 2)


def _hosts_page(host_changes: dict) -> str:
    rows = [f"<tr data-host='{_e(host.lower())}'><td><a href='host/{_slug(env)}/{_slug(host)}.html'>{_e(host)}</a></td>"
            f"<td>{_e(env)}</td><td>{len(items)}</td><td>{_e(max((c.get('at') or '') for _, _, c in items))}</td></tr>"
            for (env, host), items in sorted(host_changes.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    body = ("<p><input id=q type=search placeholder='search a host' autofocus> <span id=count class=muted></span></p>"
            + _table(["host", "environment", "changes", "last change"], rows, " id=hosts") + "<script src='search.js'></script>")
    return _page("Hosts: every change ever applied, by host", body, 0)


def _timeline_svg(ms: list[dict]) -> str:
    import datetime as dt

    def t(s):
        try:
            return dt.datetime.fromisoformat(s).timestamp()
        except (TypeError, ValueError):
            return None

    spans = []
    for m in ms:
        a, b = t(m.get("started_at")), t(m.get("ended_at"))
        if a is not None:
            spans.append((m, a, b if b is not None else a))
    if not spans:
        return ""
    t0, t1 = min(a for _, a, _ in spans), max(b for _, _, b in spans)
    total = max(t1 - t0, 1.0)
    width, left, row = 900, 260, 22
    parts = [f"<svg id=timeline xmlns='http://www.w3.org/2000/svg' width='{width + left + 20}' height='{row * len(spans) + 30}' "
             "role=img aria-label='timeline of the suite'>"]
    for i, (m, a, b) in enumerate(spans):
        x = left + (a - t0) / total * width
        wdt = max((b - a) / total * width, 2)
        colour = "#b3261e" if _failing(m) else "#2e7d32"
        label = f"{(m.get('suite') or {}).get('step', m.get('notebook'))}"
        y = 10 + i * row
        parts.append(f"<a href='../run/{_slug(m['run_id'])}.html'><text x='4' y='{y + 13}' font-size='12'>{_e(label)}</text>"
                     f"<rect class='{'failing' if _failing(m) else 'ok'}' x='{x:.1f}' y='{y}' width='{wdt:.1f}' height='{row - 6}' "
                     f"fill='{colour}'><title>{_e(label)}: {_e(m.get('status'))} {_e(_verdict(m))} {_e(_duration(m))}</title></rect></a>")
    parts.append(f"<text x='{left}' y='{row * len(spans) + 24}' font-size='11' fill='#555'>0 s</text>"
                 f"<text x='{left + width - 60}' y='{row * len(spans) + 24}' font-size='11' fill='#555'>{total:.0f} s</text></svg>")
    return "".join(parts)


def _suite_page(sid: str, ms: list[dict]) -> str:
    ms = sorted(ms, key=lambda m: m.get("seq", 0))
    env = (ms[0].get("environment") or {}).get("name", "unknown")
    failing = [m for m in ms if _failing(m)]
    last_failed = failing[-1] if failing and failing[-1] is ms[-1] else None
    state = (f"<p class=bad>Stopped at {_e(last_failed['suite'].get('step'))}: run {_run_link(last_failed)} {_e(last_failed.get('status'))}"
             f" {_e(_verdict(last_failed))}</p>") if last_failed else "<p class=ok>Every step run so far ended well.</p>"
    rows = []
    for m in ms:
        s = m["suite"]
        cls = " class=failing" if _failing(m) else ""
        mark = " <span class=badge>failing</span>" if _failing(m) else ""
        rows.append(f"<tr{cls} data-step='{_e(s.get('step'))}'><td>{_e(s.get('index'))}/{_e(s.get('steps'))}</td><td>{_e(s.get('phase'))}</td>"
                    f"<td>{_e(s.get('step'))}</td><td>{_run_link(m)}</td><td>{_status(m)}{mark}</td><td>{_e(_verdict(m))}</td>"
                    f"<td>{_e(_duration(m))}</td><td>{len(m.get('changes') or [])}</td><td>{_e(m.get('operator'))}</td></tr>")
    body = (f"<p>Environment <a href='../env/{_slug(env)}.html'>{_e(env)}</a>, {len(ms)} run(s), mode {_e(ms[0]['suite'].get('mode'))}</p>"
            + state + "<h2>Timeline</h2>" + _timeline_svg(ms) + "<h2>Steps</h2>"
            + _table(["step", "phase", "name", "run", "status", "verdict", "duration", "changes", "operator"], rows, " id=steps"))
    return _page(f"Suite {sid}", body, 1)


def _env_page(env: str, ms: list[dict]) -> str:
    rows = []
    for m in sorted(ms, key=lambda m: m.get("seq", 0), reverse=True):
        s = m.get("suite") or {}
        cls = " class=failing" if _failing(m) else ""
        rows.append(f"<tr{cls}><td>{_e(m.get('seq'))}</td><td>{_run_link(m)}</td><td>{_e(m.get('notebook'))}</td>"
                    f"<td>{_status(m)}</td><td>{_e(_verdict(m))}</td><td>{_e(m.get('mode'))}</td><td>{_e(_duration(m))}</td>"
                    f"<td>{len(m.get('changes') or [])}</td><td>{_e(m.get('operator'))}</td><td>{_e(m.get('reason'))}</td>"
                    + (f"<td><a href='../suite/{_slug(s['id'])}.html'>{_e(s['id'])}</a></td>" if s else "<td></td>") + "</tr>")
    return _page(f"Environment {env}: {len(ms)} record(s)", _table(
        ["seq", "run", "runbook", "status", "verdict", "mode", "duration", "changes", "operator", "reason", "suite"], rows, " id=runs"), 1)


def _index_page(by_env: dict, suites: dict, s: Summary) -> str:
    chain = f"<p class={'ok' if s.chain_ok else 'bad'} id=chain>Hash chain {_e(s.chain_text)}</p>"
    if not s.chain_ok:
        chain += "<ul>" + "".join(f"<li>{_e(p)}</li>" for p in s.problems[:50]) + "</ul>"
    body = chain + "<h2>Environments</h2>" + _table(["environment", "records", "failed", "last run"], [
        f"<tr><td><a href='env/{_slug(env)}.html'>{_e(env)}</a></td><td>{len(ms)}</td>"
        f"<td>{sum(_failing(m) for m in ms)}</td><td>{_e(max((m.get('started_at') or '') for m in ms))}</td></tr>"
        for env, ms in sorted(by_env.items())])
    rows = []
    for sid, ms in sorted(suites.items(), key=lambda kv: max(m.get("seq", 0) for m in kv[1]), reverse=True):
        last = max(ms, key=lambda m: m.get("seq", 0))
        state = "stopped at " + last["suite"].get("step", "?") if _failing(last) else "ended well so far"
        rows.append(f"<tr{' class=failing' if _failing(last) else ''}><td><a href='suite/{_slug(sid)}.html'>{_e(sid)}</a></td>"
                    f"<td>{_e((last.get('environment') or {}).get('name'))}</td><td>{_e(last['suite'].get('mode'))}</td><td>{len(ms)}</td>"
                    f"<td>{_e(state)}</td><td>{_e(min(m.get('started_at') or '' for m in ms))}</td></tr>")
    body += "<h2>Suites</h2>" + _table(["suite", "environment", "mode", "runs", "state", "started"], rows, " id=suites")
    body += "<p><a href='hosts.html'>Search by host</a>: every change ever applied to a host, across runs.</p>"
    return _page("Runbook record", body, 0)
