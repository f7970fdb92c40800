"""What Fluentd will make of the applications' log lines: the parser preview of ``12-logging``.

Fluentd itself cannot run here (no registry we reach ships it), so this follows its documented and
coded behaviour for the configuration :mod:`.fluentd` renders: a ``parser`` filter with
``reserve_data true`` and ``reserve_time true`` around the ``json`` parser with ``keep_time_key true``
and the ``types`` casts. The cases of ``tests/logging/test_preview.py`` are Fluentd's (its
``parser_json.rb``, ``parser.rb`` ``convert_values``/``build_type_converters`` and ``filter_parser.rb``):

- a line that is a JSON object gives one record; a JSON array gives one record per object in it (other
  elements are unmatched); any other JSON value, or text that is not JSON, is *unmatched*: with
  ``reserve_data`` the record is kept as it was, the line unparsed in its field;
- the parsed fields are merged over the record (the log line's field stays; the Kubernetes metadata
  too); ``null`` values are never cast;
- ``time`` (the JSON parser's ``time_key``) is read as float seconds, Fluentd's default ``time_type``:
  a string such as ``2024-05-01T10:00:00Z`` becomes 2024 s after the epoch (ignored here, as
  ``reserve_time`` keeps the container's time), but an object, a list or a boolean makes the parse
  *fail* and the record is dropped;
- casts are Ruby's, and never fail: ``integer`` is ``to_i`` (``"12abc"`` -> 12, ``"abc"`` -> 0,
  ``12.7`` -> 12, ``true`` -> 0), ``float`` is ``to_f`` (``"1.5s"`` -> 1.5, ``"abc"`` -> 0.0), ``bool``
  is true only for ``true``/``yes``/``1`` (any case); ``string`` is ``to_s``. A value a cast turned into
  something else than it said is flagged *lossy*: Fluentd would index 0 without a word.
- only top-level fields are cast: ``a.b`` in ``types`` does not reach ``{"a": {"b": …}}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TRUTHY = ("true", "yes", "1")
TIME_KEY = "time"


class _Unmatched(Exception):
    pass


def _reject_constant(name: str):
    raise _Unmatched(f"{name} is not JSON (Ruby's parser refuses it)")


def _load(text: str):
    """Ruby's ``JSON.parse``: no NaN/Infinity, the last of duplicate keys wins (as Python's)."""
    return json.loads(text, parse_constant=_reject_constant)


# -- Ruby's conversions ------------------------------------------------------------------------------

_INT_RE = re.compile(r"^\s*([+-]?\d+(?:_\d+)*)")
_FLOAT_RE = re.compile(r"^\s*([+-]?(?:\d+(?:_\d+)*)?(?:\.\d+(?:_\d+)*)?(?:[eE][+-]?\d+)?)")


def ruby_to_i(text: str) -> int:
    m = _INT_RE.match(text)
    return int(m.group(1).replace("_", "")) if m else 0


def ruby_to_f(text: str) -> float:
    m = _FLOAT_RE.match(text)
    s = m.group(1).replace("_", "") if m else ""
    if not re.search(r"\d", s.split("e")[0].split("E")[0]):  # no digits before any exponent
        return 0.0
    try:
        return float(s)
    except ValueError:
        return 0.0


def ruby_to_s(v) -> str:
    if v is None:
        return ""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e16:
            return f"{v:.1f}"
        return re.sub(r"^(-?\d+)e", r"\1.0e", repr(v))  # Ruby writes 1.0e+20 where Python writes 1e+20
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", "=>")) if isinstance(v, dict) else "[" + ", ".join(
            json.dumps(x) if isinstance(x, str) else ruby_to_s(x) for x in v) + "]"
    return str(v)


def cast(value, to: str) -> tuple[object, str]:
    """(the value Fluentd's ``types`` cast gives, a note: '' when nothing was lost, else why it is lossy)."""
    kind = to.split(":", 1)[0]
    if kind == "integer":
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            return ruby_to_i(ruby_to_s(value)), f"{json.dumps(value)} is not a number: Fluentd makes it {ruby_to_i(ruby_to_s(value))}"
        if isinstance(value, int):
            return value, ""
        if isinstance(value, float):
            return math.trunc(value), "" if value == math.trunc(value) else f"{value} truncated to {math.trunc(value)}"
        got = ruby_to_i(value)
        exact = re.fullmatch(r"\s*[+-]?\d+(?:_\d+)*\s*", value) is not None
        return got, "" if exact else f"{json.dumps(value)} is not an integer: Fluentd makes it {got}"
    if kind == "float":
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            return ruby_to_f(ruby_to_s(value)), f"{json.dumps(value)} is not a number: Fluentd makes it {ruby_to_f(ruby_to_s(value))}"
        if isinstance(value, (int, float)):
            return float(value), ""
        got = ruby_to_f(value)
        try:
            exact = float(value.replace("_", "")) == got and value.strip() != ""
        except ValueError:
            exact = False
        return got, "" if exact else f"{json.dumps(value)} is not a number: Fluentd makes it {got}"
    if kind == "bool":
        got = ruby_to_s(value).lower() in TRUTHY
        plain = ruby_to_s(value).lower() in (*TRUTHY, "false", "no", "0")
        return got, "" if plain else f"{json.dumps(value)} is neither true/yes/1 nor false/no/0: Fluentd makes it false"
    if kind == "string":
        return ruby_to_s(value), ""
    if kind == "array":
        delimiter = to.split(":", 1)[1] if ":" in to else ","
        return ruby_to_s(value).split(delimiter), ""
    if kind == "time":
        return value, "time casts are not previewed (the format is the site's): check them on the engine"
    return value, f"unknown cast {to}"


def type_name(v) -> str:
    return {bool: "bool", int: "integer", float: "float", str: "string", dict: "object", list: "array", type(None): "null"}[type(v)]


# -- one line ----------------------------------------------------------------------------------------

@dataclass
class Parsed:
    """What became of one line: ``outcome`` is *parsed*, *unmatched* (kept unparsed), *missing* (the record
    has no such field: kept unparsed) or *dropped* (the parse failed: the record is gone)."""

    number: int
    line: str
    outcome: str
    records: list[dict] = field(default_factory=list)  # the parsed fields, cast (one per JSON object)
    why: str = ""
    lossy: list[str] = field(default_factory=list)  # "field: note" for every cast that changed a value


def _convert(record: dict, types: dict[str, str], lossy: list[str]) -> dict:
    out = dict(record)
    t = out.get(TIME_KEY)
    if TIME_KEY in out and (t is None or isinstance(t, bool) or not isinstance(t, (str, int, float))):
        raise _Unmatched(f"its `time` is {type_name(out[TIME_KEY])}: Fluentd reads `time` as the event's time (float seconds) "
                         "and the parse fails, dropping the record")
    for key in list(out):
        value = out[key]
        if value is None or key not in types:
            continue
        out[key], note = cast(value, types[key])
        if note:
            lossy.append(f"{key}: {note}")
    return out


def parse_line(line: str, types: dict[str, str], number: int = 1) -> Parsed:
    """Fluentd's parser filter over one container log line (the text in ``log``/``message``)."""
    text = line.rstrip("\n")
    try:
        data = _load(text)
    except (ValueError, _Unmatched) as e:
        why = str(e) if isinstance(e, _Unmatched) else f"not JSON ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError) else "not JSON"
        return Parsed(number, text, "unmatched", why=why + ": kept as it was (reserve_data), unparsed")
    objects = [data] if isinstance(data, dict) else data if isinstance(data, list) else None
    if objects is None:
        return Parsed(number, text, "unmatched", why=f"a JSON {type_name(data)}, not an object: kept as it was, unparsed")
    result = Parsed(number, text, "parsed")
    for obj in objects:
        if not isinstance(obj, dict):
            result.why = (result.why + "; " if result.why else "") + f"an array element is a JSON {type_name(obj)}: unmatched (the record is kept once more, unparsed)"
            continue
        try:
            result.records.append(_convert(obj, types, result.lossy))
        except _Unmatched as e:
            return Parsed(number, text, "dropped", why=str(e))
    if len(objects) > 1:
        result.why = (result.why + "; " if result.why else "") + f"a JSON array: {len(result.records)} records from one line"
    if not result.records:
        result.outcome = "unmatched"
    return result


def preview(lines: Iterable[str], types: dict[str, str], key_name: str = "log", runtime_key: str | None = None) -> list[Parsed]:
    """Every non-empty line. ``runtime_key`` is the field the runtime really puts the line in: when the
    drop-in reads another (``key_name``), no line is parsed, as on the cluster."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if runtime_key is not None and runtime_key != key_name:
            out.append(Parsed(n, line.rstrip("\n"), "missing",
                              why=f"the record has no `{key_name}` (the line is in `{runtime_key}`): kept, nothing parsed"))
            continue
        out.append(parse_line(line, types, n))
    return out


def rows(parsed: Sequence[Parsed], types: dict[str, str]) -> list[dict]:
    """One table row per record (a line that gave none: one row saying why)."""
    table = []
    for p in parsed:
        if not p.records:
            table.append({"line": p.number, "outcome": p.outcome, **{f: "" for f in types}, "notes": p.why})
            continue
        for rec in p.records:
            cells = {f: ("-" if f not in rec else "null" if rec[f] is None else
                         f"{ruby_to_s(rec[f]) if not isinstance(rec[f], str) else json.dumps(rec[f])} ({type_name(rec[f])})") for f in types}
            table.append({"line": p.number, "outcome": p.outcome, **cells, "notes": "; ".join(filter(None, [p.why, *p.lossy]))})
    return table


def summary(parsed: Sequence[Parsed]) -> dict[str, int]:
    counts = {"lines": len(parsed), "parsed": 0, "unmatched": 0, "missing": 0, "dropped": 0, "lossy casts": 0}
    for p in parsed:
        counts[p.outcome] += 1
        counts["lossy casts"] += len(p.lossy)
    return counts


def documents(parsed: Sequence[Parsed]) -> list[dict]:
    """The parsed records as Fluentd would ship them (the proof indexes them), each with its line number."""
    return [{**rec, "sample_line": p.number} for p in parsed for rec in p.records]
