"""`runbook suite`: the order the phases declare, selection, and (on a small lab) a stop and a resume.

The lab scenario (four runs, about a minute on an idle machine): w1 is stopped, the suite's baseline ends incomplete and the suite stops
there naming the phase and why; after `lab start w1` the same command resumes at the baseline in the same
suite, applies only what w1 still lacks, and completes. The report site of that archive is then opened
in a real browser (tests/test_report.py does the same on an archive of its own).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require_lab, runbook, running_lab
from runbooklib.phase import Phase, SuiteEntry
from runbooklib.suite import SuiteError, ordered, select, steps


def test_phases_are_ordered_by_what_they_declare_not_by_a_list():
    a = Phase("a", "A", after=("c",), suite=(SuiteEntry("10-a"),))
    b = Phase("b", "B", suite=(SuiteEntry("20-b"),))
    c = Phase("c", "C", after=("b",), suite=(SuiteEntry("30-c"),))
    assert [p.name for p in ordered([a, b, c])] == ["b", "c", "a"]
    with pytest.raises(SuiteError, match="cycle"):
        ordered([Phase("x", "X", after=("y",)), Phase("y", "Y", after=("x",))])
    with pytest.raises(SuiteError, match="not a registered phase"):
        ordered([Phase("x", "X", after=("nope",))])


def test_the_registered_suite_for_the_lab(lab_params):
    from runbooklib.params import load_params

    params = load_params(lab_params)
    all_steps = steps(params)
    names = [s.name for s in all_steps]
    # the preflight twice around the baseline, the cluster before what runs on it, the fold-in after the edge,
    # the residency report last
    assert names.index("01-vm-preflight") < names.index("02-vm-baseline") < names.index("01-vm-preflight-after-baseline")
    assert names.index("03-kubernetes-cluster") < names.index("04-registry-access")
    assert names.index("09-edge-load-balancing") < names.index("10-capacity-fold-in")
    assert names[-1] == "14-data-residency"
    skipped = {s.name: s.skip for s in all_steps if s.skip}
    assert skipped == {"08-session-cache": "the parameter file has no cache section"}
    for s in all_steps:  # every step is a notebook of the project
        assert (Path(__file__).parents[1] / "notebooks" / f"{s.entry.runbook}.ipynb").is_file(), s.name
    assert [s.name for s in select(all_steps, only=["vm"])] == ["01-vm-preflight", "02-vm-baseline", "01-vm-preflight-after-baseline"]
    assert [s.name for s in select(all_steps, start="foldin")][0] == "02-vm-baseline-fold-in"
    with pytest.raises(SuiteError, match="--only nope: no such phase or step"):
        select(all_steps, only=["nope"])


def test_suite_list_and_bad_input(lab_params):
    r = runbook("suite", "--params", str(lab_params), "--list")
    assert r.returncode == 0, r.stderr
    assert "vm/01-vm-preflight-after-baseline" in r.stdout and "needs 02-vm-baseline" in r.stdout
    r = runbook("suite", "--params", str(lab_params), "--from", "nowhere")
    assert r.returncode == 2 and "--from nowhere: no such phase or step" in r.stderr


# -- on the lab -------------------------------------------------------------------------------------

def _manifests(archive: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in archive.rglob("*.manifest.json")), key=lambda m: m["seq"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_lab()
    with running_lab(tmp_path_factory.mktemp("suitelab"), "rbsui", "10.104.0.0/24", profile="small") as lab:
        yield lab


def test_a_stopped_vm_stops_the_suite_and_it_resumes_after_lab_start(lab, archive_root, tmp_path):
    params = str(lab.params_file)
    # a step that needs another's result checks the archive first: nothing ran yet, so 04 is refused
    r = runbook("suite", "--params", params, "--apply", "--only", "registry")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "04-registry-access uses the result of 03-kubernetes-cluster" in r.stdout
    assert not list(archive_root.rglob("*.manifest.json"))  # refused before any run

    lab.stop("w1")
    try:
        first = runbook("suite", "--params", params, "--apply", "--only", "vm", timeout=600)
    finally:
        lab.start("w1")
    assert first.returncode == 4, first.stdout + first.stderr[-3000:]
    assert "stopped at phase vm, step 02-vm-baseline" in first.stdout and "incomplete" in first.stdout
    runs = _manifests(archive_root)
    suite_id = runs[0]["suite"]["id"]
    assert [m["suite"]["step"] for m in runs] == ["01-vm-preflight", "02-vm-baseline"]
    assert {m["suite"]["id"] for m in runs} == {suite_id}
    first_changes = {(c["host"], c["operation"], c["change"]) for c in runs[1]["changes"]}
    assert first_changes and "w1" not in {h for h, _, _ in first_changes}

    second = runbook("suite", "--params", params, "--apply", "--only", "vm", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert f"suite {suite_id}: suite {suite_id} stopped at 02-vm-baseline" in second.stdout
    assert "vm/01-vm-preflight: done before in this suite" in second.stdout
    runs = _manifests(archive_root)
    assert [m["suite"]["step"] for m in runs[2:]] == ["02-vm-baseline", "01-vm-preflight-after-baseline"]
    assert {m["suite"]["id"] for m in runs} == {suite_id}
    resumed = runs[2]
    again = {(c["host"], c["operation"], c["change"]) for c in resumed["changes"]}
    assert again and {h for h, _, _ in again} == {"w1"}, again  # only what w1 lacked: nothing applied twice
    assert not again & first_changes
    assert (runs[3].get("verdict") or {}).get("verdict") == "ready"

    # the browsable record of all this, in a real browser
    from test_report import check_site_in_browser

    site = tmp_path / "site"
    r = runbook("report", "--out", str(site))
    assert r.returncode == 0, r.stdout + r.stderr
    check_site_in_browser(site, suite_id=suite_id, failing_step="02-vm-baseline", host="w1", env=runs[0]["environment"]["name"],
                          host_changes=len(again) + sum(h == "w1" for h, _, _ in first_changes))
