"""Secrets (and secrets as hostile values): runbooks run on the lab with a canary in every secret reference of their phase; afterwards no
canary, in any form the scrubber knows (raw, base64 at every alignment and URL-safe, hex, URL-encoded,
JSON-escaped, HTML-escaped, repr), is anywhere under the archive (records, journals, index, ledger), in
the terminal output, or in what the run wrote on the hosts (every file in each VM's writable layer:
its logs, configuration and data). The forms are computed here, independently of the library's own
redactor, so a gap in the redactor's needles cannot hide a leak.
"""

from __future__ import annotations

import base64
import html
import json
import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import lab_key_material, require_lab, runbook, running_lab

require_lab()


def forms(value: str) -> set[str]:
    """A value's written forms, each long enough not to match by chance."""
    raw = value.encode()
    out = {value, value.encode().hex(), value.encode().hex().upper(), urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
           json.dumps(value)[1:-1], html.escape(value), repr(value)[1:-1]}
    for pad in range(3):  # inside a larger base64 blob the value starts at any of three alignments
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            blob = enc(b"x" * pad + raw).decode().rstrip("=")
            start = (pad * 4 + 2) // 3 + 1
            out.add(blob[start:-2])
    return {f for f in out if len(f) >= 12}


ESCAPED = "/var/tmp/runbook-hostile-escaped"  # what a password that broke out of its quoting would create


@dataclass(frozen=True)
class Row:
    runbook: str
    apply: bool
    slow: bool = True
    codes: tuple[int, ...] = (0, 1, 4)  # success or failure: both must keep the secrets

    @property
    def id(self) -> str:
        return f"{Path(self.runbook).stem}-{'apply' if self.apply else 'plan'}"


MATRIX = [
    Row("notebooks/05-database.ipynb", apply=False, slow=False),
    Row("notebooks/05-database.ipynb", apply=True, codes=(0,)),  # the passwords really set: root's and the replication user's
    Row("notebooks/02-vm-baseline.ipynb", apply=True),
    Row("notebooks/04-registry-access.ipynb", apply=False),  # fails: the small lab has no cluster yet
    Row("notebooks/00-environment-overview.ipynb", apply=False),
    Row("notebooks/01-vm-preflight.ipynb", apply=False),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("canary"), "rbcan", "10.98.0.0/24") as lab:
        yield lab


def canary_params(lab, folder: Path) -> tuple[Path, dict[str, str]]:
    """The lab's parameters with every secret reference pointing at a fresh canary; returns their values."""
    data = yaml.safe_load(lab.params_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, str] = {}

    def canary(field: str, value: str) -> str:
        path = folder / field.replace(".", "-")
        path.write_text(value + "\n")
        path.chmod(0o600)
        values[field] = value
        return f"file:{path}"

    for field in ("root_password", "replication_password"):
        # a canary that also tries to break out of a SQL string and of a shell word (see ESCAPED)
        token = secrets.token_hex(10)
        data["database"][field] = canary(f"database.{field}", f"Cn{token}'); CREATE DATABASE pwn_{token}; -- \"$(touch {ESCAPED})`touch {ESCAPED}`&/+=%<>")
    made = lab_key_material(folder / "registry")  # a fresh service-account key: its private key is the canary
    data["registry"]["json_key"] = canary("registry.json_key", made["registry"].read_text().strip())
    values["ssh.key"] = (lab.root / "ssh" / "id_ed25519").read_text()  # the lab's private key: it must not leak either
    path = lab.root / f"canary-{folder.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, values


def needles(values: dict[str, str]) -> dict[str, str]:
    out = {}
    for field, value in values.items():
        parts = {value}
        if field == "registry.json_key":
            parts |= {line for line in json.loads(value)["private_key"].splitlines() if len(line) > 40}
        if field == "ssh.key":
            parts = {line for line in value.splitlines() if len(line) > 40}
        for part in parts:
            for form in forms(part):
                out[form] = field
    return out


def leaks(data: bytes, found: dict[str, str]) -> set[str]:
    text = data.decode("utf-8", errors="replace")
    return {field for form, field in found.items() if form in text}


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.hostile("secrets: canaries", r.runbook),
                                                                   *([pytest.mark.slow] if r.slow else [])]) for r in MATRIX])
def test_no_canary_anywhere_after_a_run(row, lab, tmp_path):
    params, values = canary_params(lab, tmp_path / "canaries")
    before = {p: p.stat().st_mtime_ns for vm in lab.vms() for p in (lab.vm_dir(vm) / "upper").rglob("*") if p.is_file()}
    done = runbook("run", row.runbook, "--params", str(params), *(["--apply"] if row.apply else []), "--allow-not-ready")
    assert done.returncode in row.codes, done.stderr[-3000:]
    found = needles(values)
    assert found and all(len(f) >= 12 for f in found)
    # the terminal
    assert not leaks((done.stdout + done.stderr).encode(), found), leaks((done.stdout + done.stderr).encode(), found)
    # the archive: every file, the ledger, index, journals and HTML included
    archive = Path(os.environ["RUNBOOK_ARCHIVE"])
    scanned = [p for p in archive.rglob("*") if p.is_file()]
    assert scanned, "nothing archived"
    for p in scanned:
        assert not leaks(p.read_bytes(), found), f"{p}: {leaks(p.read_bytes(), found)}"
    # what the run wrote on the hosts: every file of each VM's writable layer it created or changed
    written = [p for vm in lab.vms() for p in (lab.vm_dir(vm) / "upper").rglob("*")
               if p.is_file() and not p.is_symlink() and before.get(p) != p.stat().st_mtime_ns and p.stat().st_size < 50 << 20]
    for p in written:
        assert not leaks(p.read_bytes(), found), f"{p}: {leaks(p.read_bytes(), found)}"
    # nothing broke out: no marker file on any VM, no database created by a password's SQL
    for vm in lab.vms():
        upper = lab.vm_dir(vm) / "upper"
        assert not (upper / ESCAPED.lstrip("/")).exists(), f"{vm}: a secret's value ran as a command"
        assert not [p for p in upper.rglob("pwn_*")], f"{vm}: a secret's value ran as SQL"
    assert not Path(ESCAPED).exists(), "a secret's value ran as a command on the runbook's machine"
    # the check is not blind: the canaries are where they belong, and a form is found when present
    assert leaks(Path(params).read_bytes() + (tmp_path / "canaries" / "database-root_password").read_bytes(), found) == {"database.root_password"}
    assert leaks(base64.b64encode(b"header:" + values["database.replication_password"].encode()), found) == {"database.replication_password"}
