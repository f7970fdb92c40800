"""storage.gluster validation, table-driven from tests/data/storage/params_cases.yaml, and the runbook refusing bad
parameters before it touches any host."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import lab_data, runbook, set_path, write_params
from runbooklib.errors import ParamsError
from runbooklib.params import load_params
from runbooklib.storage.settings import mount_hosts

CASES = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "storage" / "params_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_validation_case(case, tmp_path):
    data = lab_data()
    for path, value in (case.get("set") or {}).items():
        set_path(data, path, value)
    file = write_params(tmp_path, data)
    if not case["expect"]:
        assert load_params(file).storage.gluster.volume == "cdn"
        return
    with pytest.raises(ParamsError) as info:
        load_params(file)
    found = {p.path: p.message for p in info.value.problems}
    for path, fragment in case["expect"]:
        assert path in found, f"no problem reported at {path}; got {found}"
        assert fragment in found[path], f"{path}: {found[path]!r} lacks {fragment!r}"
    assert len(info.value.problems) == len(case["expect"]), f"unexpected extra problems: {found}"


def test_the_mounts_default_to_the_brick_hosts_then_every_worker(tmp_path):
    p = load_params(write_params(tmp_path, lab_data()))
    assert mount_hosts(p) == ["edge1", "edge2", "w1", "w2", "w3", "w4", "w5"]
    data = lab_data()
    set_path(data, "storage.gluster.mount_on", ["w2", "edge1", "w2"])
    assert mount_hosts(load_params(write_params(tmp_path, data, "own.yaml"))) == ["w2", "edge1"]


def test_06_refuses_bad_parameters_before_touching_any_host(tmp_path, archive_root):
    data = lab_data()
    set_path(data, "storage.gluster.arbiter", "edge1")
    set_path(data, "storage.gluster.mount_path", "cdn-data")
    bad = write_params(tmp_path, data)
    done = runbook("run", "notebooks/06-cdn-storage.ipynb", "--params", str(bad), "--apply")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "storage.gluster.arbiter" in done.stderr and "storage.gluster.mount_path" in done.stderr
    assert not archive_root.exists(), "nothing may be archived (or locked) for invalid parameters"
