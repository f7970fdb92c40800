"""`runbook report`: the archive as a static site, opened from disk in a real headless browser.

The archive here is committed through the Archive as the runner commits records (fast, no kernel); the site of
real runs, a suite stopped by a stopped VM and resumed on the lab, is opened the same way in tests/test_suite.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import runbook

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # as tests/test_jupyterlab.py launches it


def check_site_in_browser(site: Path, suite_id: str, failing_step: str, host: str, env: str, host_changes: int) -> None:
    """Pages load, every link resolves, the suite's failing run is marked, the host's history lists its changes."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (`make setup`)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            seen: set[Path] = set()
            todo = [site / "index.html"]
            pages = 0
            while todo and pages < 80:  # every page reachable from the index (bounded), each loaded
                path = todo.pop(0).resolve()
                if path in seen:
                    continue
                seen.add(path)
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                assert page.title(), path
                pages += 1
                for href in page.eval_on_selector_all("a[href]", "els => els.map(e => new URL(e.getAttribute('href'), document.baseURI).href)"):
                    target = Path(unquote(urlsplit(href).path))
                    assert target.is_file(), f"{path.name}: link {href} resolves to nothing"
                    if target.suffix == ".html" and "/notebook/" not in str(target):
                        todo.append(target)
            assert pages >= 6
            page.goto((site / "index.html").as_uri())
            assert "verified" in page.inner_text("#chain")
            page.click(f"text={suite_id}")
            row = page.locator(f"#steps tr[data-step='{failing_step}']").first
            assert "failing" in (row.get_attribute("class") or ""), row.inner_html()
            assert row.locator(".badge").inner_text() == "failing"
            assert page.locator("#timeline rect.failing").count() >= 1
            assert page.locator("#steps tr.failing").count() == 1  # only the failed attempt; its retry ended well
            row.locator("a").first.click()
            page.wait_for_selector("#notebook")
            page.click("#notebook")
            page.wait_for_load_state("load")
            assert failing_step.split("-")[0] in page.title() or page.title()
            page.goto((site / "hosts.html").as_uri())
            page.fill("#q", host)
            visible = page.locator("#hosts tbody tr:visible")
            assert visible.count() >= 1
            assert all(t.lower().startswith(host) for t in visible.locator("td:first-child").all_inner_texts())
            page.locator("#hosts tbody tr:visible a", has_text=re.compile(f"^{host}$")).first.click()
            page.wait_for_selector("#changes")
            assert page.locator("#changes tr.change").count() == host_changes
            assert f"Host {host} on {env}" in page.title()
        finally:
            browser.close()


def _record(archive, step: str, index: int, status: str, changes: list[tuple[str, str]], suite_id: str, minute: int,
            failure: dict | None = None) -> dict:
    """One record committed through the Archive as the runner commits it (the runner itself is tested elsewhere)."""
    started = f"2026-01-02T10:{minute:02d}:00.000+00:00"
    ended = f"2026-01-02T10:{minute:02d}:40.000+00:00"
    run_id = f"20260102T10{minute:02d}00Z-{index:02d}{minute:04d}"
    notebook = "01-vm-preflight" if step.startswith("01-") else step
    manifest = {
        "record": "runbook run", "run_id": run_id, "interactive": False, "notebook": notebook, "notebook_source": f"notebooks/{notebook}.ipynb",
        "environment": {"name": "lab", "kind": "lab", "data_country": "RU"}, "simulated": True, "mode": "apply",
        "params": {"path": "params/lab.yaml", "sha256": "ab" * 32, "content_redacted": "database:\n  root_password: '********'\n"},
        "operator": "tester@ci", "reason": "report test", "change": "CHG-1", "git": {"commit": "0" * 40, "dirty": False},
        "started_at": started, "ended_at": ended, "duration_s": 40.0, "status": status, "failure": failure,
        "verdict": None if failure else {"verdict": "applied" if changes else "ready", "problems": []},
        "changes": [{"host": h, "operation": "demo file", "change": c, "at": started} for h, c in changes],
        "plans": [{"title": "Demo plan", "count": len(changes), "digest": "cd" * 32,
                   "steps": [{"host": h, "operation": "demo file", "change": c} for h, c in changes]}] if changes else [],
        "suite": {"id": suite_id, "phase": "vm" if step.startswith(("01", "02")) else "overview", "step": step, "index": index,
                  "steps": 4, "mode": "apply", "applies": True, "allow_not_ready": False, "params_sha256": "ab" * 32},
    }
    base = archive.record_base("lab", "2026-01-02", run_id, notebook)
    html = f"<html><head><title>{run_id}</title></head><body><h1>{notebook}</h1></body></html>".encode()
    archive.commit(manifest, {"notebook": (base.with_name(base.name + ".ipynb"), b"{}"),
                              "html": (base.with_name(base.name + ".html"), html)})
    return manifest


def test_report_of_a_suite_that_failed_then_resumed(archive_root, tmp_path):
    from runbooklib.archive import Archive

    archive = Archive(archive_root)
    sid = "suite-20260102T100000Z-abcdef"
    boom = {"cell": "[5/9] Apply", "ename": "SSHError", "evalue": "w1: connection refused (made to fail for the test)"}
    _record(archive, "00-environment-overview", 1, "succeeded", [], sid, 0)
    _record(archive, "01-vm-preflight", 2, "succeeded", [], sid, 1)
    failed = _record(archive, "02-vm-baseline", 3, "failed", [("w2", "write /etc/demo-a")], sid, 2, failure=boom)
    _record(archive, "02-vm-baseline", 3, "succeeded", [("w1", "write /etc/demo-a"), ("w1", "write /etc/demo-b")], sid, 3)
    _record(archive, "01-vm-preflight-after-baseline", 4, "succeeded", [], sid, 4)

    site = tmp_path / "site"
    r = runbook("report", "--out", str(site))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 run(s), 1 suite(s), 2 host(s), 3 change(s)" in r.stdout
    run_page = (site / "run" / f"{failed['run_id']}.html").read_text()
    assert "made to fail for the test" in run_page and "badge" in run_page
    check_site_in_browser(site, suite_id=sid, failing_step="02-vm-baseline", host="w1", env="lab", host_changes=2)

    # a second report rewrites only what changed; an edited record shows on the index and on its run page
    again = runbook("report", "--out", str(site))
    assert "0 file(s) written" in again.stdout, again.stdout
    path = next(p for p in archive_root.rglob("*.manifest.json") if json.loads(p.read_text())["run_id"] == failed["run_id"])
    path.write_text(path.read_text().replace('"failed"', '"succeeded"', 1))
    broken = runbook("report", "--out", str(site))
    assert broken.returncode == 1 and "NOT verified" in broken.stdout
    assert "was edited" in (site / "run" / f"{failed['run_id']}.html").read_text()
    assert "NOT verified" in (site / "index.html").read_text()
