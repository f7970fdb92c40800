"""Runs driven by hand in JupyterLab are records too.

``open_run`` in a live kernel (no runner) registers the run in the archive: a journal folder under
``<archive>/.journal/<run-id>/`` held by a lock while the kernel lives, into which every applied
change is written the moment it happens. So a closed browser loses nothing, and a kernel that dies
(killed, out of memory) leaves a journal the next ``runbook`` command archives as ``killed``.

``run.finish()``, or the kernel's exit, archives the run as the runner archives a headless one:
same manifest fields, same scrubbing, same hash chain, marked ``interactive``. Its notebook is the
kernel's own transcript: every cell the kernel executed, in the order it executed them, with the
outputs it sent (stream, display, result, error). That is what happened, including cells run
twice or out of order; a notebook file on disk is only what was last saved. When no transcript can
be taken (no IPython kernel), the record holds the journal alone and says so.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import os
import sys
import threading
from pathlib import Path
from typing import Any

import nbformat

from .notebook import JOURNAL_ENV

# iopub messages that make up a cell's record
_OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error", "clear_output", "update_display_data")


class Transcript:
    """What the kernel executed and showed, captured from its own iopub messages."""

    LIMIT = 20_000  # messages kept; a runaway loop printing forever must not eat the kernel's memory

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict]] = []  # (parent msg id, msg type, content)
        self.dropped = 0
        self._lock = threading.Lock()
        self._session = None
        self._original = None

    def install(self) -> bool:
        """Start listening on the current kernel's session; False outside an IPython kernel."""
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
        kernel = getattr(shell, "kernel", None)
        session = getattr(kernel, "session", None)
        if session is None:
            return False
        original = session.send

        def send(stream, msg_or_type, content=None, parent=None, *args, **kwargs):
            msg_type = msg_or_type if isinstance(msg_or_type, str) else (msg_or_type or {}).get("header", {}).get("msg_type")
            if msg_type in _OUTPUT_TYPES or msg_type == "execute_input":
                body = content if content is not None else (msg_or_type.get("content") if isinstance(msg_or_type, dict) else None)
                if parent is None and isinstance(msg_or_type, dict):  # a whole message (how streams are sent)
                    parent_id = (msg_or_type.get("parent_header") or {}).get("msg_id", "")
                else:
                    parent_id = ((parent or {}).get("header") or {}).get("msg_id", "")
                with self._lock:
                    if len(self.messages) < self.LIMIT:
                        self.messages.append((parent_id, msg_type, copy.deepcopy(body or {})))
                    else:
                        self.dropped += 1
            return original(stream, msg_or_type, content, parent, *args, **kwargs)

        session.send = send
        self._session, self._original = session, original
        return True

    def uninstall(self) -> None:
        if self._session is not None:
            self._session.send = self._original
            self._session = None

    def notebook(self, kernelspec: dict | None = None) -> nbformat.NotebookNode:
        """The executed cells as a notebook, in execution order, each with its outputs."""
        with self._lock:
            messages = list(self.messages)
        cells: dict[str, Any] = {}
        order: list[str] = []
        for parent_id, msg_type, content in messages:
            if msg_type == "execute_input":
                cell = nbformat.v4.new_code_cell(content.get("code", ""), execution_count=content.get("execution_count"))
                cells[parent_id] = cell
                order.append(parent_id)
                continue
            cell = cells.get(parent_id)
            if cell is None:
                continue  # output of a widget callback or a background thread: in the journal if it mattered
            if msg_type == "clear_output":
                cell.outputs = []
            elif msg_type == "stream":
                prev = cell.outputs[-1] if cell.outputs else None
                if prev is not None and prev.get("output_type") == "stream" and prev.get("name") == content.get("name"):
                    prev["text"] += content.get("text", "")
                else:
                    cell.outputs.append(nbformat.v4.new_output("stream", name=content.get("name", "stdout"),
                                                               text=content.get("text", "")))
            elif msg_type in ("display_data", "update_display_data"):
                cell.outputs.append(nbformat.v4.new_output("display_data", data=content.get("data", {}),
                                                           metadata=content.get("metadata", {})))
            elif msg_type == "execute_result":
                cell.outputs.append(nbformat.v4.new_output("execute_result", data=content.get("data", {}),
                                                           metadata=content.get("metadata", {}),
                                                           execution_count=content.get("execution_count")))
            elif msg_type == "error":
                cell.outputs.append(nbformat.v4.new_output("error", ename=content.get("ename", ""),
                                                           evalue=content.get("evalue", ""),
                                                           traceback=content.get("traceback", [])))
        nb = nbformat.v4.new_notebook(cells=[cells[i] for i in order])
        nb.metadata["kernelspec"] = kernelspec or {"name": "python3", "display_name": "Python 3", "language": "python"}
        if self.dropped:
            nb.cells.append(nbformat.v4.new_markdown_cell(
                f"*{self.dropped} later output message(s) were not kept (the transcript holds {self.LIMIT}).*"))
        return nb


def notebook_path_from_server() -> str | None:
    """The path of the notebook this kernel serves, asked of the Jupyter server that started it, or None."""
    try:
        import json
        import re
        import urllib.request

        from ipykernel import get_connection_file
        from jupyter_server import serverapp

        kernel_id = re.search(r"kernel-(.+)\.json$", get_connection_file()).group(1)
        for server in serverapp.list_running_servers():
            root = server.get("root_dir") or server.get("notebook_dir") or ""
            url = server["url"].rstrip("/") + "/api/sessions"
            if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
                continue  # only a server on this machine (loopback)
            request = urllib.request.Request(url, headers={"Authorization": f"token {server.get('token', '')}"})
            with urllib.request.urlopen(request, timeout=3) as answer:
                for session in json.load(answer):
                    if session.get("kernel", {}).get("id") == kernel_id:
                        path = session.get("path") or session.get("notebook", {}).get("path")
                        return str(Path(root) / path) if path and root else path
    except Exception:  # no server, no session API, no network: the record says "interactive" instead
        return None
    return None


class InteractiveRecord:
    """The archive side of a run driven by hand: its journal while it lives, its record when it ends."""

    def __init__(self, run) -> None:
        from .archive import open_archive
        from .references import require_references
        from .runner import _journal_info, change_id, operator, reason, recover_killed_runs, secret_redactor

        self.run = run
        require_references(run.params)  # as a headless run: no run starts with a reference that cannot be used
        self.archive = open_archive()
        recover_killed_runs(self.archive, None)
        self.archive.check_ready()
        self.archive.check_residency(run.params.environment, sys.stderr)
        self.started = dt.datetime.now(dt.timezone.utc)
        self.operator = operator()
        self.reason = reason()
        self.change = change_id()
        path = notebook_path_from_server()
        self.notebook = Path(path) if path else Path("interactive.ipynb")
        self.redactor, _ = secret_redactor(run.params)
        info = _journal_info(self.notebook, run.params, run.run_id, False, self.operator, self.started, self.redactor)
        info["interactive"] = True
        info["change"] = self.change
        self._journal_cm = self.archive.journal(run.run_id, info)
        self.folder = self._journal_cm.__enter__()
        self.journal = self.folder / "journal.jsonl"
        self.transcript = Transcript()
        self.captured = self.transcript.install()
        self.result = None
        atexit.register(self.close, "interrupted", "the kernel shut down before run.finish()")

    def apply_lock(self):
        """The run lock a headless run of the same runbook on the same environment takes, held for an apply."""
        holder = {"operator": self.operator, "pid": os.getpid(), "run_id": self.run.run_id, "interactive": True,
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "archive": self.archive.location}
        return self.archive.run_lock(self.run.params.environment.name, self.notebook.stem, holder)

    def approvals(self) -> dict | None:
        """The approved plans an apply from this kernel is checked against, read and verified now."""
        from .runner import approvals_for, signing_key

        return approvals_for(self.archive, self.run.params, self.notebook, self.run.run_id, signing_key())

    def close(self, status: str = "succeeded", why: str = "") -> Any:
        """Archive the run once (later calls return the first record)."""
        if self.result is not None:
            return self.result
        from .runner import _archive, _HtmlRenderer, _Outcome, _read_journal

        self.transcript.uninstall()
        events = _read_journal(self.journal)
        applied = any(e.get("event") == "change" for e in events)
        nb = self.transcript.notebook() if self.captured else nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell("*No transcript: this run was not driven from a Jupyter kernel. Its changes "
                                          "and verdict are in the manifest.*")])
        failure = ({"ename": "KernelExit" if status == "interrupted" else "ApplyFailed", "evalue": why}
                   if status != "succeeded" else None)
        outcome = _Outcome(nb, status, failure, "python3")
        ended = dt.datetime.now(dt.timezone.utc)
        self.redactor.merge(self.run.redactor)
        try:
            self.result = _archive(self.archive, self.notebook, self.run.params, self.run.run_id, applied, self.operator,
                                   self.started, ended, outcome, events, self.redactor, _HtmlRenderer(background=False), None,
                                   reason=self.reason, interactive=True, change=self.change)
        except BaseException as e:
            # the journal stays; the next command archives what it holds, saying why (not as "killed")
            (self.folder / "not-archived").write_text(f"{type(e).__name__}: {self.redactor.scrub(str(e))}\n")
            raise
        finally:
            self._journal_cm.__exit__(None, None, None)
            self.run._journal = None  # nothing more goes to a journal that is archived (or kept for recovery)
        self.archive.close_journal(self.run.run_id)
        return self.result


_current: InteractiveRecord | None = None  # the run this kernel has open


def start(run) -> InteractiveRecord | None:
    """Register an interactive run (a live kernel, no runner); None where a runner drives the kernel."""
    global _current
    if os.environ.get(JOURNAL_ENV):
        return None  # a runner drives this kernel and archives the run itself
    if _current is not None and _current.result is None:
        # the open_run cell ran again: the run it replaces ends here, with its record
        _current.close("interrupted", "a new run was opened in the same kernel before run.finish()")
    record = InteractiveRecord(run)
    run._journal = str(record.journal)
    _current = record
    return record


def finished_line(result) -> str:
    return (f"Archived as run {result.run_id} ({len(result.manifest.get('changes') or [])} change(s)); "
            f"record {result.notebook_path}; `runbook show {result.run_id}`")


__all__ = ["InteractiveRecord", "Transcript", "finished_line", "start"]
