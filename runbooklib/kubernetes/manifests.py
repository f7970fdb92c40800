"""Kubernetes objects applied from this machine with the cluster's own tools: ``kubectl diff --server-side``
for the plan, ``kubectl apply --server-side`` for the change, one step per manifest.

Shared by the phases that put objects into the cluster (block storage, logging): a step exists only when
``kubectl diff`` finds something to change, so a second apply plans nothing; its diff is what a reviewer
reads, and a whole file is named by its sha256 (another file is another plan).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import RunbookError
from ..phase.steps import Step

CLUSTER = "cluster"  # the steps' host: they act on the Kubernetes API, from this machine


class ToolError(RunbookError):
    """kubectl or helm missing, or a command that did not finish in time."""


def to_yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


@dataclass
class Tools:
    """kubectl and helm on this machine, with the cluster's kubeconfig."""

    kubectl: str
    helm: str
    kubeconfig: Path
    api: str = ""  # where the API is, for messages: the inventory host and the URL (verify.api_host)

    @classmethod
    def from_params(cls, p) -> "Tools":
        from ..kubernetes.state import kubeconfig_path

        def tool(name: str) -> str:
            return str(p.path(name)) if "/" in name else name
        from .verify import api_host

        k = p.kubernetes
        kubeconfig = kubeconfig_path(p)
        return cls(tool(k.kubectl), tool(k.helm), kubeconfig, api_host(p, kubeconfig))

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        try:
            return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, env=env, timeout=timeout)
        except FileNotFoundError:
            raise ToolError(f"{argv[0]} not found: install it, or name it in kubernetes.kubectl / kubernetes.helm") from None
        except subprocess.TimeoutExpired:
            raise ToolError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s") from None

    def kubectl_cmd(self, *args: str) -> list[str]:
        return [self.kubectl, *args]

    def helm_cmd(self, *args: str) -> list[str]:
        return [self.helm, *args]


def needs_creation(stderr: str) -> bool:
    """kubectl diff failing because what the object needs is not there yet (a CRD, its namespace)."""
    return bool(re.search(r"no matches for kind|namespaces? \"?[\w-]+\"? not found|the server could not find the requested resource",
                          stderr))


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and contents, in order): what will be applied."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def summarize_diff(text: str, path: Path | None = None) -> str:
    """``kubectl diff`` of one of Rook's own files, one line per object with its lines added and removed
    (the CRDs alone are thousands of lines: the objects and the size of their change are what a reviewer reads)."""
    objects: list[list] = []
    for line in text.splitlines():
        if line.startswith("diff "):
            objects.append([line.split()[-2].rsplit("/", 1)[-1], 0, 0])
        elif objects and line.startswith("+") and not line.startswith("+++"):
            objects[-1][1] += 1
        elif objects and line.startswith("-") and not line.startswith("---"):
            objects[-1][2] += 1
    head = f"# kubectl diff --server-side -f {path}: {len(objects)} object(s) change (run it for the full diff)\n"
    return head + "".join(f"{name}: +{added} -{removed}\n" for name, added, removed in objects)


@dataclass(frozen=True)
class ApplyStep(Step):
    """A step that runs ``argv`` here (not over SSH), with ``stdin`` (a manifest) when it has one."""

    argv: tuple[str, ...] = ()
    stdin: str | None = None


def apply_step(tools: Tools, operation: str, change: str, manifest: str | None, path: Path | None, undo: str,
               shown: str | None = None) -> Step | None:
    """The step that server-side applies a manifest, or None when ``kubectl diff`` finds nothing to change.

    ``shown``: what to show in place of a manifest that holds a secret (its value as a placeholder); the
    manifest itself goes only to kubectl's stdin (``kubectl diff`` masks a Secret's data)."""
    target = ["-f", "-"] if manifest is not None else ["-f", str(path)]
    d = tools.run(tools.kubectl_cmd("diff", "--server-side", "--force-conflicts", "--field-manager=runbooklib", *target),
                  stdin=manifest)
    if d.returncode == 0:
        return None
    if d.returncode == 1:
        diff = d.stdout if manifest is not None else summarize_diff(d.stdout, path)
    elif needs_creation(d.stderr):
        diff = (shown or manifest) if manifest is not None else f"(everything in {path}: what it needs is not in the cluster yet)\n"
    else:
        return Step(CLUSTER, operation, change, None, blocked=f"kubectl diff failed: {d.stderr.strip()[-300:]}")
    argv = tuple(tools.kubectl_cmd("apply", "--server-side", "--force-conflicts", "--field-manager=runbooklib", *target))
    # the file's hash is part of the step (and so of a plan an approval signs): another file is another plan
    shown = " ".join(shlex.quote(a) for a in argv) + (" (the manifest below on stdin)" if manifest is not None
                                                      else f"  # {path.name} sha256 {content_sha256(path)}")
    return ApplyStep(CLUSTER, operation, change, shown, None, undo, diff=diff if diff.endswith("\n") else diff + "\n",
                     argv=argv, stdin=manifest)


def apply(steps: Sequence[Step], tools: Tools, on_change: Callable[[Step], object] | None = None,
          on_line: Callable[[str], None] = print) -> tuple[list[Step], str]:
    """Run the steps in order, here; stop at the first that fails. Returns (applied, error)."""
    done: list[Step] = []
    for s in steps:
        if s.command is None or not isinstance(s, ApplyStep):
            return done, f"{s.operation}: {s.blocked or 'cannot be applied here'}"
        on_line(f"{s.operation}: {s.change}")
        r = tools.run(s.argv, stdin=s.stdin, timeout=900)
        if r.returncode != 0:
            at = f" at the Kubernetes API on {tools.api}" if tools.api else ""
            return done, f"{s.operation} ({s.change}) failed{at}: {(r.stderr or r.stdout).strip()[-400:]}"
        done.append(s)
        if on_change:
            on_change(s)
    return done, ""


def verdict(steps: Sequence[Step], outcome_status: str, error: str, failures: Sequence[str]) -> tuple[str, list[str]]:
    """A manifests runbook's verdict and its problems: *not ready* when a step is blocked, *planned* in plan mode,
    else the apply's verdict with the verification's ``failures`` (an apply, or a cluster already as planned,
    is judged by them too)."""
    from ..phase.steps import apply_verdict

    held = [s.blocked for s in steps if s.command is None]
    problems = held + ([error] if error else [])
    if outcome_status in ("applied", "empty"):
        problems += list(failures)
    if held:
        return "not ready", problems
    return ("planned" if outcome_status == "planned" else apply_verdict(outcome_status, problems)), problems
