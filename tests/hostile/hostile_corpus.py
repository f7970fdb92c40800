"""A corpus of broken parameter files, generated from real ones and from the parameter models.

Each case is a parameter file's bytes, the class of breakage, and what the rejection must name: the
field path (for a field's problem) or only the file (for a file that cannot be read as YAML at all).
Cases are generated from the committed parameter files' every node and from the pydantic models'
own constraints, so a field or section added later is covered without a new line here.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel

from runbooklib.params import Params, _model_in

ROOT = Path(__file__).resolve().parents[2]
# the bases: lab.yaml has every section but the cache, lab-cache.yaml the cache (and few hosts)
BASES = {"lab": ROOT / "params" / "lab.yaml", "lab-cache": ROOT / "params" / "lab-cache.yaml"}
EXTRA = "hostile_extra_key"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # wrong type, missing, extra, out of range, contradictory, wrong YAML, huge, non-UTF-8, duplicate keys
    content: bytes
    field: str | None  # the field path the message must name; None: the file alone

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.id.replace('/', '_')}.yaml"
        path.write_bytes(self.content)
        return path


def base(name: str | Path) -> dict:
    return yaml.safe_load((BASES[name] if name in BASES else Path(name)).read_text())


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def path_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def nodes(data: Any, loc: tuple = ()) -> typing.Iterator[tuple[tuple, Any]]:
    """Every node below the top (mappings, lists and leaves) with its location."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*loc, k), v
            yield from nodes(v, (*loc, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*loc, i), v
            yield from nodes(v, (*loc, i))


def with_value(data: dict, loc: tuple, value: Any) -> dict:
    out = copy.deepcopy(data)
    node = out
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value
    return out


def without(data: dict, loc: tuple) -> dict:
    out = copy.deepcopy(data)
    node = out
    for part in loc[:-1]:
        node = node[part]
    del node[loc[-1]]
    return out


def field_info(loc: tuple):
    """The pydantic FieldInfo at a location below Params (None where the model has none, e.g. a free-form dict)."""
    cls: Any = Params
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        if cls is None:
            return None
        info = cls.model_fields.get(part)
        if info is None:
            return None
        cls = _model_in(info.annotation)
    return info


def model_at(loc: tuple) -> type[BaseModel] | None:
    if not loc:
        return Params
    info = field_info(loc)
    if info is None:
        return None
    args = typing.get_args(info.annotation)
    # a mapping node is a model only where the annotation is the model (or a list of it, at an index)
    model = _model_in(info.annotation)
    if model is None:
        return None
    if isinstance(loc[-1], int) or typing.get_origin(info.annotation) is not list and not any(typing.get_origin(a) is list for a in args):
        return model
    return None


def wrong_type(value: Any) -> Any:
    """A value of a type the node cannot have: a list for a mapping, a mapping for anything else."""
    return [["not", "a", "mapping"]] if isinstance(value, dict) else {"not": ["the", "right", "type"]}


def bounds_broken(loc: tuple) -> list[Any]:
    """Values just outside the numeric bounds the model declares for a field."""
    info = field_info(loc)
    if info is None:
        return []
    out = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Gt):
            out.append(meta.gt)
        elif isinstance(meta, annotated_types.Ge):
            out.append(meta.ge - 1)
        elif isinstance(meta, annotated_types.Lt):
            out.append(meta.lt)
        elif isinstance(meta, annotated_types.Le):
            out.append(meta.le + 1)
        elif isinstance(meta, annotated_types.MinLen) and meta.min_length > 0:
            out.append([])
    return out


def field_cases(name: str, source: Path | None = None) -> list[Case]:
    data = base(source or name)
    cases: list[Case] = []
    for loc, value in nodes(data):
        p = path_str(loc)
        cases.append(Case(f"{name}/wrong-type/{p}", "wrong type", dump(with_value(data, loc, wrong_type(value))), p))
        if isinstance(loc[-1], str):
            info = field_info(loc)
            if info is not None and info.is_required():
                cases.append(Case(f"{name}/missing/{p}", "missing", dump(without(data, loc)), p))
        if isinstance(value, dict) and model_at(loc) is not None:
            cases.append(Case(f"{name}/extra/{p}", "extra", dump(with_value(data, (*loc, EXTRA), 1)), f"{p}.{EXTRA}"))
        for i, bad in enumerate(bounds_broken(loc) if not isinstance(loc[-1], int) else []):
            cases.append(Case(f"{name}/out-of-range/{p}/{i}", "out of range", dump(with_value(data, loc, bad)), p))
    cases.append(Case(f"{name}/extra/top", "extra", dump({**data, EXTRA: {"x": 1}}), EXTRA))
    return cases


def _host(data: dict, name: str) -> int:
    return next(i for i, h in enumerate(data["inventory"]["hosts"]) if h["name"] == name)


def contradictory_cases() -> list[Case]:
    """Fields each valid alone that contradict one another, within a section and across sections."""
    lab, cache = base("lab"), base("lab-cache")
    db1 = _host(lab, "db1")
    edits: list[tuple[str, dict, str]] = [
        ("cluster-dns-outside-service-cidr", with_value(lab, ("kubernetes", "cluster_dns"), "10.99.0.10"), "kubernetes.cluster_dns"),
        ("duplicate-host-name", with_value(lab, ("inventory", "hosts", 1, "name"), lab["inventory"]["hosts"][0]["name"]), "inventory.hosts"),
        ("duplicate-address", with_value(lab, ("inventory", "hosts", 1, "address"), lab["inventory"]["hosts"][0]["address"]),
         "inventory.hosts"),
        ("database-primary-not-a-database-host", with_value(lab, ("database", "primary"), "w1"), "database.primary"),
        ("database-primary-is-replica", with_value(lab, ("database", "replica"), lab["database"]["primary"]), "database.replica"),
        ("database-host-unknown", with_value(lab, ("database", "primary"), "nosuchhost"), "database.primary"),
        ("binlog-retention-shorter-than-delay", with_value(lab, ("database", "binlog_retention_seconds"), 60), "database.binlog_retention_seconds"),
        ("host-outside-data-country", with_value(lab, ("inventory", "hosts", db1, "location", "country"), "DE"), "inventory.hosts"),
        ("edge-host-twice", with_value(lab, ("edge", "hosts"), [lab["edge"]["hosts"][0]] * 2), "edge.hosts"),
        ("edge-https-port-is-http-port", with_value(with_value(lab, ("edge", "http_port"), 8080), ("edge", "https_port"), 8080), "edge.https_port"),
        ("cache-replica-is-primary", with_value(cache, ("cache", "vms", "replica"), "cache1"), "cache.vms.replica"),
        ("cache-rdb-without-save-point", with_value(cache, ("cache", "vms", "persistence", "save"), []), "cache.vms.persistence.save"),
        ("cache-cluster-without-kubernetes", with_value(cache, ("cache", "variant"), "cluster"), "cache"),
        ("etcd-even", with_value(lab, ("inventory", "hosts", _host(lab, "w1"), "roles"), ["worker", "etcd"]), "inventory.hosts"),
    ]
    return [Case(f"contradictory/{name}", "contradictory", dump(data), field) for name, data, field in edits]


def file_cases(source: Path | None = None) -> list[Case]:
    """Files that are not a parameter file at all: the message names the file (and the key, for a duplicate)."""
    text = (source or BASES["lab"]).read_text()
    dup = text.replace("ssh:\n", "ssh:\n  connect_timeout: 5\n", 1)
    return [
        Case("file/wrong-yaml-unclosed", "wrong YAML", text.replace("inventory:", "inventory: [", 1).encode(), None),
        Case("file/wrong-yaml-tab", "wrong YAML", text.replace("\n  ", "\n\t", 1).encode(), None),
        Case("file/wrong-yaml-top-list", "wrong YAML", b"- environment\n- inventory\n", None),
        Case("file/empty", "wrong YAML", b"", None),
        Case("file/huge", "huge", text.encode() + b"# " + b"x" * (1 << 20) + b"\n", None),
        Case("file/huge-int", "huge", text.replace("connect_timeout: 5", "connect_timeout: 1" + "0" * 30, 1).encode(), "ssh.connect_timeout"),
        Case("file/inf", "out of range", text.replace("connect_timeout: 5", "connect_timeout: .inf", 1).encode(), "ssh.connect_timeout"),
        Case("file/deep", "huge", text.encode() + b"extra: " + b"[" * 200 + b"]" * 200 + b"\n", None),
        Case("file/non-utf8", "non-UTF-8", text.replace("Founding", "Fo\xffnding").encode("latin-1") if "Founding" in text
             else text.encode() + b"# \xff\xfe\n", None),
        Case("file/utf16", "non-UTF-8", text.encode("utf-16"), None),
        Case("file/duplicate-key", "duplicate keys", dup.encode(), "ssh.connect_timeout"),
        Case("file/yaml-bool-key", "wrong YAML", text.replace("ssh:\n", "ssh:\n  yes: 1\n", 1).encode(), "ssh"),
    ]


def all_cases() -> list[Case]:
    return [*field_cases("lab"), *field_cases("lab-cache"), *contradictory_cases(), *file_cases()]
