"""Shared fixtures. Every test gets its own archive root: no test ever writes to outputs/."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_PARAMS = ROOT / "params" / "lab.yaml"
RUNBOOK = [sys.executable, "-m", "runbooklib.cli"]


def pytest_collection_modifyitems(config, items):
    """``slow`` drills run only when asked: ``RUNBOOK_SLOW=1`` or ``-m slow``."""
    if os.environ.get("RUNBOOK_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="a slow drill: RUNBOOK_SLOW=1 or -m slow runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_ARCHIVE", str(tmp_path / "archive"))
    monkeypatch.setenv("RUNBOOK_OPERATOR", "tester@ci")
    # run locks live outside archives (machine-wide); each test gets its own so suites never collide
    monkeypatch.setenv("RUNBOOK_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def archive_root(tmp_path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def lab_params(tmp_path) -> Path:
    """params/lab.yaml with every reference resolvable (runs refuse unresolvable ones), no lab needed."""
    return resolvable_lab_params(tmp_path / "params")


def lab_data() -> dict:
    return copy.deepcopy(yaml.safe_load(LAB_PARAMS.read_text()))


def _split(path: str) -> list:
    return [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def set_path(data: dict, path: str, value) -> None:
    parts = _split(path)
    node = data
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def delete_path(data: dict, path: str) -> None:
    parts = _split(path)
    node = data
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


def write_params(directory: Path, data: dict, name: str = "params.yaml") -> Path:
    """Write a parameter file next to a copy of the lab's relative paths (so file: refs resolve there)."""
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def lab_key_material(directory: Path) -> dict[str, Path]:
    """What `runbook lab up` writes for the references in params/lab.yaml, made in ``directory``.

    An SSH key pair, a known-hosts file pinning a key for every lab address, and a service-account
    JSON key: enough for every reference to resolve, no lab needed (nothing connects).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    ssh = directory / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    key = ssh / "id_ed25519"
    if not key.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
        key.chmod(0o600)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        key.with_suffix(".pub").write_text(public + " tests@runbook\n")
        hosts = [h["address"] for h in lab_data()["inventory"]["hosts"]]
        (ssh / "known_hosts").write_text("".join(f"{a} {public}\n" for a in hosts))
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        import json

        (directory / "registry-key.json").write_text(json.dumps({
            "type": "service_account", "project_id": "lab", "private_key_id": "0" * 40, "private_key": pem,
            "client_email": "puller@lab.iam.gserviceaccount.com"}) + "\n")
    return {"key": key, "public": key.with_suffix(".pub"), "known_hosts": ssh / "known_hosts",
            "registry": directory / "registry-key.json"}


def resolvable_lab_data(directory: Path) -> dict:
    """params/lab.yaml with its key and secret references pointing at material made in ``directory``."""
    made = lab_key_material(directory)
    data = lab_data()
    set_path(data, "ssh.key", f"file:{made['key']}")
    set_path(data, "ssh.known_hosts", str(made["known_hosts"]))
    set_path(data, "vm.deploy_user.authorized_key", f"file:{made['public']}")
    set_path(data, "registry.json_key", f"file:{made['registry']}")
    return data


def resolvable_lab_params(directory: Path, name: str = "lab.yaml") -> Path:
    """A lab parameter file whose every reference resolves (see :func:`lab_key_material`)."""
    return write_params(directory, resolvable_lab_data(directory), name)


def make_notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A runbook-shaped notebook: a tagged parameters cell, then the given code cells."""
    params = parameters or 'params_file = "../params/lab.yaml"\nrun_id = None\napply = False'
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells.append(nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in cells)
    nbformat.write(nb, path)
    return path


def runbook(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command line, in a child process, as an operator would run it. One that outlasts ``timeout`` fails the
    test with the last of what it said (the runbook's progress: what it was waiting for), not a bare timeout."""
    full_env = dict(os.environ, **(env or {}))
    try:
        return subprocess.run([*RUNBOOK, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        said = {name: (text.decode(errors="replace") if isinstance(text, bytes) else text or "")[-4000:]
                for name, text in (("stderr", e.stderr), ("stdout", e.output))}
        pytest.fail(f"`runbook {' '.join(args)}` did not end within {timeout:g} s; the last of what it said:\n"
                    f"--- stderr ---\n{said['stderr']}\n--- stdout ---\n{said['stdout']}", pytrace=False)


def require_lab(*tools: str) -> None:
    """Skip a test module that needs root and the lab's packages, or fail it in CI, which must have them."""
    import shutil

    missing = [t for t in ("ip", "/usr/sbin/sshd", *tools) if not (shutil.which(t) or Path(t).exists())]
    if os.geteuid() == 0 and not missing:
        return
    reason = f"the lab needs root and {', '.join(missing) or 'its packages'} (`make setup` as root)"
    if os.environ.get("CI"):
        raise RuntimeError(f"{reason}; CI must provide them")
    pytest.skip(reason, allow_module_level=True)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", every: float = 0.3):
    """``predicate()``'s first true value, asked every ``every`` seconds; the test fails after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def lab_identity(name: str, subnet: str) -> tuple[str, str]:
    """A test lab's name and subnet, moved aside when ``RUNBOOK_TEST_LAB_TAG`` is set.

    Two suites on one machine (two checkouts, a developer and a helper) would otherwise build labs
    with the same names and subnets and tear down each other's. The tag (two lower-case letters)
    replaces the names' ``rb`` prefix, moves the subnets by 100 in their second octet and puts
    them in a third octet derived from the tag (1 to 254), so that two tags' labs never share one.
    """
    tag = os.environ.get("RUNBOOK_TEST_LAB_TAG")
    if not tag:
        return name, subnet
    if not re.fullmatch(r"[a-z]{2}", tag) or tag == "rb":
        raise RuntimeError(f"RUNBOOK_TEST_LAB_TAG={tag!r}: use two lower-case letters other than 'rb'")
    a, b, c, rest = subnet.split(".", 3)
    third = 1 + ((ord(tag[0]) - 97) * 26 + ord(tag[1]) - 97) % 254
    assert c == "0", f"{subnet}: a test lab's subnet is written as a.b.0.0/24"
    return tag + name.removeprefix("rb"), f"{a}.{(int(b) + 100) % 256}.{third}.{rest}"


@contextlib.contextmanager
def running_lab(root: Path, name: str, subnet: str, profile: str = "small"):
    """A lab instance of its own (name prefix, subnet, folder), cleared of debris first, always torn down."""
    from runbooklab import Lab

    name, subnet = lab_identity(name, subnet)
    lab = Lab(root, name=name, subnet=subnet)
    lab.down()  # what an interrupted earlier run may have left
    lab.up(profile=profile)
    try:
        yield lab
    finally:
        lab.down()


def manifest(stdout: str) -> dict:
    """The manifest of the run whose summary ``stdout`` is (``runbook run`` prints its path)."""
    path = next(line.split("manifest:", 1)[1].strip() for line in stdout.splitlines() if "manifest:" in line)
    return json.loads(Path(path).read_text())
