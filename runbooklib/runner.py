"""Run a notebook headless and archive it: the story of one run, top to bottom.

    validate parameters -> take the lock -> execute with papermill (in memory) -> read the journal
    -> scrub every secret -> render HTML -> write the manifest into the hash chain -> release

The executed notebook never touches the disk before it is scrubbed: papermill writes it to an
in-memory handler (``runbook-memory://``). Only three values are injected into the notebook: the
parameter file's path, the run id and the apply flag.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import secrets as _random
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

from . import __version__, safeyaml
from .archive import Archive, default_root
from .errors import ArchiveError, RunbookError
from .notebook import JOURNAL_ENV, utcnow
from .params import Params, load_params
from .references import require_references
from .secrets import Redactor

MEMORY_SCHEME = "runbook-memory://"


class _MemoryIO:
    """papermill I/O handler that keeps written notebooks in memory, keyed by path."""

    store: dict[str, str] = {}

    def read(self, path):
        raise RunbookError(f"{path}: the in-memory handler only receives notebooks")

    def write(self, buf, path):
        self.store[path] = buf

    def listdir(self, path):
        return []

    def pretty_path(self, path):
        return "(kept in memory until secrets are scrubbed)"


def _register_memory_io() -> None:
    from papermill.iorw import papermill_io

    if not any(scheme == MEMORY_SCHEME for scheme, _ in papermill_io._handlers):
        papermill_io.register(MEMORY_SCHEME, _MemoryIO())


@dataclass
class RunResult:
    run_id: str
    status: str
    manifest_path: Path
    notebook_path: Path
    html_path: Path
    manifest: dict

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{_random.token_hex(3)}"


def operator() -> str:
    return os.environ.get("RUNBOOK_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def git_state(where: Path) -> dict:
    """Commit and dirtiness of the checkout holding ``where`` (None outside git)."""
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def secret_redactor(params: Params) -> tuple[Redactor, list[str]]:
    """A redactor loaded with every secret the parameters reference that can be resolved here."""
    redactor = Redactor()
    unresolved = []
    literals = []
    for field, ref in params.secret_refs():
        try:
            redactor.add(ref.resolve(params.source_dir, field), field)
        except RunbookError:
            unresolved.append(field)
        if ref.is_literal:
            literals.append(field)
    # a lab literal written with YAML escapes or as a folded block: its written form is a needle too
    for field, written in safeyaml.source_spans(params.text, literals).items():
        redactor.add_form(written, field)
    return redactor, unresolved


class _StreamFilter(logging.Filter):
    """Scrubs secrets from papermill's log stream and trims its per-cell banners.

    Each write of a cell is one log record, so a value printed in two writes arrives in halves that
    no needle matches. The filter holds back the unfinished line of each stream until its newline
    comes (or the cell ends) and scrubs whole lines only.
    """

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor
        self._pending: dict[int, str] = {}  # by level: stdout is logged as INFO, stderr as WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(("Executing Cell", "Ending Cell", "Output Notebook", "Input Notebook")):
            held = self.drain()
            if not held:
                return False
            return self._emit(record, held)
        text = self._pending.pop(record.levelno, "") + text
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1  # progress bars redraw with \r
        if cut < len(text):
            self._pending[record.levelno] = text[cut:]
        if not cut:
            return False
        return self._emit(record, text[:cut])

    def drain(self) -> str:
        """What is still held back (the unfinished lines), joined; the hold is emptied."""
        held = "\n".join(v for v in self._pending.values() if v)
        self._pending.clear()
        return held

    def _emit(self, record: logging.LogRecord, text: str) -> bool:
        text = self.redactor.scrub(text.rstrip("\n"))
        record.msg = "\n".join("  | " + line for line in text.splitlines()) if text else "  |"
        record.args = ()
        return True


@contextlib.contextmanager
def _scrubbed_fds(redactor: Redactor, fds: tuple[int, ...] = (1, 2)):
    """Route this process's stdout and stderr, as file descriptors, through the redactor.

    The kernel inherits them: whatever it writes below ipykernel's capture (a C library, an
    ``os.write(2, ...)``, the kernel's own tracebacks) would otherwise reach the terminal, and
    whatever records it, unscrubbed. Lines (and progress-bar redraws) are scrubbed whole.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    relays = []
    for fd in fds:
        saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)

        def pump(read_end=read_end, saved=saved):
            pending = b""
            with os.fdopen(read_end, "rb", buffering=0) as src:
                while True:
                    chunk = src.read(65536)
                    if not chunk:
                        break
                    pending += chunk
                    cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1  # progress bars redraw with \r
                    if cut:
                        os.write(saved, redactor.scrub(pending[:cut].decode(errors="replace")).encode())
                        pending = pending[cut:]
            if pending:
                os.write(saved, redactor.scrub(pending.decode(errors="replace")).encode())

        thread = threading.Thread(target=pump, name=f"runbook-scrub-fd{fd}", daemon=True)
        thread.start()
        relays.append((fd, saved, thread))
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved, _ in relays:
            os.dup2(saved, fd)  # our end of the pipe closes; the relay drains what the kernel wrote
        for fd, saved, thread in relays:
            thread.join(timeout=10)
            os.close(saved)


def _write_stream(stream: TextIO | None, text: str) -> None:
    """Print to the operator's terminal; a closed terminal (SIGHUP) must not stop the record."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream)
        stream.flush()


def _merge_streams(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Join each run of consecutive stream outputs of one name into one output.

    Every write of a cell is an output of its own; a value printed in two writes would otherwise
    be archived in halves that no needle matches.
    """
    for cell in nb.cells:
        outputs = cell.get("outputs")
        if not outputs:
            continue
        merged: list = []
        for out in outputs:
            prev = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and prev is not None and prev.get("output_type") == "stream"
                    and prev.get("name") == out.get("name")):
                prev["text"] = "".join(prev.get("text", "")) + "".join(out.get("text", ""))
            else:
                merged.append(out)
        cell["outputs"] = merged
    return nb


def _read_journal(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a dying kernel
    return events


class _HtmlRenderer:
    """nbconvert's HTML exporter, warmed in a background thread while the kernel runs.

    Loading the templates costs about as much as rendering; the runner is idle while the kernel
    executes, so it pays that cost then instead of after the run.
    """

    def __init__(self) -> None:
        self._exporter = None
        self._thread = threading.Thread(target=self._warm, name="runbook-html-warmup", daemon=True)
        self._thread.start()

    def _warm(self) -> None:
        from nbconvert import HTMLExporter

        exporter = HTMLExporter(template_name="lab")
        exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("warm-up")]))
        self._exporter = exporter

    def render(self, nb: nbformat.NotebookNode) -> str:
        self._thread.join()
        if self._exporter is None:  # the warm-up failed; render the slow way and let errors surface
            self._warm()
        body, _ = self._exporter.from_notebook_node(nb)
        return body


def run_notebook(notebook: str | Path, params_file: str | Path, *, apply: bool = False,
                 timeout: float | None = None, archive_root: str | Path | None = None,
                 stream: TextIO | None = sys.stderr, kernel_name: str | None = None) -> RunResult:
    """Execute ``notebook`` against ``params_file`` and archive the record, whatever the outcome."""
    params = load_params(params_file)  # bad input stops here, before anything else happens
    require_references(params)  # so does a secret, key or known-hosts file that cannot be used
    notebook = Path(notebook)
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise RunbookError(f"{notebook}: not a notebook file; pass a path such as notebooks/00-environment-overview.ipynb")
    try:
        nbformat.read(notebook, as_version=4)
    except Exception as e:  # nbformat raises several unrelated types
        raise RunbookError(f"{notebook}: cannot be read as a Jupyter notebook ({e})") from None
    name = notebook.stem
    env = params.environment.name
    archive = Archive(archive_root or default_root())
    run_id = new_run_id()
    who = operator()
    started = dt.datetime.now(dt.timezone.utc)
    holder = {"operator": who, "pid": os.getpid(), "run_id": run_id, "since": started.isoformat(timespec="seconds")}

    with archive.run_lock(env, name, holder):
        renderer = _HtmlRenderer()
        redactor, _ = secret_redactor(params)
        with tempfile.TemporaryDirectory(prefix="runbook-") as private:
            journal = Path(private) / "journal.jsonl"
            outcome = _execute(notebook, params, run_id, apply, timeout, journal, redactor, stream, kernel_name)
            events = _read_journal(journal)
        ended = dt.datetime.now(dt.timezone.utc)
        # Secrets the notebook made appear during the run (a key file written by a step, say).
        redactor.merge(secret_redactor(params)[0])
        return _archive(archive, notebook, params, run_id, apply, who, started, ended, outcome, events, redactor,
                        renderer, stream)


@dataclass
class _Outcome:
    nb: nbformat.NotebookNode
    status: str
    failure: dict | None
    kernel_name: str | None


def _execute(notebook: Path, params: Params, run_id: str, apply: bool, timeout: float | None, journal: Path,
             redactor: Redactor, stream: TextIO | None, kernel_name: str | None) -> _Outcome:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    _register_memory_io()
    out_key = f"{MEMORY_SCHEME}{run_id}.ipynb"
    logger = logging.getLogger("papermill")
    handler = None
    if stream is not None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        stream_filter = _StreamFilter(redactor)
        handler.addFilter(stream_filter)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    old_journal = os.environ.get(JOURNAL_ENV)
    os.environ[JOURNAL_ENV] = str(journal)
    status, failure = "succeeded", None
    try:
        with _scrubbed_fds(redactor):
            pm.execute_notebook(
                str(notebook), out_key,
                parameters={"params_file": str(Path(params.source).resolve()), "run_id": run_id, "apply": bool(apply)},
                kernel_name=kernel_name, progress_bar=stream is not None, log_output=stream is not None,
                execution_timeout=timeout, cwd=str(notebook.resolve().parent), start_timeout=120,
            )
    except PapermillExecutionError as e:
        status = "failed"
        failure = {"cell_index": e.cell_index, "execution_count": e.exec_count, "ename": e.ename, "evalue": e.evalue,
                   "source_first_line": (e.source or "").strip().splitlines()[0][:120] if (e.source or "").strip() else ""}
    except KeyboardInterrupt:
        status = "interrupted"
        failure = {"ename": "KeyboardInterrupt", "evalue": "the operator interrupted the run"}
    except Exception as e:  # kernel death, timeouts, missing kernels: the record is kept all the same
        status = "failed"
        failure = {"ename": type(e).__name__, "evalue": str(e)}
    finally:
        if old_journal is None:
            os.environ.pop(JOURNAL_ENV, None)
        else:
            os.environ[JOURNAL_ENV] = old_journal
        if handler is not None:
            held = stream_filter.drain()
            if held:
                _write_stream(stream, "\n".join("  | " + ln for ln in redactor.scrub(held).splitlines()))
            logger.removeHandler(handler)
    buf = _MemoryIO.store.pop(out_key, None)
    nb = nbformat.reads(buf, as_version=4) if buf else nbformat.read(notebook, as_version=4)
    used = nb.metadata.get("kernelspec", {}).get("name") or kernel_name
    if failure and failure.get("cell_index") is not None:
        # papermill's index counts its injected-parameters cell; engineers read the committed notebook
        injected = sum(1 for c in nb.cells[: failure["cell_index"]]
                       if "injected-parameters" in c.get("metadata", {}).get("tags", []))
        failure["notebook_cell"] = failure["cell_index"] - injected
    return _Outcome(nb, status, failure, used)


def _archive(archive: Archive, notebook: Path, params: Params, run_id: str, apply: bool, who: str,
             started: dt.datetime, ended: dt.datetime, outcome: _Outcome, events: list[dict], redactor: Redactor,
             renderer: _HtmlRenderer, stream: TextIO | None) -> RunResult:
    import papermill

    kernel = next((e for e in events if e.get("event") == "kernel"), {})
    changes = [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "change"]
    nb = nbformat.from_dict(redactor.scrub_obj(_merge_streams(outcome.nb)))
    nb_bytes = redactor.scrub(nbformat.writes(nb)).encode()
    html_bytes = redactor.scrub(renderer.render(nb)).encode()
    manifest: dict[str, Any] = {
        "record": "runbook run",
        "run_id": run_id,
        "notebook": notebook.stem,
        "notebook_source": str(notebook),
        "environment": {"name": params.environment.name, "kind": params.environment.kind,
                        "data_country": params.environment.data_country},
        "simulated": params.environment.kind == "lab",
        "mode": "apply" if apply else "plan",
        "params": {"path": str(params.source), "sha256": params.sha256, "content_redacted": redactor.scrub(params.text)},
        "operator": who,
        "git": git_state(notebook.resolve().parent),
        "versions": {
            "python": sys.version.split()[0],
            "papermill": papermill.__version__,
            "runbooklib": __version__,
            "kernel": {"name": outcome.kernel_name, "python": kernel.get("python"),
                       "executable": kernel.get("executable"), "pid": kernel.get("pid")},
        },
        "started_at": started.isoformat(timespec="milliseconds"),
        "ended_at": ended.isoformat(timespec="milliseconds"),
        "duration_s": round((ended - started).total_seconds(), 3),
        "status": outcome.status,
        "failure": outcome.failure,
        "changes": changes,
        "archived_at": utcnow(),
    }
    manifest = redactor.scrub_obj(manifest)
    base = archive.record_base(params.environment.name, started.strftime("%Y-%m-%d"), run_id, notebook.stem)
    files = {"notebook": (base.with_name(base.name + ".ipynb"), nb_bytes),
             "html": (base.with_name(base.name + ".html"), html_bytes)}
    # last line of defence: a secret form that survived scrubbing (an encoding nobody foresaw) stops
    # the write; better no record than a record that leaks
    from .archive import manifest_bytes

    for role, data in (("notebook", nb_bytes), ("html", html_bytes), ("manifest", manifest_bytes(manifest))):
        leaked = redactor.leaks(data)
        if leaked:
            raise ArchiveError(f"run {run_id}: the {role} still holds secret {', '.join(leaked)} after scrubbing; "
                               "nothing was archived. This is a runbooklib bug: please report it")
    mpath = archive.commit(manifest, files)
    result = RunResult(run_id, outcome.status, mpath, files["notebook"][0], files["html"][0], manifest)
    _write_stream(stream, summary(result))
    return result


def summary(result: RunResult) -> str:
    m = result.manifest
    lines = [f"run {result.run_id} {result.status} in {m['duration_s']:.1f} s "
             f"({m['mode']} mode, {len(m['changes'])} change(s) applied)"]
    if m.get("failure"):
        f = m["failure"]
        cell = (f" at cell {f['notebook_cell']} of the notebook (In [{f['execution_count']}])"
                if f.get("notebook_cell") is not None else "")
        lines.append(f"  failed{cell}: {f['ename']}: {f['evalue']}")
    lines.append(f"  record:   {result.notebook_path}")
    lines.append(f"  html:     {result.html_path}")
    lines.append(f"  manifest: {result.manifest_path}")
    return "\n".join(lines)
