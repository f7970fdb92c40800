"""Every reference in a parameter file resolves, and holds what its field needs, before anything runs.

``load_params`` checks the file itself; the secrets, keys and known-hosts file it points at live
elsewhere and may be missing, unreadable or the wrong thing (a private key where a public key is
expected copies the private key onto every host). :func:`reference_problems` resolves each one and
checks its shape without ever showing its content; ``runbook check`` and ``runbook run`` call
:func:`require_references`, so a run never starts with a reference that cannot be used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import keyfiles, safeyaml
from .errors import ParamsError, Problem, RunbookError
from .params import Params, _line_of
from .secrets import SecretRef, read_secret_file


def _registry_key_problem(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return "is not JSON; a registry key is the service account's JSON key file"
    if not isinstance(data, dict):
        return "is JSON but not an object; a registry key is the service account's JSON key file"
    if not isinstance(data.get("private_key"), str) or keyfiles.private_key_problem(data["private_key"]):
        return "has no usable private_key; download the service account's JSON key again"
    return None


# What a secret field must hold, by field path. Fields not listed only need to resolve to text.
SHAPES: dict[str, Callable[[str], str | None]] = {
    "ssh.key": keyfiles.private_key_problem,
    "registry.json_key": _registry_key_problem,
}


def _lab_hint(path: Path) -> str:
    if ".lab" in path.parts:  # a path into the rehearsal lab's folder: say what writes it
        return " (for the lab, `runbook lab up` writes it)"
    return ""


def _read(params: Params, path: Path, what: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why it cannot be read)."""
    try:
        return read_secret_file(path), None
    except FileNotFoundError:
        return None, f"{what} {path} does not exist{_lab_hint(path)}"
    except OSError as e:
        return None, f"{what} {path} cannot be read ({e.strerror}); check its owner and mode"
    except ValueError as e:
        return None, f"{what} {path} {e}"


def _resolve(params: Params, field: str, ref: SecretRef) -> tuple[str | None, str | None]:
    if ref.scheme == "file":
        return _read(params, ref.path(params.source_dir), "secret file")
    try:
        return ref.resolve(params.source_dir, field), None
    except RunbookError as e:
        return None, str(e).removeprefix(f"{field}: ")


def reference_problems(params: Params) -> list[Problem]:
    """Every secret, key and known-hosts reference that does not resolve to what its field needs."""
    out: list[Problem] = []
    for field, ref in params.secret_refs():
        value, problem = _resolve(params, field, ref)
        if problem is None and value is not None and not value.strip():
            problem = f"{ref} is empty"
        if problem is None and value is not None and field in SHAPES:
            shape = SHAPES[field](value)
            problem = f"{ref} {shape}" if shape else None
        if problem:
            out.append(Problem(field, problem))

    known_hosts = params.path(params.ssh.known_hosts)
    text, problem = _read(params, known_hosts, "known-hosts file")
    problem = problem or (f"{known_hosts} {shape}" if (shape := keyfiles.known_hosts_problem(text or "")) else None)
    if problem:
        out.append(Problem("ssh.known_hosts", problem))

    rules = params.environment.approvals
    if rules is not None:
        from .approvals import allowed_signers_problem

        problem = allowed_signers_problem(params.path(rules.allowed_signers))
        if problem:
            out.append(Problem("environment.approvals.allowed_signers", problem))

    user = params.vm.deploy_user
    if user is not None:
        field = "vm.deploy_user.authorized_key"
        if user.authorized_key.startswith("file:"):
            path = params.path(user.authorized_key[5:])
            text, problem = _read(params, path, "public key file")
            where = f"{path} "
        else:
            text, problem, where = user.authorized_key, None, "the value "
        if problem is None:
            shape = keyfiles.public_keys_problem(text or "")
            problem = where + shape if shape else None
        if problem:
            out.append(Problem(field, problem))

    if out:
        try:
            _, root = safeyaml.load(params.text)
        except ParamsError:
            root = None
        out = [Problem(p.path, p.message, _line_of(root, p.path)) for p in out]
    return out


def require_references(params: Params) -> None:
    """Raise ParamsError (exit 2) naming every reference that cannot be used; never shows a value."""
    problems = reference_problems(params)
    if problems:
        raise ParamsError(str(params.source), problems)
