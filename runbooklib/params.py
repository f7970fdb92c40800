"""Parameter files: one YAML file per environment, validated before anything else happens.

``load_params(path)`` returns a :class:`Params` or raises :class:`~runbooklib.errors.ParamsError`
listing every problem at once, each with the file, the line, the field path
(``inventory.hosts[3].address``) and what is expected. The shared sections (environment,
inventory, ssh) live in :mod:`runbooklib.schema`; each phase brings its own section and rules
(``runbooklib/<phase>/settings.py``), composed here into one :class:`Params` model. Rules that span
fields (duplicate names, data outside its country, and each phase's own) run in :func:`check_rules`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, PrivateAttr, ValidationError, create_model

from . import safeyaml
from .errors import ParamsError, Problem
from .phases import phases
from .schema import DATA_ROLES, K8S_ROLES, ROLES, SSH, Environment, Host, Inventory, Section
from .secrets import Secret, SecretRef

__all__ = ["DATA_ROLES", "K8S_ROLES", "ROLES", "Host", "Params", "check_rules", "load_params", "parse_params"]


class _Environment(Section):
    """A whole environment: who, where, how to reach it; the phases add one section each (below)."""

    environment: Environment
    inventory: Inventory
    ssh: SSH

    _source: Path = PrivateAttr(default=Path("params.yaml"))
    _text: str = PrivateAttr(default="")

    # -- where it came from ------------------------------------------------------------------
    @property
    def source(self) -> Path:
        return self._source

    @property
    def source_dir(self) -> Path:
        return self._source.resolve().parent

    @property
    def text(self) -> str:
        return self._text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._text.encode()).hexdigest()

    # -- inventory helpers -------------------------------------------------------------------
    @property
    def hosts(self) -> list[Host]:
        return list(self.inventory.hosts)

    def host(self, name: str) -> Host:
        for h in self.inventory.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host named {name!r} in {self._source}")

    def hosts_with(self, role: str) -> list[Host]:
        return [h for h in self.inventory.hosts if role in h.roles]

    def path(self, relative: str) -> Path:
        """A path from the parameter file, resolved against the file's own folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.source_dir / p

    # -- secrets -----------------------------------------------------------------------------
    def secret_refs(self) -> Iterator[tuple[str, SecretRef]]:
        """Every secret reference in the file, with its field path."""
        yield from _walk_refs(self, "")

    def secret(self, field: str) -> Secret:
        """Resolve the secret at ``field`` (e.g. ``database.root_password``)."""
        refs = dict(self.secret_refs())
        if field not in refs:
            raise KeyError(f"{field} is not a secret field of {self._source}; known: {', '.join(refs) or 'none'}")
        return Secret(refs[field].resolve(self.source_dir, field), field)


def _walk_refs(obj: Any, prefix: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(obj, SecretRef):
        yield prefix, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk_refs(getattr(obj, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _walk_refs(item, f"{prefix}[{i}]")


def _phase_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for ph in phases():
        if ph.section is not None:
            fields[ph.section] = (ph.model, ph.model()) if ph.required else (Optional[ph.model], None)
    return fields


# One model for the whole file: the shared sections plus every registered phase's own.
Params = create_model("Params", __base__=_Environment, __module__=__name__, **_phase_fields())
Params.__doc__ = "A whole environment: who, where, how to reach it, and one section per migration phase."


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------

def check_rules(p: Params) -> list[Problem]:
    """Rules that no single field can check. Each problem names the field to fix."""
    out: list[Problem] = []
    hosts = p.inventory.hosts

    for key, label in (("name", "name"), ("address", "address")):
        first: dict[Any, int] = {}
        for i, h in enumerate(hosts):
            value = getattr(h, key)
            if value in first:
                out.append(Problem(
                    f"inventory.hosts[{i}].{key}",
                    f"duplicate {label} {value} (also inventory.hosts[{first[value]}]); every host needs its own {label}",
                ))
            else:
                first[value] = i
    for i, h in enumerate(hosts):
        dup = [r for r, n in Counter(h.roles).items() if n > 1]
        if dup:
            out.append(Problem(f"inventory.hosts[{i}].roles", f"role {dup[0]} is listed twice"))
        if p.environment.kind != "lab" and h.address.is_loopback:
            out.append(Problem(f"inventory.hosts[{i}].address",
                               f"loopback address {h.address} in a {p.environment.kind} environment; give the host's real address"))

    # Data localisation: hosts that can hold personal data stay in the data country.
    for i, h in enumerate(hosts):
        holding = [r for r in h.roles if r in DATA_ROLES]
        if holding and h.location.country != p.environment.data_country:
            out.append(Problem(
                f"inventory.hosts[{i}].location.country",
                f"{h.name} has role {holding[0]}, which can hold personal data, but is located in "
                f"{h.location.country}; environment.data_country requires {p.environment.data_country}",
            ))

    # Secrets: literal values are for the lab only.
    if p.environment.kind != "lab":
        for path, ref in p.secret_refs():
            if ref.is_literal:
                out.append(Problem(
                    path,
                    f"a literal secret is not allowed in a {p.environment.kind} parameter file; put the "
                    "value in an environment variable and write env:NAME, or in a file only you can read "
                    "and write file:/path",
                ))

    # Each phase's own rules.
    for ph in phases():
        if ph.rules is not None:
            out.extend(ph.rules(p))
    return out


# --------------------------------------------------------------------------------------------
# Loading, and errors that point at the line
# --------------------------------------------------------------------------------------------

def load_params(path: str | Path) -> Params:
    """Read, parse and validate a parameter file; raise ParamsError naming every problem."""
    path = Path(path)
    text = safeyaml.read_text(path, str(path))  # a regular UTF-8 file of bounded size, or exit 2
    return parse_params(text, str(path), source=path)


def parse_params(text: str, shown: str = "<params>", source: Path | None = None) -> Params:
    data, root = safeyaml.load(text, shown)  # duplicate keys, depth, huge or infinite numbers: refused
    if not isinstance(data, dict):
        raise ParamsError(shown, [Problem("", "expected a mapping with environment, inventory and ssh at the top")])
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        problems = [_problem_from_pydantic(err, root) for err in e.errors()]
        # every problem at once: the cross-field rules still judge the sections that are valid
        problems += _rules_on_what_validated(data, [_clean_loc(err["loc"]) for err in e.errors()], root, text, shown, source)
        problems.sort(key=lambda pr: pr.line or 0)
        raise ParamsError(shown, problems) from None
    params._source = source or Path(shown)
    params._text = text
    problems = [Problem(pr.path, pr.message, _line_of(root, pr.path)) for pr in check_rules(params)]
    problems.sort(key=lambda pr: pr.line or 0)
    if problems:
        raise ParamsError(shown, problems)
    return params


def _rules_on_what_validated(data: dict, locs: list[tuple], root, text: str, shown: str, source: Path | None) -> list[Problem]:
    """The cross-field rules' problems for a file whose structure has problems too.

    First the offending keys alone are left out (an unknown key, a wrong value); if the rest still
    does not validate, whole sections that failed are left out (optional ones) or stood in for
    (``ssh``). Rules about what was left out are not reported: its own problem already is.
    """
    import copy

    if not isinstance(data, dict):
        return []
    partial = _validate_without(data, locs)
    broken = {loc[0] for loc in locs if loc}
    if partial is None:
        if broken & {"environment", "inventory"}:
            return []  # without a valid environment or inventory no rule can judge
        usable = {k: copy.deepcopy(v) for k, v in data.items() if k not in broken and k in Params.model_fields}
        if "ssh" in broken:
            usable["ssh"] = {"key": "env:RUNBOOK_CHECK_PLACEHOLDER", "known_hosts": "-"}
        try:
            partial = Params.model_validate(usable)
        except ValidationError:
            return []
        skip = {(b,) for b in broken}
    else:
        skip = {tuple(loc) for loc in locs}
    partial._source = source or Path(shown)
    partial._text = text
    out = []
    for pr in check_rules(partial):
        parts = tuple(int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", pr.path))
        if any(parts[:len(loc)] == loc for loc in skip):
            continue
        out.append(Problem(pr.path, pr.message, _line_of(root, pr.path)))
    return out


def _validate_without(data: dict, locs: list[tuple]):
    """``data`` with the value at each error location removed, validated; None if that is not enough."""
    import copy

    trimmed = copy.deepcopy(data)
    for loc in sorted(locs, key=len, reverse=True):
        node = trimmed
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict):
            node.pop(loc[-1], None) if loc else None
    try:
        return Params.model_validate(trimmed)
    except ValidationError:
        return None


def _path_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds validator names to union and function locations; keep only real keys
    return tuple(p for p in loc if isinstance(p, int) or not (p.startswith("function-") or p in ("IPv4Address", "IPv6Address")))


def _problem_from_pydantic(err: dict, root: yaml.Node | None) -> Problem:
    loc = _clean_loc(err["loc"])
    path = _path_str(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        msg += f" Allowed here: {', '.join(allowed)}" if allowed else ""
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "literal_error":
        msg = f"{err['input']!r} is not allowed; expected {err['ctx']['expected']}"
    elif kind == "string_pattern_mismatch":
        msg = f"{err['input']!r} does not have the expected form ({_pattern_hint(err['ctx']['pattern'])})"
    elif kind == "string_type" and isinstance(err["input"], (int, float, bool)):
        msg = f"expected text, got {err['input']!r} (YAML read it as a {type(err['input']).__name__}); put it in quotes"
    elif kind in ("ip_any_address", "ip_v4_network", "ip_v4_address"):
        msg = f"{err['input']!r} is not a valid IP {'network' if 'network' in kind else 'address'}"
    else:
        msg = err["msg"]
        if "input" in err and not isinstance(err["input"], (dict, list)) and kind != "value_error":
            msg += f" (got {err['input']!r})"
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
    return Problem(path, msg, _line_of(root, path if kind != "missing" else _path_str(loc[:-1])))


_PATTERN_HINTS = {
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": "lower-case letters, digits and dashes, like a DNS label",
    r"^[A-Z]{2}$": "a two-letter country code such as RU",
    r"^v1\.\d+\.\d+$": "a Kubernetes version such as v1.32.5",
    r"^https?://": "a URL starting with http:// or https://",
    r"^[a-z_][a-z0-9_-]*$": "a Unix user name",
    r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$": "a host name or an IP address",
    r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$": "a Kubernetes object name: lower-case letters, digits, dashes and dots",
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$": "a Kubernetes label key such as example.org/tier",
    r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$": "a Kubernetes label value: up to 63 letters, digits, '-', '_' or '.'",
}


def _pattern_hint(pattern: str) -> str:
    return _PATTERN_HINTS.get(pattern, f"pattern {pattern}")


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` below Params (for 'did you mean' hints)."""
    cls: Any = Params
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _model_in(field.annotation)
        if cls is None:
            return []
    return list(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(root: yaml.Node | None, path: str) -> int | None:
    """1-based line of the YAML node at a field path, or of its nearest existing parent."""
    if root is None:
        return None
    node = root
    line = node.start_mark.line + 1
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        nxt = None
        if key and isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    nxt, line = v, k.start_mark.line + 1
                    break
        elif index and isinstance(node, yaml.SequenceNode):
            i = int(index)
            if i < len(node.value):
                nxt = node.value[i]
                line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line
