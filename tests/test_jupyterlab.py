"""An engineer in JupyterLab: the baseline runbook driven in a real browser, applied by a click.

Real JupyterLab on loopback, Debian's Chromium driven by Playwright, the lab's real VMs. The
headless tests prove `--apply`; this one proves the other half of the promise: opened by hand,
the same notebook plans, waits, and changes the hosts only when *Apply* is clicked.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, require_lab, runbook, running_lab
from runbooklib.params import load_params
from runbooklib.phase.checks import failures
from runbooklib.ssh import Fleet
from runbooklib.vm import checks
from runbooklib.vm import facts as vm_facts

CHROMIUM = "/usr/bin/chromium"
require_lab(CHROMIUM)
playwright = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path / "lab", "rbui", "10.84.0.0/24") as lab:
        yield lab


@pytest.fixture
def jupyter(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, **{k: str(tmp_path / k.lower()) for k in
                              ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")})
    env.pop("RUNBOOK_JOURNAL", None)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                             f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
                             "--ServerApp.open_browser=False", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "jupyter.log", "wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyter.log").read_text()[-2000:])
    yield f"http://127.0.0.1:{port}", token, work
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def failing_checks(params) -> set:
    with Fleet.from_params(params, progress=None) as fleet:
        gathered = vm_facts.gather(params, fleet)
    return {(c.host, c.rule) for c in failures(checks.evaluate(params, gathered))}


def test_engineer_plans_then_applies_with_a_click(lab, jupyter, tmp_path):
    url, token, work = jupyter
    params = load_params(lab.params_file)
    before = failing_checks(params)
    assert before, "a fresh lab has something for the baseline to fix"
    nb = nbformat.read(ROOT / "notebooks" / "02-vm-baseline.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace('"../params/lab.yaml"', repr(str(lab.params_file)))
    nbformat.write(nb, work / "02-vm-baseline.ipynb")

    # the notebook's session and kernel exist before the page opens: a fresh JupyterLab otherwise may
    # ask which kernel to start, or start two and wire the page to the one that failed
    request = urllib.request.Request(
        f"{url}/api/sessions", method="POST", headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        data=json.dumps({"path": "02-vm-baseline.ipynb", "name": "02-vm-baseline.ipynb", "type": "notebook",
                         "kernel": {"name": "python3"}}).encode())
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 201, answer.status

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/02-vm-baseline.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
            apply_button = page.locator(".jp-OutputArea-output button.jupyter-button", has_text="Apply")
            idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')

            def run_all() -> None:
                kernel_dialog = page.locator(".jp-Dialog button.jp-mod-accept", has_text="Select")
                if kernel_dialog.count():  # JupyterLab sometimes asks which kernel to start: the notebook's own
                    kernel_dialog.first.click()
                page.keyboard.press("Escape")
                page.click("text=Run", timeout=10_000)
                page.click("text=Run All Cells", timeout=10_000)

            # A fresh JupyterLab can switch the notebook to a second kernel just after the first cells
            # ran, dropping the queued ones: the kernel then sits idle with no Apply button. Run All
            # again in that case (the cells above the confirmation only read and plan).
            runs, deadline = 0, time.monotonic() + 240
            while True:
                if runs == 0 or (idle.count() and not apply_button.count()):
                    if runs == 4:
                        pytest.fail("Run All never reached the confirmation; notebook text:\n"
                                    + page.inner_text(".jp-Notebook")[-3000:])
                    page.screenshot(path=str(tmp_path / f"run-all-{runs}.png"))
                    run_all()
                    runs += 1
                try:
                    apply_button.wait_for(timeout=20_000)
                    break
                except playwright.TimeoutError:
                    if time.monotonic() > deadline:
                        pytest.fail("the Apply button never appeared; notebook text:\n" + page.inner_text(".jp-Notebook")[-3000:])
            # Run All waits at the confirmation: nothing below it runs, nothing is changed
            time.sleep(3)
            outputs = page.locator(".jp-OutputArea-output")
            assert outputs.filter(has_text="Nothing applied").count() == 0
            assert outputs.filter(has_text=re.compile("VERDICT: ")).count() == 0  # not the recap's verdict column
            assert page.locator('.jp-Notebook-ExecutionIndicator[data-status="busy"]').count() == 1
            assert failing_checks(params) == before, "the plan alone changed a host"
            assert apply_button.inner_text().strip().endswith(f"to {params.environment.name}")
            page.screenshot(path=str(tmp_path / "before-click.png"))
            apply_button.click()
            try:
                page.wait_for_selector(".jp-OutputArea-output >> text=Applied.", timeout=120_000)
            except playwright.TimeoutError:
                page.screenshot(path=str(tmp_path / "no-apply.png"), full_page=True)
                pytest.fail("the click did not apply; notebook text:\n" + page.inner_text(".jp-Notebook")[-4000:])
            # the cells below ran after the click and show the real outcome
            page.wait_for_selector(".jp-OutputArea-output >> text=VERDICT: applied", timeout=120_000)
            assert outputs.filter(has_text="Nothing applied").count() == 0
            page.wait_for_selector(".jp-OutputArea-output >> text=Archived as run interactive-", timeout=60_000)
            page.screenshot(path=str(tmp_path / "after-click.png"), full_page=False)
        finally:
            browser.close()
    after = failing_checks(params)
    assert after == set(), f"still failing after the click: {after}"
    # the click's changes are a record like any headless run's: listed, counted, in the chain
    listed = json.loads(runbook("runs", "--json").stdout)
    (row,) = [r for r in listed if r["verdict"] == "applied"]
    # a Run All repeated because JupyterLab switched kernels leaves the run it replaced, with nothing applied
    assert all(r["changes"] == 0 and r["status"] == "interrupted" for r in listed if r is not row)
    assert row["interactive"] == 1 and row["mode"] == "apply" and row["verdict"] == "applied"
    assert row["changes"] > 0 and row["notebook"] == "02-vm-baseline"
    assert runbook("verify").returncode == 0
    if os.environ.get("RB_SCREENSHOT_DIR"):  # to look at what the engineer saw
        shutil.copy(tmp_path / "after-click.png", Path(os.environ["RB_SCREENSHOT_DIR"]) / "after-click.png")
