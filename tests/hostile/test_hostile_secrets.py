"""Secrets (and secrets as hostile values): runbooks run on the lab with a canary in every secret reference of their phase; afterwards no
canary, in any form the scrubber knows (raw, base64 at every alignment and URL-safe, hex, URL-encoded,
JSON-escaped, HTML-escaped, repr), is anywhere under the archive (records, journals, index, ledger), in
the terminal output, or in what the run wrote on the hosts (every file in each VM's writable layer:
its logs, configuration and data). The forms are computed here, independently of the library's own
redactor, so a gap in the redactor's needles cannot hide a leak.
"""

from __future__ import annotations

import base64
import fnmatch
import html
import json
import os
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import lab_key_material, require_lab, runbook, running_lab, set_path

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


def db_canary() -> str:
    """A database password canary that also tries to break out of a SQL string and of a shell word (see ESCAPED), within
    the 96 characters MariaDB takes as a replica's source password (a longer one is refused before anything runs)."""
    token = secrets.token_hex(5)
    value = f"Cn{token}');CREATE DATABASE pwn_{token};-- \"$(touch {ESCAPED})`&%<>"
    assert len(value) <= 96, len(value)
    return value


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


def canary_params(lab, folder: Path, source: Path | None = None, fixed: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """The lab's parameters (or ``source``, a file beside them) with every secret reference of the file pointing at a
    fresh canary; returns their values. The SSH key stays the lab's (it must log in): its value is a needle all the same.
    ``fixed``: fields whose canary is a given value (a staged lab's own secret, itself made as a canary, already set on
    its servers), so that a run that does not rotate that secret still finds it working."""
    from runbooklib.params import load_params

    source = source or lab.params_file
    data = yaml.safe_load(source.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, str] = {}

    def canary(field: str, value: str) -> str:
        path = folder / field.replace(".", "-")
        path.write_text(value + "\n")
        path.chmod(0o600)
        values[field] = value
        return f"file:{path}"

    for field, _ in load_params(source).secret_refs():
        if field == "ssh.key":
            values["ssh.key"] = (lab.root / "ssh" / "id_ed25519").read_text()  # the lab's private key: it must not leak either
            continue
        token = secrets.token_hex(10)
        if field in (fixed or {}):
            value = fixed[field]
        elif field == "registry.json_key":  # a fresh service-account key: its private key is the canary
            value = lab_key_material(folder / "registry")["registry"].read_text().strip()
        elif field.startswith("database."):
            value = db_canary()
        else:
            value = f"Cn{token}{secrets.token_hex(6)}"
        set_path(data, field, canary(field, value))
    path = source.with_name(f"canary-{folder.parent.name}-{folder.name}.yaml")  # beside the source: its references resolve
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


def vm_files(lab) -> dict[Path, int]:
    """Every file in each VM's writable layer, with its modification time (what a run writes is what changes)."""
    return {p: p.stat().st_mtime_ns for vm in lab.vms() for p in (lab.vm_dir(vm) / "upper").rglob("*") if p.is_file() and not p.is_symlink()}


def check_no_canary(lab, done: subprocess.CompletedProcess, values: dict[str, str], before: dict[Path, int],
                    belongs: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[str]]:
    """No canary in the terminal, the archive, the report site or what the run wrote on the VMs.

    ``belongs``: per field, the VM paths (globs, as on the VM) where the value is kept by design (a Redis
    password in Redis's own configuration, a pull key in RKE2's registries.yaml or in etcd, which stores the
    cluster's Secrets); a canary there is where it belongs, anywhere else (a log, a backup, a script) a leak.
    Returns the files where a canary was found where it belongs (so a caller can show the check is not blind).
    """
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
    # the report site of that archive (`runbook report`): every page, the host and change pages included
    site = archive.with_name(archive.name + "-hostile-site")
    report = runbook("report", "--out", str(site), timeout=600)
    assert report.returncode == 0, report.stdout + report.stderr
    assert not leaks((report.stdout + report.stderr).encode(), found)
    pages = [p for p in site.rglob("*") if p.is_file()]
    assert len(pages) > 3, "the report wrote no site"
    for p in pages:
        assert not leaks(p.read_bytes(), found), f"{p}: {leaks(p.read_bytes(), found)}"
    # what the run wrote on the hosts: every file of each VM's writable layer it created or changed
    kept: dict[str, list[str]] = {}
    for p, mtime in vm_files(lab).items():
        if before.get(p) == mtime or p.stat().st_size >= 50 << 20:
            continue
        hit = leaks(p.read_bytes(), found)
        vm = p.relative_to(lab.root / "vms").parts[0] if (lab.root / "vms") in p.parents else "?"
        on_vm = "/" + str(p.relative_to(lab.vm_dir(vm) / "upper")) if vm != "?" else str(p)
        for field in hit:
            assert any(fnmatch.fnmatch(on_vm, g) for g in (belongs or {}).get(field, ())), f"{vm}:{on_vm}: {field}"
            kept.setdefault(field, []).append(f"{vm}:{on_vm}")
    # nothing broke out: no marker file on any VM, no database created by a password's SQL
    for vm in lab.vms():
        upper = lab.vm_dir(vm) / "upper"
        assert not (upper / ESCAPED.lstrip("/")).exists(), f"{vm}: a secret's value ran as a command"
        assert not [p for p in upper.rglob("pwn_*")], f"{vm}: a secret's value ran as SQL"
    assert not Path(ESCAPED).exists(), "a secret's value ran as a command on the runbook's machine"
    # the check is not blind: the canaries are where they belong, and a form is found when present
    field = next(f for f in values if f != "ssh.key")
    assert leaks(values[field].encode(), found) == {field}
    assert leaks(base64.b64encode(b"header:" + values[field].encode()), found) == {field}
    return kept


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.hostile("secrets: canaries", r.runbook),
                                                                   *([pytest.mark.slow] if r.slow else [])]) for r in MATRIX])
def test_no_canary_anywhere_after_a_run(row, lab, tmp_path):
    params, values = canary_params(lab, tmp_path / "canaries")
    before = vm_files(lab)
    done = runbook("run", row.runbook, "--params", str(params), *(["--apply"] if row.apply else []), "--allow-not-ready")
    assert done.returncode in row.codes, done.stderr[-3000:]
    check_no_canary(lab, done, values, before)
    assert leaks((tmp_path / "canaries" / "database-root_password").read_bytes(), needles(values)) == {"database.root_password"}
