"""Reading a parameter file as YAML without trusting it: bounded, strict, and every refusal located.

YAML as PyYAML reads it accepts things that make a parameter file mean something other than what
its author sees, or that turn a typo into a hang or a traceback. This module refuses them before
validation, each as a :class:`~runbooklib.errors.Problem` with the line and the field path:

- anything but a regular file (a FIFO would block forever), and files above :data:`MAX_BYTES`;
- bytes that are not UTF-8;
- a key given twice in one mapping (``kind: production`` then ``kind: lab`` would silently make a
  lab file); both lines are named;
- keys that are not text (``true:`` or ``1:``), which YAML reads as a bool or a number;
- nesting deeper than :data:`MAX_DEPTH` (PyYAML would recurse until Python gives up);
- integers longer than :data:`MAX_INT_DIGITS` digits and the floats ``.inf``, ``.nan`` and
  anything that overflows to them (no setting means "forever" or "not a number").

``read_text(path)`` and ``load(text)`` raise :class:`~runbooklib.errors.ParamsError` (exit 2).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError, Problem

MAX_BYTES = 1 << 20  # a whole production site fits in a few tens of kB
MAX_DEPTH = 32  # the deepest real path is about six levels
MAX_INT_DIGITS = 18  # every integer setting fits in a signed 64-bit value

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark | None):
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that stops composing at :data:`MAX_DEPTH` instead of recursing without bound."""

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_text(path: Path, shown: str | None = None) -> str:
    """The file's text, refused unless it is a regular UTF-8 file of at most :data:`MAX_BYTES`."""
    shown = shown or str(path)

    def refuse(message: str, line: int | None = None) -> ParamsError:
        return ParamsError(shown, [Problem("", message, line)])

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what was opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise refuse("file not found; pass an existing parameter file (see params/)") from None
    except OSError as e:
        raise refuse(f"cannot read the file: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
            raise refuse(f"is {kind}; a parameter file must be a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise refuse(f"is larger than {MAX_BYTES // 1024} KiB; a parameter file is a few kB of settings "
                     "(is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise refuse(f"byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8", line) from None


def load(text: str, shown: str = "<params>") -> tuple[Any, yaml.Node | None]:
    """Parse ``text`` into plain data and its node tree (for line numbers), or raise ParamsError."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ParamsError(shown, [Problem("", f"is larger than {MAX_BYTES // 1024} KiB; a parameter file is a "
                                              "few kB of settings (is this the right file?)")])
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        problems = list(_node_problems(root)) if root is not None else []
        if problems:
            raise ParamsError(shown, sorted(problems, key=lambda p: p.line or 0))
        data = loader.construct_document(root) if root is not None else None
    except _TooDeep as e:
        line = e.mark.line + 1 if e.mark is not None else None
        raise ParamsError(shown, [Problem("", f"nested more than {MAX_DEPTH} levels deep; a parameter file "
                                              "is a handful of levels (is this the right file?)", line)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ParamsError(shown, [Problem("", f"not valid YAML: {getattr(e, 'problem', None) or e}", line)]) from None
    finally:
        loader.dispose()
    return data, root


def _node_problems(root: yaml.Node) -> list[Problem]:
    """Every duplicate key, non-text key and out-of-range number in the tree, with its path."""
    out: list[Problem] = []
    seen: set[int] = set()  # aliases point at nodes already walked
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if key.tag == _MERGE:
                    stack.append((value, path))
                    continue
                key_line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                    shown = key.value if isinstance(key, yaml.ScalarNode) else "a collection"
                    out.append(Problem(path, f"key {shown} is not text (YAML reads it as "
                                             f"{_tag_name(key.tag)}); put it in quotes or fix the indentation",
                                       key_line))
                    continue
                child = f"{path}.{key.value}" if path else key.value
                if key.value in first:
                    out.append(Problem(child, f"key {key.value!r} appears twice in this mapping (lines "
                                              f"{first[key.value]} and {key_line}); YAML would keep only the "
                                              "last one: delete one of them", key_line))
                else:
                    first[key.value] = key_line
                stack.append((value, child))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{path}[{i}]"))
        elif node.tag == _INT:
            digits = sum(c.isdigit() for c in node.value)
            if digits > MAX_INT_DIGITS:
                out.append(Problem(path, f"a {digits}-digit integer is out of range; no setting needs more than "
                                         f"{MAX_INT_DIGITS} digits", line))
        elif node.tag == _FLOAT:
            try:
                value = float(node.value.replace("_", "").replace(".inf", "inf").replace(".Inf", "inf")
                              .replace(".INF", "inf").replace(".nan", "nan").replace(".NaN", "nan")
                              .replace(".NAN", "nan"))
            except ValueError:
                continue  # sexagesimal and other YAML 1.1 oddities: the constructor decides
            if math.isinf(value) or math.isnan(value):
                out.append(Problem(path, f"{node.value} is not a usable number (infinite or not a number); "
                                         "give a finite value", line))
    return out


def _tag_name(tag: str) -> str:
    return {"tag:yaml.org,2002:bool": "a yes/no value", _INT: "a number", _FLOAT: "a number",
            "tag:yaml.org,2002:null": "an empty value", "tag:yaml.org,2002:timestamp": "a date"}.get(
        tag, tag.rsplit(":", 1)[-1])


def source_spans(text: str, paths: list[str]) -> dict[str, str]:
    """The source text of the values at ``paths`` (dotted, with ``[i]``), as written in the file.

    A literal written with YAML escapes (``"p\\x41ss"``) or as a folded block differs from its
    value; the redactor needs the written form too, or the archived parameter file would keep it.
    """
    try:
        _, root = load(text)
    except ParamsError:
        return {}
    out: dict[str, str] = {}
    for path in paths:
        node = _node_at(root, path)
        if isinstance(node, yaml.ScalarNode):
            span = text[node.start_mark.index:node.end_mark.index].rstrip()
            if span:
                out[path] = span
    return out


def _node_at(root: yaml.Node | None, path: str) -> yaml.Node | None:
    node = root
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        if key and isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
        else:
            return None
    return node
