"""Parameter validation, table-driven from tests/data/params_cases.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from conftest import LAB_PARAMS, delete_path, lab_data, resolvable_lab_data, runbook, set_path, write_params
from runbooklib.errors import ParamsError
from runbooklib.params import load_params, parse_params

CASES = yaml.safe_load((Path(__file__).parent / "data" / "params_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_validation_case(case, tmp_path):
    data = lab_data()
    for path, value in (case.get("set") or {}).items():
        set_path(data, path, value)
    for path in case.get("delete") or []:
        delete_path(data, path)
    file = write_params(tmp_path, data)
    if not case["expect"]:
        params = load_params(file)
        assert params.environment.name == data["environment"]["name"]
        return
    with pytest.raises(ParamsError) as info:
        load_params(file)
    err = info.value
    assert err.file == str(file)
    found = {p.path: p.message for p in err.problems}
    for path, fragment in case["expect"]:
        assert path in found, f"no problem reported at {path}; got {found}"
        assert fragment in found[path], f"{path}: {found[path]!r} lacks {fragment!r}"
    assert len(err.problems) == len(case["expect"]), f"unexpected extra problems: {found}"
    assert str(file) in str(err)


def test_problem_points_at_the_line_of_the_field():
    text = LAB_PARAMS.read_text().replace("cluster_dns: 10.43.0.10", "cluster_dns: 10.44.0.10")
    with pytest.raises(ParamsError) as info:
        parse_params(text, "lab.yaml")
    (problem,) = info.value.problems
    line = text.splitlines()[problem.line - 1]
    assert line.strip().startswith("cluster_dns: 10.44.0.10")
    assert f"lab.yaml:{problem.line}: kubernetes.cluster_dns:" in str(info.value)


def test_all_problems_reported_at_once(tmp_path):
    data = lab_data()
    set_path(data, "inventory.hosts[4].address", "10.77.0.21")
    set_path(data, "kubernetes.cluster_dns", "10.44.0.10")
    set_path(data, "database.replica", "w1")
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path, data))
    assert {p.path for p in info.value.problems} == {
        "inventory.hosts[4].address", "kubernetes.cluster_dns", "database.replica"}


@pytest.mark.parametrize("text,fragment", [
    ("environment: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "expected a mapping"),
])
def test_unreadable_files(text, fragment):
    with pytest.raises(ParamsError) as info:
        parse_params(text, "x.yaml")
    assert fragment in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ParamsError) as info:
        load_params(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "file not found" in str(info.value)


def test_example_production_template_is_valid():
    params = load_params(LAB_PARAMS.parent / "example-production.yaml")
    assert params.environment.kind == "production"
    assert all(not ref.is_literal for _, ref in params.secret_refs())


def test_check_command_exits_2_and_names_field(tmp_path, lab_params):
    data = lab_data()
    set_path(data, "kubernetes.cluster_dns", "10.44.0.10")
    bad = write_params(tmp_path, data)
    done = runbook("check", str(bad))
    assert done.returncode == 2
    assert "kubernetes.cluster_dns" in done.stderr and str(bad) in done.stderr
    ok = runbook("check", str(lab_params))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "every reference resolves" in ok.stdout


def test_run_with_bad_params_exits_2_before_running(tmp_path, archive_root):
    data = lab_data()
    set_path(data, "inventory.hosts[0].roles", ["etcd", "master"])
    bad = write_params(tmp_path, data)
    done = runbook("run", "notebooks/00-environment-overview.ipynb", "--params", str(bad))
    assert done.returncode == 2
    assert "inventory.hosts[0].roles[1]" in done.stderr
    assert not archive_root.exists(), "nothing may be archived (or locked) for invalid parameters"


def test_hosts_helpers():
    params = load_params(LAB_PARAMS)
    assert [h.name for h in params.hosts_with("database")] == ["db1", "db2", "db3"]
    assert params.host("edge2").roles == ["edge"]
    assert params.path("../.lab/ssh/known_hosts") == (LAB_PARAMS.parent / "../.lab/ssh/known_hosts")


# -- hostile files: exit 2 with file:line: field, never a traceback or a silent acceptance ----------

def _lab_text_with(old: str, new: str) -> str:
    text = LAB_PARAMS.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_duplicate_key_is_refused_naming_both_lines():
    text = _lab_text_with("  kind: lab\n", "  kind: production\n  kind: lab\n")
    with pytest.raises(ParamsError) as info:
        parse_params(text, "dup.yaml")
    (problem,) = info.value.problems
    first = next(i for i, line in enumerate(text.splitlines(), 1) if "kind: production" in line)
    assert problem.path == "environment.kind" and problem.line == first + 1
    assert f"lines {first} and {first + 1}" in problem.message
    assert f"dup.yaml:{first + 1}: environment.kind:" in str(info.value)


def test_a_key_that_is_not_text_is_named_with_its_line():
    text = _lab_text_with("  parallelism: 16\n", "  parallelism: 16\n  true: 1\n")
    with pytest.raises(ParamsError) as info:
        parse_params(text, "x.yaml")
    (problem,) = info.value.problems
    assert problem.path == "ssh" and "key true is not text" in problem.message and "yes/no" in problem.message
    assert text.splitlines()[problem.line - 1].strip() == "true: 1"


@pytest.mark.parametrize("content,fragment", [
    (b"environment:\n  name: lab\n  description: caf\xe9\n", "x.yaml:3: byte 0xe9 is not UTF-8"),
    (b"environment: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested more than 32 levels"),
    (b"ssh:\n  parallelism: " + b"9" * 5000 + b"\n", "x.yaml:2: ssh.parallelism: a 5000-digit integer"),
    (b"# " + b"x" * (2 << 20) + b"\n", "larger than 1024 KiB"),
], ids=["non-utf8", "50000-deep", "5000-digit-int", "2MB"])
def test_hostile_content_exits_2_without_a_traceback(tmp_path, content, fragment):
    bad = tmp_path / "x.yaml"
    bad.write_bytes(content)
    done = runbook("check", str(bad))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert fragment in done.stderr.replace(str(tmp_path) + "/", "")


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    done = runbook("check", str(fifo), timeout=60)
    assert done.returncode == 2 and "is a FIFO; a parameter file must be a regular file" in done.stderr


def test_a_directory_is_refused(tmp_path):
    done = runbook("check", str(tmp_path))
    assert done.returncode == 2 and "is a directory" in done.stderr


# -- references: every secret, key and known-hosts file resolves to what its field needs ------------

def test_check_reports_every_unresolvable_reference_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("RB_UNSET_PASSWORD", raising=False)
    data = resolvable_lab_data(tmp_path)
    set_path(data, "ssh.key", "file:missing/id_ed25519")
    set_path(data, "ssh.known_hosts", "missing/known_hosts")
    set_path(data, "registry.json_key", "file:missing/registry.json")
    set_path(data, "database.root_password", "env:RB_UNSET_PASSWORD")
    params = write_params(tmp_path, data)
    done = runbook("check", str(params))
    assert done.returncode == 2, done.stdout + done.stderr
    for field, fragment in [("ssh.key", "missing/id_ed25519 does not exist"),
                            ("ssh.known_hosts", "missing/known_hosts does not exist"),
                            ("registry.json_key", "registry.json does not exist"),
                            ("database.root_password", "environment variable RB_UNSET_PASSWORD is not set")]:
        line = next((ln for ln in done.stderr.splitlines() if f": {field}: " in ln), "")
        assert fragment in line, f"{field}: {done.stderr}"
        assert f"{params}:" in line  # file:line: field
    assert "valid" not in done.stdout


def _private_key_text(tmp_path) -> str:
    return (tmp_path / "ssh" / "id_ed25519").read_text()


@pytest.mark.parametrize("field,value,fragment", [
    ("vm.deploy_user.authorized_key", "file:ssh/id_ed25519", "holds a PRIVATE key"),
    ("vm.deploy_user.authorized_key", "file:/etc/shadow", "is not a public key"),
    ("vm.deploy_user.authorized_key", "PRIVATE", "the value holds a PRIVATE key"),
    ("ssh.known_hosts", "/etc/shadow", "is not a known-hosts entry"),
    ("ssh.known_hosts", "ssh/id_ed25519", "holds a PRIVATE key, not pinned host keys"),
    ("ssh.key", "file:ssh/id_ed25519.pub", "holds a public key; give the private key"),
    ("ssh.key", "file:/etc/shadow", "is not a private key"),
    ("registry.json_key", "file:ssh/id_ed25519.pub", "is not JSON"),
])
def test_check_refuses_key_material_of_the_wrong_kind_without_showing_it(tmp_path, field, value, fragment):
    data = resolvable_lab_data(tmp_path)
    private = _private_key_text(tmp_path)
    set_path(data, field, private if value == "PRIVATE" else value)
    params = write_params(tmp_path, data)
    done = runbook("check", str(params))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f": {field}: " in done.stderr and fragment in done.stderr, done.stderr
    body = [ln for ln in private.splitlines() if "-----" not in ln]
    assert not any(ln in done.stderr for ln in body), "the check printed key material"
    if Path("/etc/shadow").exists():
        assert not any(ln and ln in done.stderr for ln in Path("/etc/shadow").read_text().splitlines()[:3])


def test_baseline_run_with_a_private_authorized_key_never_starts(tmp_path, archive_root):
    data = resolvable_lab_data(tmp_path)
    set_path(data, "vm.deploy_user.authorized_key", "file:ssh/id_ed25519")
    params = write_params(tmp_path, data)
    done = runbook("run", "notebooks/02-vm-baseline.ipynb", "--params", str(params), "--apply")
    assert done.returncode == 2 and "vm.deploy_user.authorized_key" in done.stderr and "PRIVATE" in done.stderr
    assert not archive_root.exists(), "nothing may run, lock or archive with an unusable reference"


@pytest.mark.parametrize("typo,where", [("ssh.conect_timeout", "another section"),
                                        ("kubernetes.typo_key", "the same section"),
                                        ("inventory.hosts[0].adress", "the inventory")])
def test_check_reports_structural_and_cross_field_problems_in_one_pass(tmp_path, typo, where):
    """An unknown key must not hide a bad cluster DNS until it is fixed: both at once, in line order."""
    data = lab_data()
    set_path(data, typo, "10.0.0.5")
    set_path(data, "kubernetes.cluster_dns", "10.44.0.10")
    with pytest.raises(ParamsError) as caught:
        load_params(write_params(tmp_path, data))
    by_path = {p.path: p.message for p in caught.value.problems}
    assert set(by_path) == {typo, "kubernetes.cluster_dns"}, where
    assert by_path[typo].startswith(f"unknown key {typo.rsplit('.', 1)[1]!r}")
    assert "outside kubernetes.service_cidr" in by_path["kubernetes.cluster_dns"]
