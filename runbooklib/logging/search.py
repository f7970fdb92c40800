"""The search engine's side of ``13-log-retention``: the index template with the typed mapping, the
retention policy (ISM on OpenSearch, ILM on Elasticsearch), and the proof that the types matter.

Bodies are plain data (:func:`template_body`, :func:`ism_policy`, :func:`ilm_policy`), checked field by
field by the tests. :class:`Engine` applies them with the engine's official Python client
(``opensearch-py``, ``elasticsearch``), after reading what is there, so a plan shows the difference
and a second apply changes nothing.

Retention, compared with the seed's Curator (close after 3 days, delete after 90):

- **ISM** (OpenSearch's Index State Management plugin) has states and transitions: ``hot`` ->
  ``warm`` at ``warm_after_days`` (``read_only``, ``force_merge`` to one segment) -> ``delete`` at
  ``delete_after_days``. It attaches itself to new indices through the policy's ``ism_template``.
  ISM does have ``close``; we keep warm indices searchable, as read-only.
- **ILM** (Elasticsearch) has phases, not states, and *no close action*: ``warm`` (``readonly``,
  ``forcemerge``, lower priority), then ``delete``; attached by ``index.lifecycle.name`` in the template.

A retention policy needs its plugin on the engine (OpenSearch's minimal distribution has no ISM): the
facts say which plugins run, and a policy whose API is not there is *not applied*, with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..phase.steps import Part, Step
from .settings import MAPPING

ISM_PLUGIN = "opensearch-index-management"
ISM_PATH = "/_plugins/_ism/policies/"


class EngineError(Exception):
    pass


OPERATIONS = (
    Part("index template", "the composable index template `<index_prefix>-typed` (`PUT _index_template/…`): the typed mapping, "
                           "shards and replicas of every new index", "`DELETE _index_template/<index_prefix>-typed` (new indices are "
                                                                    "mapped dynamically again; existing ones keep their mapping)"),
    Part("retention policy", "the ISM policy `<index_prefix>-retention` (`PUT _plugins/_ism/policies/…`), or the ILM policy "
                             "(`PUT _ilm/policy/…`)", "`DELETE` the policy (indices are kept until deleted by hand)"),
)


# -- the bodies ---------------------------------------------------------------------------------------

def index_pattern(lg) -> str:
    return f"{lg.index_prefix}-*"


def mapping(lg) -> dict:
    props = {"@timestamp": {"type": "date"}}
    for f, cast in lg.typed_fields.items():
        node = props
        parts = f.split(".")
        for part in parts[:-1]:  # a dotted name is an object path in the mapping
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = {"type": MAPPING[cast]}
    return {"properties": props}


def shards_for(lg) -> int:
    from .sizing import size

    return size(lg).primary_shards


def template_body(lg) -> dict:
    """The composable index template (``PUT _index_template/<name>``) every new Fluentd index gets."""
    settings = {"index.number_of_shards": shards_for(lg), "index.number_of_replicas": lg.replicas}
    if lg.engine == "elasticsearch":
        settings["index.lifecycle.name"] = lg.policy_name()
    return {"index_patterns": [index_pattern(lg)], "priority": 200,
            "template": {"settings": settings, "mappings": mapping(lg)},
            "_meta": {"managed_by": "runbooklib", "runbook": "13-log-retention"}}


def ism_policy(lg) -> dict:
    """OpenSearch ISM: hot -> warm (read-only, force-merged) -> delete."""
    return {"policy": {
        "description": f"{lg.index_prefix}-*: read-only and force-merged after {lg.warm_after_days} d, deleted after "
                       f"{lg.delete_after_days} d (runbooklib, 13-log-retention)",
        "default_state": "hot",
        "states": [
            {"name": "hot", "actions": [],
             "transitions": [{"state_name": "warm", "conditions": {"min_index_age": f"{lg.warm_after_days}d"}}]},
            {"name": "warm", "actions": [{"read_only": {}}, {"force_merge": {"max_num_segments": 1}}],
             "transitions": [{"state_name": "delete", "conditions": {"min_index_age": f"{lg.delete_after_days}d"}}]},
            {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
        ],
        "ism_template": [{"index_patterns": [index_pattern(lg)], "priority": 100}],
    }}


def ilm_policy(lg) -> dict:
    """Elasticsearch ILM: hot, warm (read-only, force-merged, lower priority), delete. ILM has no close."""
    return {"policy": {
        "_meta": {"managed_by": "runbooklib", "runbook": "13-log-retention"},
        "phases": {
            "hot": {"min_age": "0ms", "actions": {"set_priority": {"priority": 100}}},
            "warm": {"min_age": f"{lg.warm_after_days}d",
                     "actions": {"readonly": {}, "forcemerge": {"max_num_segments": 1}, "set_priority": {"priority": 50}}},
            "delete": {"min_age": f"{lg.delete_after_days}d", "actions": {"delete": {}}},
        }}}


def policy_body(lg) -> dict:
    return ism_policy(lg) if lg.engine == "opensearch" else ilm_policy(lg)


def _comparable_policy(engine: str, got: dict) -> dict:
    """The part of a stored policy we wrote (the engine adds ids, versions, timestamps, schema versions)."""
    if engine == "opensearch":
        pol = dict(got.get("policy", got))
        keep = {k: pol[k] for k in ("description", "default_state", "states", "ism_template") if k in pol}
        for t in keep.get("ism_template") or []:
            t.pop("last_updated_time", None)
        for s in keep.get("states", []):
            for a in s.get("actions", []):
                a.pop("retry", None)
        return {"policy": keep}
    pol = got.get("policy", got)
    return {"policy": {"_meta": pol.get("_meta"), "phases": pol.get("phases")}}


def _comparable_template(got: dict) -> dict:
    t = got.get("index_template", got)
    settings = t.get("template", {}).get("settings", {})
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(key, v)
            else:
                flat[key if key.startswith("index.") else f"index.{key}"] = int(v) if isinstance(v, str) and v.isdigit() else v
    walk("", settings)
    return {"index_patterns": t.get("index_patterns"), "priority": t.get("priority"),
            "template": {"settings": flat, "mappings": t.get("template", {}).get("mappings")}, "_meta": t.get("_meta")}


def _normalized(body: dict) -> dict:
    """Our own body, in the shape the engine returns it (settings flat, numbers as numbers)."""
    out = json.loads(json.dumps(body))
    out["template"]["settings"] = {k: v for k, v in out["template"]["settings"].items()}
    return out


# -- talking to the engine -----------------------------------------------------------------------------

# what both clients raise when the engine gives no answer (opensearch-py's and elastic-transport's classes bear these names)
UNANSWERED = ("ConnectionError", "ConnectionTimeout", "SSLError", "TlsError")


@dataclass
class Engine:
    """One engine endpoint through its official client (``opensearch-py`` or ``elasticsearch``)."""

    kind: str
    url: str
    client: object = field(repr=False)
    host: str = ""  # the inventory host at the URL (:func:`engine_host`): named when the engine does not answer

    @classmethod
    def connect(cls, lg, password: str | None = None, timeout: float = 20, host: str = "") -> "Engine":
        auth = (lg.user, password) if lg.user and password is not None else None
        if lg.engine == "opensearch":
            from opensearchpy import OpenSearch

            client = OpenSearch([lg.api_url()], http_auth=auth, verify_certs=lg.verify_tls, timeout=timeout,
                                max_retries=1, retry_on_timeout=False)
        else:
            from elasticsearch import Elasticsearch

            client = Elasticsearch(lg.api_url(), basic_auth=auth, verify_certs=lg.verify_tls, request_timeout=timeout,
                                   max_retries=1)
        return cls(lg.engine, lg.api_url(), client, host)

    def request(self, method: str, path: str, body=None, params: dict | None = None):
        """A raw call through the client's transport (status errors raised as :class:`EngineError`, the
        engine's own reason kept, the credentials never in it; an engine that does not answer at all is named by
        its host, as the operator must start it or heal its link)."""
        try:
            if self.kind == "opensearch":
                return self.client.transport.perform_request(method, path, body=body, params=params or {})
            resp = self.client.perform_request(method, path, body=body, params=params or {},
                                               headers={"content-type": "application/json", "accept": "application/json"}
                                               if body is not None else {"accept": "application/json"})
            return resp.body
        except Exception as e:
            reason = _reason(e)
            if self.host and type(e).__name__ in UNANSWERED:  # refused, unreachable, timed out, no TLS handshake: no answer at all
                reason = f"{self.host} does not answer at {self.url}: {reason}"
            raise EngineError(reason) from None

    def status(self, method: str, path: str) -> int:
        try:
            self.request(method, path)
            return 200
        except EngineError as e:
            code = str(e).split(" ", 1)[0]
            return int(code) if code.isdigit() else 0

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


def _reason(e: Exception) -> str:
    status = getattr(e, "status_code", None) or getattr(getattr(e, "meta", None), "status", None)
    info = getattr(e, "info", None) or getattr(e, "body", None)
    detail = ""
    if isinstance(info, dict):
        err = info.get("error")
        detail = err.get("reason", json.dumps(err))[:300] if isinstance(err, dict) else str(err or info)[:300]
    elif info:
        detail = str(info)[:300]
    if status and str(status).isdigit():
        return f"{status} {detail or type(e).__name__}"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def facts(engine: Engine) -> dict:
    """The engine as it is: version, distribution, cluster health, plugins, whether the retention API
    answers, the template and the policy as stored (None when absent)."""
    out: dict = {"url": engine.url, "reachable": False}
    try:
        root = engine.request("GET", "/")
    except EngineError as e:
        out["error"] = str(e)
        return out
    out.update(reachable=True, version=root.get("version", {}).get("number"),
               distribution=root.get("version", {}).get("distribution", "elasticsearch"), cluster=root.get("cluster_name"))
    health = engine.request("GET", "/_cluster/health")
    out["health"] = health.get("status")
    out["nodes"] = health.get("number_of_data_nodes")
    plugins = engine.request("GET", "/_cat/plugins", params={"format": "json"}) or []
    # OpenSearch names modules by class (org.opensearch.painless.PainlessPlugin), plugins by name (opensearch-index-management)
    out["plugins"] = sorted({p.get("component", "").removeprefix("org.opensearch.").removeprefix("org.elasticsearch.") for p in plugins})
    out["retention_api"] = _retention_api(engine)
    return out


def _retention_api(engine: Engine) -> bool:
    """Whether the policy API exists here (ISM plugin on OpenSearch; ILM on Elasticsearch)."""
    path = "/_plugins/_ism/policies" if engine.kind == "opensearch" else "/_ilm/status"
    try:
        engine.request("GET", path)
        return True
    except EngineError as e:  # without the plugin: 400 "no handler found for uri"; a 401/403 means it is there
        return "no handler found" not in str(e) and not str(e).startswith(("400", "404", "405"))


def stored_template(engine: Engine, name: str) -> dict | None:
    try:
        got = engine.request("GET", f"/_index_template/{name}")
    except EngineError as e:
        if str(e).startswith("404"):
            return None
        raise
    items = got.get("index_templates", [])
    return items[0] if items else None


def stored_policy(engine: Engine, name: str) -> dict | None:
    path = f"{ISM_PATH}{name}" if engine.kind == "opensearch" else f"/_ilm/policy/{name}"
    try:
        got = engine.request("GET", path)
    except EngineError as e:
        if str(e).startswith("404"):
            return None
        raise
    return got if engine.kind == "opensearch" else got.get(name)


# -- the plan -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineStep(Step):
    """One thing to put on the engine: ``body`` at ``path`` (``command`` says it for people, the diff is what a
    reviewer reads); ``blocked`` when it cannot be applied, saying what to do."""

    method: str = "PUT"
    path: str = ""
    body: dict = field(default_factory=dict, hash=False, compare=False)
    seq: tuple = ()  # ISM's optimistic concurrency for an update: (if_seq_no, if_primary_term)


def engine_host(p) -> str:
    """The name the engine's changes are recorded under: the inventory host at the API address, else that address."""
    from urllib.parse import urlsplit

    host = urlsplit(p.logging.api_url()).hostname or "engine"
    for h in p.inventory.hosts:
        if str(h.address) == host or h.name == host:
            return h.name
    return host


def _json(d) -> str:
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def _diff(old: dict | None, new: dict) -> str:
    import difflib

    if old is None:
        return _json(new)
    return "".join(difflib.unified_diff(_json(old).splitlines(keepends=True), _json(new).splitlines(keepends=True),
                                        "on the engine", "from the parameters"))


def plan(p, engine: Engine | None, engine_facts: dict | None) -> list[EngineStep]:
    """The template, then the policy, each only when the engine holds something else; without a reachable
    engine, both rendered for review and blocked with the reason."""
    lg = p.logging
    host = engine_host(p)
    tname, pname = lg.template_name(), lg.policy_name()
    tbody, pbody = template_body(lg), policy_body(lg)
    tpath = f"/_index_template/{tname}"
    ppath = f"{ISM_PATH}{pname}" if lg.engine == "opensearch" else f"/_ilm/policy/{pname}"
    tundo, pundo = f"DELETE {tpath} (new indices get dynamic mappings again)", f"DELETE {ppath} (indices are kept forever again)"
    what_t = f"index template {tname}: {index_pattern(lg)} typed ({', '.join(f'{k} {MAPPING[v]}' for k, v in lg.typed_fields.items())}), " \
             f"{tbody['template']['settings']['index.number_of_shards']} shard(s), {lg.replicas} replica(s)"
    what_p = f"{'ISM' if lg.engine == 'opensearch' else 'ILM'} policy {pname}: read-only and force-merged after {lg.warm_after_days} d, " \
             f"deleted after {lg.delete_after_days} d"

    def step(op, what, path, body, diff, undo, blocked="", seq=()):
        return EngineStep(host, op, what, None if blocked else f"PUT {lg.api_url()}{path}", undo_note=undo, blocked=blocked,
                          diff=diff, method="PUT", path=path, body=body, seq=seq)
    if engine is None or not (engine_facts or {}).get("reachable"):
        why = (engine_facts or {}).get("error") or "no engine endpoint reachable from here"
        # the client's error names the engine's host already when nothing answered ("elk1 does not answer at URL: ...")
        said = why if f" does not answer at {lg.api_url()}" in why else f"the engine at {lg.api_url()} does not answer ({why})"
        reason = f"{said}: rendered for review; apply when it answers (set logging.api_endpoint to an address this machine reaches)"
        return [step("index template", what_t, tpath, tbody, _json(tbody), tundo, reason),
                step("retention policy", what_p, ppath, pbody, _json(pbody), pundo, reason)]
    steps = []
    stored = stored_template(engine, tname)
    current = _comparable_template(stored) if stored else None
    if current != _normalized(tbody):
        steps.append(step("index template", what_t, tpath, tbody, _diff(current, _normalized(tbody)), tundo))
    if not engine_facts.get("retention_api"):
        if not lg.retention_required:  # said by retention_warning(), not planned
            return steps
        plugin = "index-management (ISM) plugin" if lg.engine == "opensearch" else "ILM (x-pack)"
        installed = len(engine_facts.get("plugins") or [])
        steps.append(step("retention policy", what_p, ppath, pbody, _json(pbody), pundo,
                          f"the engine at {lg.api_url()} has no {plugin} (none of its {installed} plugins and modules): install it, then run "
                          "13-log-retention again; until then no index is ever made read-only or deleted"))
        return steps
    stored_p = stored_policy(engine, pname)
    current_p = _comparable_policy(lg.engine, stored_p) if stored_p else None
    if current_p != _comparable_policy(lg.engine, json.loads(json.dumps(pbody))):
        seq = (stored_p.get("_seq_no"), stored_p.get("_primary_term")) if stored_p and lg.engine == "opensearch" else ()
        steps.append(step("retention policy", what_p, ppath, pbody, _diff(current_p, pbody), pundo, seq=seq))
    return steps


def apply(engine: Engine, steps: Sequence[Step], on_change=None, on_line=print) -> tuple[list[Step], str]:
    """Put each body, in order; stop at the first the engine refuses. Returns (applied, error)."""
    done: list[Step] = []
    for s in steps:
        if s.command is None or not isinstance(s, EngineStep):
            return done, f"{s.operation}: {s.blocked or 'cannot be applied here'}"
        on_line(f"{s.operation}: {s.change}")
        params = {"if_seq_no": s.seq[0], "if_primary_term": s.seq[1]} if s.seq else None
        try:
            engine.request(s.method, s.path, body=s.body, params=params)
        except EngineError as e:
            return done, f"{s.operation} ({s.method} {s.path}) refused by the engine: {e}"
        done.append(s)
        if on_change:
            on_change(s)
    return done, ""


# -- verification: a new index gets the template (and the policy) ---------------------------------------

def retention_warning(lg, engine_facts: dict) -> str:
    """The warning when the engine has no retention API and ``logging.retention_required`` is false ('' otherwise)."""
    if not engine_facts.get("reachable") or engine_facts.get("retention_api") or lg.retention_required:
        return ""
    plugin = "index-management (ISM) plugin" if lg.engine == "opensearch" else "ILM (x-pack)"
    return (f"RETENTION NOT IN FORCE: the engine at {lg.api_url()} has no {plugin}, and logging.retention_required is false: "
            f"the policy above is rendered, not applied; indices are made read-only and deleted only by whatever this site "
            f"runs instead (a Curator job), or never")


def check_new_index(engine: Engine, lg, run_tag: str) -> list[dict]:
    """Create ``<prefix>-verify-<tag>``, read back its mapping (the typed fields as planned) and, where the
    retention API exists, the policy attached to it; delete it. Rows: {check, status, detail}."""
    index = f"{lg.index_prefix}-verify-{run_tag}"
    rows = []
    try:
        engine.request("PUT", f"/{index}")
        got = engine.request("GET", f"/{index}/_mapping")[index]["mappings"].get("properties", {})
        wrong = []
        for f, cast in lg.typed_fields.items():
            node = got
            for part in f.split(".")[:-1]:
                node = node.get(part, {}).get("properties", {})
            have = node.get(f.split(".")[-1], {}).get("type")
            if have != MAPPING[cast]:
                wrong.append(f"{f} is {have or 'unmapped'}, not {MAPPING[cast]}")
        rows.append({"check": "template on a new index", "target": index, "status": "fail" if wrong else "ok",
                     "detail": "; ".join(wrong) or ", ".join(f"{f} {MAPPING[c]}" for f, c in lg.typed_fields.items())})
        if engine.kind == "opensearch":
            rows.append(_ism_attached(engine, index, lg))
        else:
            got_settings = engine.request("GET", f"/{index}/_settings")[index]["settings"]["index"]
            name = got_settings.get("lifecycle", {}).get("name")
            rows.append({"check": "policy on a new index", "target": index, "status": "ok" if name == lg.policy_name() else "fail",
                         "detail": f"index.lifecycle.name {name or 'unset'}"})
    except (EngineError, KeyError) as e:
        rows.append({"check": "template on a new index", "target": index, "status": "fail", "detail": str(e)})
    finally:
        try:
            engine.request("DELETE", f"/{index}")
        except EngineError:
            pass
    return rows


def _ism_attached(engine: Engine, index: str, lg) -> dict:
    try:
        explained = engine.request("GET", f"/_plugins/_ism/explain/{index}")
    except EngineError as e:
        return {"check": "policy on a new index", "target": index, "status": "fail" if lg.retention_required else "skip",
                "detail": f"no ISM here ({e}): no retention; new indices are kept forever"}
    deadline = time.monotonic() + 15
    while True:  # ISM attaches through ism_template when the index is created; the explain API may lag a moment
        pid = (explained.get(index) or {}).get("index.plugins.index_state_management.policy_id") or \
              (explained.get(index) or {}).get("policy_id")
        if pid or time.monotonic() > deadline:
            break
        time.sleep(1)
        explained = engine.request("GET", f"/_plugins/_ism/explain/{index}")
    return {"check": "policy on a new index", "target": index, "status": "ok" if pid == lg.policy_name() else "fail",
            "detail": f"managed by {pid}" if pid else "no policy attached"}


# -- the proof: typed fields can be searched as numbers ---------------------------------------------------

QUERIES = {"status_code >= 500": {"range": {"status_code": {"gte": 500}}},
           "elapsed_time > 1.0": {"range": {"elapsed_time": {"gt": 1.0}}},
           "bytes_sent > 1000": {"range": {"bytes_sent": {"gt": 1000}}}}


def expected_hits(docs: Sequence[dict], name: str) -> list[int]:
    """The sample lines a query should find, computed from the typed values in Python."""
    field_, op, bound = name.split(" ")
    test = {">=": lambda v: v >= float(bound), ">": lambda v: v > float(bound)}[op]
    return sorted({d["sample_line"] for d in docs if isinstance(d.get(field_), (int, float)) and not isinstance(d.get(field_), bool)
                   and test(d[field_])})


def prove(engine: Engine, lg, typed: Sequence[dict], untyped: Sequence[dict], run_tag: str,
          queries: dict[str, dict] | None = None) -> tuple[list[dict], list[str]]:
    """Index the typed records (the preview's, casts applied) into ``<prefix>-proof-<tag>``, which the
    template maps, and the same lines without the casts into ``runbook-proof-untyped-<tag>``, which it does
    not (dynamic mapping: the first value of a field decides its type, as before this runbook); run each
    range query on both; delete both indices.

    Returns (rows, notes): a row per query, *ok* when the typed index finds exactly the lines the typed
    values say (the promise); what the untyped index found instead is the demonstration. Notes: the
    untyped samples the engine refused (a value its guessed mapping cannot hold is a rejected document,
    lost as Fluentd would lose it)."""
    queries = queries or {k: v for k, v in QUERIES.items() if k.split(" ")[0] in lg.typed_fields}
    typed_index, untyped_index = f"{lg.index_prefix}-proof-{run_tag}", f"runbook-proof-untyped-{run_tag}"
    rows, notes = [], []
    try:
        for index, docs in ((typed_index, typed), (untyped_index, untyped)):
            lines = "".join(json.dumps({"index": {"_index": index}}) + "\n" + json.dumps(d) + "\n" for d in docs)
            got = engine.request("POST", "/_bulk", body=lines, params={"refresh": "true"})
            refused = [(d["sample_line"], i["index"]["error"]) for d, i in zip(docs, got.get("items", [])) if i.get("index", {}).get("error")]
            if refused and index == typed_index:
                line, err = refused[0]
                raise EngineError(f"{index}: sample line {line} was refused through the template: {err.get('reason', err)}")
            notes += [f"untyped index refused sample line {line}: {err.get('type', '')}: {str(err.get('reason', err))[:160]}"
                      for line, err in refused]
        mapped = engine.request("GET", f"/{untyped_index}/_mapping")[untyped_index]["mappings"].get("properties", {})
        for name, q in queries.items():
            want = expected_hits(typed, name)
            found = {}
            for index in (typed_index, untyped_index):
                res = engine.request("POST", f"/{index}/_search", body={"query": q, "size": 1000, "_source": ["sample_line"]})
                found[index] = sorted({h["_source"]["sample_line"] for h in res["hits"]["hits"]})
            field_ = name.split(" ")[0]
            untyped_type = mapped.get(field_, {}).get("type", "unmapped")
            rows.append({"query": name, "expected lines": _lines(want), "typed index": _lines(found[typed_index]),
                         "untyped index": f"{_lines(found[untyped_index])} ({field_} mapped as {untyped_type})",
                         "status": "ok" if found[typed_index] == want else "fail",
                         "detail": _explain(want, found[typed_index], found[untyped_index], untyped_type)})
    except (EngineError, KeyError) as e:
        rows.append({"query": "-", "expected lines": "-", "typed index": "-", "untyped index": "-", "status": "fail", "detail": str(e)})
    finally:
        for index in (typed_index, untyped_index):
            try:
                engine.request("DELETE", f"/{index}")
            except EngineError:
                pass
    return rows, notes


def types_matter(rows: Sequence[dict]) -> int:
    """How many queries the untyped index answered wrongly (the demonstration: 0 means these samples show nothing)."""
    return sum(1 for r in rows if r["status"] == "ok" and not r["untyped index"].startswith(r["expected lines"] + " ("))


def _lines(ns: Sequence[int]) -> str:
    return ", ".join(map(str, ns)) if ns else "none"


def _explain(want, typed, untyped, untyped_type) -> str:
    if typed != want:
        return f"the typed index found {_lines(typed)}, not {_lines(want)}: the template did not type the field"
    if untyped == want:
        return f"without the casts the same lines ({untyped_type}): these samples do not show a difference for this field"
    missed, extra = sorted(set(want) - set(untyped)), sorted(set(untyped) - set(want))
    parts = []
    if missed:
        parts.append(f"untyped misses line(s) {_lines(missed)}")
    if extra:
        parts.append(f"untyped wrongly finds line(s) {_lines(extra)}")
    how = "compared as text, character by character" if untyped_type in ("text", "keyword") else \
        f"the first value made it {untyped_type}: later values are coerced to that" if untyped_type in ("long", "integer") else untyped_type
    return "; ".join(parts) + f" ({how})"


def untyped_documents(parsed) -> list[dict]:
    """The same lines parsed without any cast (what Fluentd ships without ``types``)."""
    from .preview import documents, parse_line

    return documents([parse_line(p.line, {}, p.number) for p in parsed])


# -- what the runbook shows and decides ---------------------------------------------------------------

def facts_rows(f: dict, lg) -> list[dict]:
    """The engine's facts as rows: {fact, value, status}."""
    if not f.get("reachable"):
        return [{"fact": "reachable", "value": f.get("error", "no answer"), "status": "fail"}]
    plugins = f.get("plugins") or []
    security = any("security" in p.lower() for p in plugins)
    rows = [
        {"fact": "engine", "value": f"{f.get('distribution')} {f.get('version')} (cluster {f.get('cluster')})",
         "status": "ok" if f.get("distribution", "elasticsearch") == lg.engine or lg.engine == "elasticsearch" and
         f.get("distribution") in (None, "elasticsearch") else "fail"},
        {"fact": "health", "value": f"{f.get('health')} ({f.get('nodes')} data node(s))",
         "status": {"green": "ok", "yellow": "warn"}.get(f.get("health"), "fail")},
        {"fact": "plugins", "value": ", ".join(plugins) or "none", "status": "ok"},
        {"fact": "retention API", "value": ("ISM" if lg.engine == "opensearch" else "ILM") + (" answers" if f.get("retention_api") else
                                                                                              " absent: no policy can be applied"),
         "status": "ok" if f.get("retention_api") else "fail" if lg.retention_required else "warn"},
        {"fact": "authentication", "value": ("checked by the security plugin" if security else
                                             "not checked: no security plugin, the engine accepts any request"
                                             + (" (the credentials are sent, and ignored)" if lg.user else "")),
         "status": "ok" if security or lg.engine == "elasticsearch" else "warn"},
    ]
    return rows


def colour(rows):
    """A ``run.table`` status callback for rows with a ``status`` column (ok, warn, fail)."""
    def status(i: int, col: str) -> str:
        if col != "status":
            return ""
        return {"ok": "ok", "warn": "warn", "fail": "bad", "skip": "warn"}.get(rows[i].get("status"), "")
    return status


def verdict(steps: Sequence[Step], outcome_status: str, error: str, failures: Sequence[str]) -> tuple[str, list[str]]:
    """13's verdict: as a manifests runbook's (a blocked step makes it *not ready*), each problem once."""
    from ..kubernetes.manifests import verdict as manifests_verdict

    v, problems = manifests_verdict(steps, outcome_status, error, failures)
    held = {s.blocked for s in steps if s.command is None}
    return v, list(dict.fromkeys(p.split(": ", 1)[1] if p.split(": ", 1)[-1] in held else p for p in problems))


def verdict_with_warning(v: str, warning: str) -> str:
    """A good verdict that says retention is not in force (a bad one already says what is wrong)."""
    return f"{v}; RETENTION NOT IN FORCE" if warning and v not in ("not ready", "incomplete", "failed") else v
