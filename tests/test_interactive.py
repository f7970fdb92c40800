"""Runs driven by hand are records too: a real IPython kernel, driven as JupyterLab drives it.

Each test starts a kernel with jupyter_client (no runner, so the kernel is "interactive"), executes
cells in it, and reads the archive with the real command line.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel

from conftest import runbook


@pytest.fixture
def kernel(tmp_path, archive_root):
    env = dict(os.environ, RUNBOOK_ARCHIVE=str(archive_root), IPYTHONDIR=str(tmp_path / "ipython"))
    env.pop("RUNBOOK_JOURNAL", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 60) -> list[dict]:
    """Run one cell; its iopub messages (outputs), raising on an error reply."""
    msg_id = kc.execute(code)
    outputs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        outputs.append(msg)
    reply = kc.get_shell_msg(timeout=timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return outputs


def text_of(outputs: list[dict]) -> str:
    return "".join(m["content"].get("text", "") or m["content"].get("data", {}).get("text/plain", "") for m in outputs)


OPEN = ("import runbooklib\n"
        "from runbooklib.phase.steps import Step\n"
        "run = runbooklib.open_run({params!r})")
CHANGE = "run.record(Step('edge1', 'motd', 'write /etc/motd', 'true'))"


def test_an_interactive_run_is_archived_with_its_transcript_and_changes(kernel, lab_params, archive_root):
    km, kc = kernel
    execute(kc, OPEN.format(params=str(lab_params)))
    execute(kc, "print('looking around')")
    execute(kc, "print('looking around')")  # run twice, as engineers do: the transcript keeps both
    execute(kc, CHANGE)
    done = text_of(execute(kc, "run.finish([], verdict='applied')"))
    assert "VERDICT: applied" in done and "Archived as run interactive-" in done
    listed = json.loads(runbook("--archive", str(archive_root), "runs", "--json").stdout)
    assert len(listed) == 1 and listed[0]["interactive"] == 1 and listed[0]["changes"] == 1
    assert listed[0]["verdict"] == "applied" and listed[0]["mode"] == "apply"
    m = json.loads(runbook("--archive", str(archive_root), "show", listed[0]["run_id"], "--json").stdout)
    assert m["interactive"] is True and m["status"] == "succeeded" and m["operator"]
    assert [(c["host"], c["operation"], c["change"]) for c in m["changes"]] == [("edge1", "motd", "write /etc/motd")]
    record = nbformat.read(archive_root / m["files"]["notebook"]["path"], as_version=4)
    code = [c.source for c in record.cells if c.cell_type == "code"]
    assert code.count("print('looking around')") == 2 and code[-1] == "run.finish([], verdict='applied')"
    printed = [o for c in record.cells if c.cell_type == "code" and c.source.startswith("print") for o in c.outputs]
    assert [o["text"] for o in printed] == ["looking around\n", "looking around\n"]
    assert record.cells[0].metadata.get("tags") == ["runbook-record-header"]
    assert runbook("--archive", str(archive_root), "verify").returncode == 0
    assert not list((archive_root / ".journal").glob("interactive-*"))


def test_a_kernel_killed_after_an_apply_leaves_its_changes_in_the_archive(kernel, lab_params, archive_root):
    km, kc = kernel
    execute(kc, OPEN.format(params=str(lab_params)))
    execute(kc, CHANGE)
    (folder,) = (archive_root / ".journal").glob("interactive-*")
    assert "write /etc/motd" in (folder / "journal.jsonl").read_text()  # journaled the moment it happened
    os.kill(km.provisioner.process.pid, signal.SIGKILL)  # the browser tab is still open; the kernel is gone
    deadline = time.monotonic() + 10
    while km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    listed = runbook("--archive", str(archive_root), "runs", "--json")
    assert "never finished; archived as killed with 1 journaled change(s)" in listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["status"] == "killed" and row["interactive"] == 1 and row["changes"] == 1 and row["mode"] == "apply"
    assert runbook("--archive", str(archive_root), "verify").returncode == 0
    assert not Path(folder).exists()


def test_nothing_is_applied_after_the_run_is_finished(kernel, lab_params, archive_root):
    km, kc = kernel
    execute(kc, OPEN.format(params=str(lab_params)))
    execute(kc, "run.finish([], verdict='done')")
    msg_id = kc.execute(CHANGE)
    reply = kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error" and "is finished and archived" in reply["content"]["evalue"]
    (row,) = json.loads(runbook("--archive", str(archive_root), "runs", "--json").stdout)
    assert row["changes"] == 0 and row["verdict"] == "done"


def test_opening_a_new_run_in_the_same_kernel_archives_the_one_it_replaces(kernel, lab_params, archive_root):
    km, kc = kernel
    execute(kc, OPEN.format(params=str(lab_params)))
    execute(kc, CHANGE)
    execute(kc, OPEN.format(params=str(lab_params)))  # the open_run cell, run again
    execute(kc, "run.finish([], verdict='done')")
    rows = json.loads(runbook("--archive", str(archive_root), "runs", "--json").stdout)
    assert sorted((r["status"], r["changes"]) for r in rows) == [("interrupted", 1), ("succeeded", 0)]
    assert len({r["run_id"] for r in rows}) == 2


def test_a_kernel_shut_down_without_finish_archives_its_run_on_the_way_out(kernel, lab_params, archive_root):
    """Closing the notebook (the kernel's normal exit) is the most common end of an interactive run."""
    km, kc = kernel
    execute(kc, OPEN.format(params=str(lab_params)))
    execute(kc, CHANGE)
    km.shutdown_kernel(now=False)  # a clean shutdown request, as JupyterLab sends when the notebook is closed
    (row,) = json.loads(runbook("--archive", str(archive_root), "runs", "--json").stdout)
    assert row["status"] == "interrupted" and row["interactive"] == 1 and row["changes"] == 1
    m = json.loads(runbook("--archive", str(archive_root), "show", row["run_id"], "--json").stdout)
    assert m["failure"]["evalue"] == "the kernel shut down before run.finish()"
    assert (archive_root / m["files"]["html"]["path"]).exists() and (archive_root / m["files"]["notebook"]["path"]).exists()
    assert runbook("--archive", str(archive_root), "verify").returncode == 0
