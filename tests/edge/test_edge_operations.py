"""Edge operations as data (tests/data/edge/operations.yaml): an edge node's facts in, the planned steps out.

Also the shell the steps run, on this machine's shell against temporary files: the configuration
transaction puts everything back when the check refuses it, and keeps the previous files when it passes.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from conftest import ROOT, lab_data
from runbooklib.edge import facts as edge_facts
from runbooklib.edge import operations, render
from runbooklib.params import parse_params

CASES = yaml.safe_load((ROOT / "tests" / "data" / "edge" / "operations.yaml").read_text())


@pytest.fixture(scope="module")
def params():
    return parse_params(yaml.safe_dump(lab_data(), sort_keys=False), "lab")


def base(p, kind: str) -> dict:
    config = render.render(p)
    installed = {"installed": True, "version": "nginx/1.22.1", "stream_module": True, "curl": True}
    if kind == "fresh":
        return {"nginx": installed, "files": {path: None for path in edge_facts.MANAGED}, "default_site": True,
                "service": {"active": "inactive", "enabled": "disabled"}, "running_config": "",
                "cdn_root": {"exists": False, "fstype": "", "probe": False}}
    return {"nginx": installed, "files": dict(config.files), "default_site": False,
            "service": {"active": "active", "enabled": "enabled"}, "running_config": config.config_id,
            "cdn_root": {"exists": True, "fstype": "fuse.glusterfs", "probe": True}}


def case_facts(p, case: dict) -> dict:
    f = copy.deepcopy(base(p, case["base"]))
    for key, value in (case.get("facts") or {}).items():
        if key == "files":
            f["files"].update(value)
        else:
            f[key] = value
    return f


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plan(case, params):
    steps = operations.plan(params, {"edge1": case_facts(params, case)})
    got = [(s.operation, "run" if s.command else "blocked") for s in steps]
    assert got == [(op, kind) for op, kind, _ in case["steps"]]
    config_id = render.render(params).config_id
    for s, (_, kind, text) in zip(steps, case["steps"]):
        text = text.replace("CONFIG_ID", config_id)
        assert text in (s.command or s.blocked) or text in s.change, f"{s.operation}: {text!r} not in {s.command or s.blocked!r}"
        assert s.host == "edge1"


def test_a_second_plan_after_the_first_is_applied_is_empty(params):
    """What the fresh plan writes is exactly what the converged facts hold: applying converges."""
    fresh = case_facts(params, CASES[0])
    step = next(s for s in operations.plan(params, {"edge1": fresh}) if s.operation == "edge configuration")
    for path, content in render.render(params).files.items():
        assert path in step.diff and content.splitlines()[0] in step.diff
    assert operations.plan(params, {"edge1": case_facts(params, CASES[1])}) == []


def _sandboxed(command: str, etc: str) -> str:
    return command.replace("/etc/nginx", etc)


@pytest.mark.parametrize("valid", [True, False], ids=["accepted", "refused"])
def test_the_transaction_keeps_or_restores_the_files(tmp_path, params, valid):
    """The step's own shell, with /etc/nginx moved into a temporary folder and `nginx -t` replaced by a verdict."""
    etc = tmp_path / "nginx"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "modules-enabled").mkdir()
    (etc / "sites-enabled").mkdir()
    (etc / "conf.d" / "runbooklib-edge.conf").write_text("old http\n")
    (etc / "sites-enabled" / "default").symlink_to("../sites-available/default")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nginx").write_text("#!/bin/sh\n" + ("exit 0\n" if valid else "echo 'nginx: [emerg] unknown directive \"x\"' >&2; exit 1\n"))
    (fake / "nginx").chmod(0o755)
    writes = render.render(params).files
    command = _sandboxed(operations.transaction(params, writes, [render.DEFAULT_SITE]), str(etc))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env={"PATH": f"{fake}:/usr/bin:/bin"})
    http = etc / "conf.d" / "runbooklib-edge.conf"
    stream = etc / "modules-enabled" / "90-runbooklib-edge-stream.conf"
    if valid:
        assert done.returncode == 0, done.stderr
        assert http.read_text() == writes[render.HTTP_FILE] and stream.read_text() == writes[render.STREAM_FILE]
        assert not (etc / "sites-enabled" / "default").is_symlink()
        kept = etc / "runbooklib-previous"
        assert (kept / "etc__nginx__conf.d__runbooklib-edge.conf").read_text() == "old http\n"
        assert (kept / "etc__nginx__modules-enabled__90-runbooklib-edge-stream.conf.absent").exists()
        assert (kept / "etc__nginx__sites-enabled__default").is_symlink()
    else:
        assert done.returncode == 1
        assert "nginx -t refused the new configuration" in done.stderr and "unknown directive" in done.stderr
        assert http.read_text() == "old http\n" and not stream.exists()
        assert (etc / "sites-enabled" / "default").is_symlink()
        assert not (etc / "runbooklib-previous").exists() and not (etc / "runbooklib-previous.new").exists()


def test_a_start_or_reload_without_a_file_change_puts_no_older_files_back(params):
    """The kept files are an older change's when this run replaced none: a failed check must not restore them."""
    stopped = case_facts(params, {"base": "converged", "facts": {"service": {"active": "inactive", "enabled": "enabled"},
                                                                 "running_config": ""}})
    start = next(s for s in operations.plan(params, {"edge1": stopped}) if s.operation == "service running")
    assert "runbooklib-previous" not in start.command and "nothing was put back" in start.command
    edited = case_facts(params, {"base": "converged", "facts": {"files": {"/etc/nginx/conf.d/runbooklib-edge.conf": "# by hand\n"}}})
    reload = next(s for s in operations.plan(params, {"edge1": edited}) if s.operation == "service running")
    assert "runbooklib-previous" in reload.command and "the previous configuration is back" in reload.command
