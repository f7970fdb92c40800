"""The whole migration suite on a fresh seed lab, as `make demo` runs it (a `slow` drill: about 10 minutes).

    RUNBOOK_SLOW=1 .venv/bin/python -m pytest tests/test_suite_full.py

Every step of the declared order runs with --apply and ends well under one suite id; the fold-in edit then
runs from the fold-in phase on; a rerun of the first command starts a new suite whose applying steps plan
nothing (the operations are idempotent); the residency report passes; the report site is written.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, require_lab, runbook, running_lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_lab()
    with running_lab(tmp_path_factory.mktemp("suitefull"), "rbful", "10.106.0.0/24", profile="seed") as lab:
        yield lab


def test_the_whole_suite_on_the_lab_from_scratch(lab, archive_root, tmp_path):
    from runbooklib.params import load_params
    from runbooklib.suite import steps

    params = str(lab.params_file)
    expected = [s.name for s in steps(load_params(params)) if not s.skip]
    r = runbook("suite", "--params", params, "--apply", timeout=3600)
    assert r.returncode == 0, r.stdout + r.stderr[-5000:]
    runs = [json.loads(p.read_text()) for p in sorted(archive_root.rglob("*.manifest.json"))]
    runs.sort(key=lambda m: m["seq"])
    assert [m["suite"]["step"] for m in runs] == expected
    assert len({m["suite"]["id"] for m in runs}) == 1 and all(m["status"] == "succeeded" for m in runs)
    assert runs[-1]["verdict"]["verdict"] == "compliant"
    assert sum(len(m["changes"]) for m in runs) > 50

    # the day's edit (params/lab-fold-in.yaml: the ELK VMs become workers, w5 leaves), from the fold-in phase on
    fold = lab.params_file.with_name("fold-in.yaml")  # beside the lab's own file: its references resolve the same
    fold.write_text(yaml.safe_dump(lab.profile_data(str(ROOT / "params" / "lab-fold-in.yaml")), sort_keys=False))
    f = runbook("suite", "--params", str(fold), "--apply", "--from", "foldin", timeout=3600)
    assert f.returncode == 0, f.stdout + f.stderr[-5000:]
    folded = [json.loads(p.read_text()) for p in sorted(archive_root.rglob("*.manifest.json"))]
    folded = sorted(folded, key=lambda m: m["seq"])[len(runs):]
    assert [m["suite"]["step"] for m in folded] == ["02-vm-baseline-fold-in", "10-capacity-fold-in", "etcd-snapshot", "14-data-residency"]
    assert any(c["host"].startswith("elk") for c in folded[0]["changes"])

    site = tmp_path / "site"
    rep = runbook("report", "--out", str(site), timeout=600)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert (site / "suite" / f"{runs[0]['suite']['id']}.html").is_file()
