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
import functools
import getpass
import json
import logging
import os
import re
import secrets as _random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

from . import __version__, record, safeyaml
from .archive import Archive, open_archive, sha256_file
from .errors import ArchiveError, NotebookError, RunbookError
from .notebook import BAD_VERDICTS, JOURNAL_ENV, utcnow
from .params import Params, load_params
from .references import require_references
from .secrets import Redactor

MEMORY_SCHEME = "runbook-memory://"

# Where a run's time goes, stage by stage: None (the default) records nothing; a list (bench/suite.py sets
# one) gets a dict per run, stage name -> seconds. A clock read per stage; never in a record.
STAGE_LOG: list[dict[str, float]] | None = None


def _new_stage_run() -> None:
    if STAGE_LOG is not None:
        STAGE_LOG.append({})


def _add_stage(name: str, seconds: float) -> None:
    if STAGE_LOG is not None and STAGE_LOG:
        STAGE_LOG[-1][name] = STAGE_LOG[-1].get(name, 0.0) + seconds


@contextlib.contextmanager
def _stage(name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _add_stage(name, time.perf_counter() - t0)


class _MemoryIO:
    """papermill I/O handler that keeps written notebooks in memory, keyed by path.

    During the run the store holds papermill's live notebook itself (see ``Manager.save`` in
    :func:`_register_engine`); papermill's final write leaves its text.
    """

    store: dict[str, Any] = {}

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


ENGINE = "runbook"

# kernels asked to shut down after their last cell: they exit while the run is archived (_finish_kernel_stops),
# and the relays scrubbing their output (_scrubbed_fds) end when they have
_KERNELS_STOPPING: list = []
_RELAYS_DRAINING: list[threading.Thread] = []


def _finish_kernel_stops(leave_newest: bool = False) -> None:
    """Wait for the kernels asked to stop to exit (jupyter_client terminates, then kills, one that lingers), and clean up.

    ``leave_newest``: a suite's step leaves its own kernel, idle and asked to shut down, to finish exiting while
    the next step starts (and the output relays still draining to end on their own); a later call finishes it:
    the next step's, or the suite's at its end, before the suite releases the environment.
    """
    if not _KERNELS_STOPPING and not _RELAYS_DRAINING:
        return
    from nbclient.util import ensure_async, run_sync

    async def finish(km):
        try:
            await ensure_async(km.finish_shutdown())
        finally:
            await ensure_async(km.cleanup_resources())

    keep = 1 if leave_newest else 0
    while len(_KERNELS_STOPPING) > keep:
        km = _KERNELS_STOPPING.pop(0)
        with _stage("kernel stop (wait)"), contextlib.suppress(Exception):
            run_sync(finish)(km)
    if leave_newest:
        _RELAYS_DRAINING[:] = [t for t in _RELAYS_DRAINING if t.is_alive()]
        return
    with _stage("kernel stop (wait)"):
        while _RELAYS_DRAINING:
            _RELAYS_DRAINING.pop().join(timeout=10)


@dataclass
class _Spare:
    """A kernel launched ahead for the next run of this process (a suite's next step)."""

    km: Any  # jupyter_client's AsyncKernelManager, nbclient's own kind
    kernel_name: str
    cwd: str
    outputs: tuple[int, int]  # read ends of its stdout and stderr: relayed, scrubbed, once a run adopts it


@functools.cache
def _ready_client_class():
    """jupyter_client's asynchronous kernel client, with a readiness handshake that ends when it is done.

    jupyter_client's ``wait_for_ready`` asks for ``kernel_info``, takes any IOPub message as proof that the
    subscription is live, then reads IOPub until it has been silent for 0.2 s: every kernel start costs that
    0.2 s of waiting, 16 times in a suite. This one waits for the exact message that ends the exchange (the
    kernel's ``idle`` status for that request: after it the kernel publishes nothing more for it), so it
    returns as soon as the kernel is ready. The proof is the same: a reply on the shell channel and the
    request's own status on IOPub; when IOPub is not subscribed yet (ZeroMQ's slow joiner), the request's
    messages are lost, nothing arrives within 0.2 s, and it asks again, as jupyter_client does.
    """
    from queue import Empty

    from jupyter_client.asynchronous.client import AsyncKernelClient

    class ReadyClient(AsyncKernelClient):
        async def wait_for_ready(self, timeout: float | None = None) -> None:
            deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
            while True:
                msg_id = self.kernel_info()
                reply = await self._reply_to(msg_id, deadline)
                if reply is not None and await self._idle_after(msg_id, deadline):
                    self._handle_kernel_info_reply(reply)
                    return
                if not await self.is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")

        async def _reply_to(self, msg_id: str, deadline: float) -> dict | None:
            """The shell reply to ``msg_id`` within a second (replies to earlier requests are skipped)."""
            until = min(deadline, time.monotonic() + 1.0)
            while (left := until - time.monotonic()) > 0:
                try:
                    msg = await self.shell_channel.get_msg(timeout=left)
                except Empty:
                    return None
                if msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "kernel_info_reply":
                    return msg
            return None

        async def _idle_after(self, msg_id: str, deadline: float) -> bool:
            """Whether the kernel's ``idle`` status for ``msg_id`` arrives on IOPub (no message for 0.2 s: not subscribed yet;
            other messages are skipped until the handshake's deadline)."""
            while time.monotonic() < deadline:
                try:
                    msg = await self.iopub_channel.get_msg(timeout=0.2)
                except Empty:
                    return False
                if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "status"
                        and msg.get("content", {}).get("execution_state") == "idle"):
                    return True
            return False

    return ReadyClient


_SPARE: _Spare | None = None  # launched while a record is written (see prestart in run_notebook)
_ADOPTED: _Spare | None = None  # the spare the running notebook's client takes instead of starting a kernel


def _kernel_name_of(notebook: Path, kernel_name: str | None) -> str:
    if kernel_name:
        return kernel_name
    return (nbformat.read(notebook, as_version=4).metadata.get("kernelspec") or {}).get("name") or "python3"


def _prestart_kernel(notebook: Path, kernel_name: str | None) -> None:
    """Launch the kernel the next run, of ``notebook``, will use: it boots while this run's cells run.

    It is launched as nbclient would launch it (same manager, kernel, working folder, arguments and
    environment; the run's journal is set in it when a run adopts it). Its stdout and stderr go to
    pipes of its own, copied through the adopting run's scrubber (nothing reaches a terminal
    unscrubbed). A spare that no run adopts is stopped by :func:`discard_spare_kernel`. Anything that
    fails here only means the next run starts its own kernel, as it would without one.
    """
    global _SPARE
    discard_spare_kernel()
    with _stage("spare kernel launch"):
        try:
            from jupyter_client.manager import AsyncKernelManager
            from nbclient.util import run_sync

            name = _kernel_name_of(notebook, kernel_name)
            km = AsyncKernelManager(kernel_name=name)
            km.client_factory = _ready_client_class()
            cwd = str(notebook.resolve().parent)
            (r_out, w_out), (r_err, w_err) = os.pipe(), os.pipe()
            try:
                extra = ["--HistoryManager.hist_file=:memory:"] if km.ipykernel else []  # as nbclient does
                run_sync(km.start_kernel)(extra_arguments=extra, cwd=cwd, stdout=w_out, stderr=w_err)
            except BaseException:
                os.close(r_out)
                os.close(r_err)
                raise
            finally:
                os.close(w_out)
                os.close(w_err)
            _SPARE = _Spare(km, name, cwd, (r_out, r_err))
        except Exception:
            _SPARE = None


def discard_spare_kernel(spare: _Spare | None = None) -> None:
    """Stop the kernel launched ahead (``spare``, else the one waiting) that no run took."""
    global _SPARE
    if spare is None:
        spare, _SPARE = _SPARE, None
    if spare is None:
        return
    from nbclient.util import run_sync

    with contextlib.suppress(Exception):
        run_sync(spare.km.shutdown_kernel)(now=True)
    for fd in spare.outputs:
        with contextlib.suppress(OSError):
            os.close(fd)


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds a process has used so far (0 if it cannot be read)."""
    try:
        fields = _proc_stat(pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def _take_spare(notebook: Path, kernel_name: str | None, redactor: Redactor) -> list[threading.Thread]:
    """Before a run: hand the spare to this run's client if it is the kernel the run needs and alive
    (else stop it); its output relayed, scrubbed by this run's redactor, to the terminal. Returns the relays."""
    global _SPARE, _ADOPTED
    spare, _SPARE = _SPARE, None
    if spare is None:
        return []
    from nbclient.util import run_sync

    try:
        fits = (spare.kernel_name == _kernel_name_of(notebook, kernel_name) and spare.cwd == str(notebook.resolve().parent)
                and run_sync(spare.km.is_alive)())
    except Exception:
        fits = False
    if not fits:
        discard_spare_kernel(spare)
        return []
    _ADOPTED = spare
    if STAGE_LOG is not None:  # the CPU its boot took while the previous step ran (bench/suite.py shows it)
        _add_stage("spare boot cpu", _cpu_seconds(getattr(spare.km.provisioner, "pid", None)))
    sys.stdout.flush()
    sys.stderr.flush()
    return [_relay(read_end, os.dup(fd), redactor, f"runbook-scrub-spare-fd{fd}") for fd, read_end in zip((1, 2), spare.outputs)]


def _register_engine() -> None:
    """papermill's nbclient engine, except that a rich output's text ends its line in the log.

    papermill logs a display's ``text/plain`` without a newline; the stream filter holds an unfinished
    line back (a secret may be split across two stream chunks) and so glued the next output onto the
    display's last line. A display is always whole, so its line is ended here, where it is known to be one.
    """
    from nbclient.util import ensure_async, run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    if ENGINE in papermill_engines._engines:
        return

    class Manager(NotebookExecutionManager):
        def save(self, **kwargs):
            """Hand the live notebook over instead of writing all of it out again after every cell.

            papermill serializes (and validates) the whole notebook at each cell's start and end; the
            runner only ever reads it after the kernel stops, so the store keeps a reference to the
            notebook papermill updates in place. A signal at any moment still finds every output so far.
            """
            with _stage("papermill saves"):
                if self.output_path:
                    _MemoryIO.store[self.output_path] = self.nb
                self.last_save_time = self.now()

    class Client(PapermillNotebookClient):
        def create_kernel_manager(self):
            """The kernel launched ahead for this run, when there is one (see _take_spare); else a new manager."""
            global _ADOPTED
            spare, _ADOPTED = _ADOPTED, None
            if spare is None or spare.kernel_name != (self.kernel_name or spare.kernel_name):
                if spare is not None:
                    discard_spare_kernel(spare)
                km = super().create_kernel_manager()
                with contextlib.suppress(Exception):  # a manager of another kind keeps its own client
                    km.client_factory = _ready_client_class()
                return km
            self.kernel_name, self.km, self.adopted = spare.kernel_name, spare.km, True
            return self.km

        def papermill_execute_cells(self):
            if getattr(self, "adopted", False):
                # launched before this run existed: its journal is set first, silently (no cell, no count)
                code = f"import os as _os; _os.environ[{JOURNAL_ENV!r}] = {os.environ.get(JOURNAL_ENV, '')!r}; del _os"
                reply = self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))
                if (reply or {}).get("content", {}).get("status") != "ok":
                    raise RunbookError("the kernel launched ahead did not take the run's journal; run again")
            super().papermill_execute_cells()
            self.cells_done = True  # every cell ran, or one failed and the rest were skipped: the kernel is idle

        def start_new_kernel(self, **kwargs):
            with _stage("kernel start"):
                return super().start_new_kernel(**kwargs)

        def start_new_kernel_client(self):
            with _stage("kernel start"):
                return super().start_new_kernel_client()

        def _cleanup_kernel(self):
            if getattr(self, "cells_done", False) and self.km is not None:
                with _stage("kernel stop"):
                    return run_sync(self._async_request_stop)()
            with _stage("kernel stop"):  # interrupted, timed out, dead: stopped now, before the record is read
                return super()._cleanup_kernel()

        async def _async_request_stop(self):
            """Ask the idle kernel to shut down and let it exit (its connections close) while the record is written."""
            km, self.km = self.km, None
            try:
                km.shutting_down = True
                km.stop_restarter()
                await ensure_async(km.request_shutdown())
            finally:
                if self.kc is not None:
                    await ensure_async(self.kc.stop_channels())
                    self.kc = None
                _KERNELS_STOPPING.append(km)

        def log_output_message(self, output):
            if output.output_type != "stream" and self.log_output and "text/plain" in output.get("data", {}):
                self.log.info("".join(output.data["text/plain"]) + "\n")
                return
            super().log_output_message(output)

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):
            # papermill's Engine.execute_notebook, with the Manager above
            nb_man = Manager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                             autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, **kwargs):
            from papermill.engines import logger
            from papermill.utils import merge_kwargs, remove_args

            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout, kernel_name=kernel_name,
                                 log=logger, log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
            return Client(nb_man, **final).execute()

    papermill_engines.register(ENGINE, Engine)


@dataclass
class RunResult:
    run_id: str
    status: str
    manifest_path: Path
    notebook_path: Path
    html_path: Path
    manifest: dict
    signal: int | None = None  # the signal that interrupted the run, if one did
    chain_head: str = ""  # sha256 of this record's manifest, the newest link of the chain

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def verdict(self) -> str | None:
        return (self.manifest.get("verdict") or {}).get("verdict")

    def exit_code(self, allow_not_ready: bool = False) -> int:
        """0 succeeded, 1 failed, 4 succeeded with a bad verdict (``not ready``, ``incomplete``)."""
        if not self.ok:
            return 1
        if self.verdict in BAD_VERDICTS and not allow_not_ready:
            return 4
        return 0


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{_random.token_hex(3)}"


def operator(name: str | None = None) -> str:
    """Who runs it: ``--operator``, else ``$RUNBOOK_OPERATOR``, else the local user at this machine."""
    return name or os.environ.get("RUNBOOK_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def reason(text: str | None = None) -> str:
    """Why it runs: ``--reason``, else ``$RUNBOOK_REASON`` (a ticket, a change request), else empty."""
    return (text if text is not None else os.environ.get("RUNBOOK_REASON", "")).strip()


def change_id(text: str | None = None) -> str:
    """The change this run belongs to: ``--change``, else ``$RUNBOOK_CHANGE`` (a ticket), else empty."""
    return (text if text is not None else os.environ.get("RUNBOOK_CHANGE", "")).strip()


def signing_key(path: str | Path | None = None) -> Path:
    """The operator's SSH key: ``--key``, else ``$RUNBOOK_SIGNING_KEY``, else ``~/.ssh/id_ed25519``."""
    return Path(path or os.environ.get("RUNBOOK_SIGNING_KEY") or "~/.ssh/id_ed25519").expanduser()


def approvals_for(archive: Archive, params: Params, notebook: Path, run_id: str, key: Path) -> dict | None:
    """What a run's confirmations check an apply against (``environment.approvals``): the approved plans of
    this runbook here, each signature verified now, the operator as their key names them, the commit.
    None without required approvals."""
    rules = params.environment.approvals
    if rules is None:
        return None
    from . import approvals

    operator_principal = approvals.prove_operator(key, params.path(rules.allowed_signers), run_id)
    plans = [g.as_dict() for g in approvals.granted(archive, params, notebook.stem)]
    git = git_state(notebook.resolve().parent)
    return {"plans": plans, "operator": operator_principal, "git_commit": git["commit"], "git_dirty": bool(git["dirty"]),
            "notebook": notebook.stem}


def git_state(where: Path) -> dict:
    """Commit and dirtiness of the checkout holding ``where`` (None outside git)."""
    with _stage("git state"):
        return _git_state(where)


def _git_state(where: Path) -> dict:
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


# a figure's text form, which papermill logs for every plot: the record keeps the picture itself
_FIGURE_RESIDUE = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>\n?")
# what the kernel process says on its own stderr that an operator cannot act on
_KERNEL_NOISE = re.compile(rb"^\[IPKernelApp\] (WARNING|ERROR) \| (.*(TCP|encryption|insecure).*|KeyboardInterrupt caught in kernel\.?)\r?\n",
                           re.M | re.I)


def cell_titles(nb: nbformat.NotebookNode) -> dict[int, str]:
    """What the terminal shows as each code cell starts: ``[3/9] Facts``, keyed by papermill's cell number.

    The title is the nearest markdown heading above the cell (``(continued)`` for later cells under
    it), else the cell's first line. Papermill's injected parameters cell follows the tagged one.
    """
    cells: list[Any] = []
    for cell in nb.cells:
        cells.append(cell)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cells.append(None)
    total = sum(1 for c in cells if c is None or c.cell_type == "code")
    titles, heading, used, k = {}, "", False, 0
    for number, cell in enumerate(cells, start=1):
        if cell is not None and cell.cell_type == "markdown":
            m = re.search(r"^#+\s*(.+?)\s*$", cell.source, re.M)
            if m:
                heading, used = m.group(1), False
            continue
        if cell is not None and cell.cell_type != "code":
            continue
        k += 1
        if cell is None:
            title = "parameters (injected by the runner)"
        elif "parameters" in cell.get("metadata", {}).get("tags", []):
            title = "parameters (the notebook's defaults)"
        elif heading:
            title = heading + (" (continued)" if used else "")
            used = True
        else:
            first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
            title = first[:70] or "(empty cell)"
        titles[number] = f"[{k}/{total}] {title}"
    return titles


class _StreamFilter(logging.Filter):
    """Scrubs secrets from papermill's log stream and trims its per-cell banners.

    Each write of a cell is one log record, so a value printed in two writes arrives in halves that
    no needle matches. The filter holds back the unfinished line of each stream until its newline
    comes (or the cell ends) and scrubs whole lines only.
    """

    def __init__(self, redactor: Redactor, titles: dict[int, str] | None = None):
        super().__init__()
        self.redactor = redactor
        self.titles = titles or {}  # papermill's cell number -> "[k/n] title" (code cells only)
        self._pending: dict[int, str] = {}  # by level: stdout is logged as INFO, stderr as WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(("Executing notebook with kernel", "Working directory:")):
            return False  # papermill's preamble: the summary says which notebook and kernel ran
        if text.startswith(("Executing Cell", "Ending Cell", "Output Notebook", "Input Notebook")):
            held = self.drain()
            number = re.match(r"Executing Cell (\d+)", text)
            title = self.titles.get(int(number.group(1))) if number else None
            if held:
                self._emit(record, held)
                if title:
                    record.msg += "\n" + title
                return True
            if title:
                record.msg, record.args = title, ()
                return True
            return False
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
        text = _FIGURE_RESIDUE.sub("", self.redactor.scrub(text.rstrip("\n"))).rstrip("\n")
        record.msg = "\n".join("  | " + line for line in text.splitlines()) if text else "  |"
        record.args = ()
        return True


def _relay(read_end: int, saved: int, redactor: Redactor, name: str) -> threading.Thread:
    """A thread that copies ``read_end`` to ``saved`` line by line, scrubbed, until the writers close it;
    it closes both ends when done (``saved`` is its own copy: never closed under it while a late writer drains)."""

    def pump():
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1  # progress bars redraw with \r
                if cut:
                    lines = _KERNEL_NOISE.sub(b"", pending[:cut])
                    if lines:
                        os.write(saved, redactor.scrub(lines.decode(errors="replace")).encode())
                    pending = pending[cut:]
        if pending:
            os.write(saved, redactor.scrub(pending.decode(errors="replace")).encode())
        os.close(saved)

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    return thread


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
        relays.append((fd, saved, _relay(read_end, saved, redactor, f"runbook-scrub-fd{fd}")))
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved, _ in relays:
            os.dup2(saved, fd)  # our end of the pipe closes; the relay drains what the kernel wrote
        with _stage("output relay drain"):
            for _, _, thread in relays:
                if _KERNELS_STOPPING:  # a kernel still exiting holds the pipe: the relay drains it while the record is written
                    _RELAYS_DRAINING.append(thread)
                else:
                    thread.join(timeout=10)


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


# the opening tags nbconvert's HTMLExporter makes focusable (a cell's input, every output), and images without alt
_FOCUSABLE = re.compile(r'<div\b[^>]*\sclass="(?:jp-Cell-inputWrapper|(?:[^"]*\s)?jp-OutputArea-output(?:\s[^"]*)?)"[^>]*(?=>)')
_IMG_WITHOUT_ALT = re.compile(r"<img\b(?![^>]*\salt=)[^>]*?(?=/?>)")


@functools.cache
def _record_exporter_class():
    """nbconvert's HTML exporter (template ``lab``) without its BeautifulSoup pass over the finished page.

    ``HTMLExporter.from_notebook_node`` renders the page, then parses all of it (the inlined theme
    included) with BeautifulSoup only to make cells and outputs focusable (``tabindex="0"``) and to give
    images without one a text alternative, and serializes it again: 40% of a record's rendering. Here
    the same two edits are made on the rendered text, where the template writes those elements (the
    test compares the result with nbconvert's own, element by element). Everything before the pass
    is HTMLExporter's, in its order.
    """
    from nbconvert import HTMLExporter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class RecordExporter(HTMLExporter):
        def from_notebook_node(self, nb, resources=None, **kw):
            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            highlight_code = self.filters.get("highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self))
            resources = self._init_resources(resources)
            filter_data_type = WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources)
            self.register_filter("highlight_code", highlight_code)
            self.register_filter("filter_data_type", filter_data_type)
            html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            html = _FOCUSABLE.sub(lambda m: m.group(0) + ' tabindex="0"', html)
            html = _IMG_WITHOUT_ALT.sub(lambda m: m.group(0) + ' alt="No description has been provided for this image"', html)
            return html, resources

    return RecordExporter


class _HtmlRenderer:
    """nbconvert's HTML exporter, warmed in a background thread while the kernel runs.

    Loading the templates costs about as much as rendering; the runner is idle while the kernel
    executes, so it pays that cost then instead of after the run. The warmed exporter is kept for
    the next run of this process (a suite's): it loads the templates once.
    """

    _warmed = None  # the exporter a previous run of this process warmed
    _lock = threading.Lock()  # one render at a time through the shared exporter

    def __init__(self, background: bool = True) -> None:
        """``background=False`` loads the templates when rendering (at interpreter exit no thread may start)."""
        self._exporter = _HtmlRenderer._warmed
        start = background and self._exporter is None
        self._thread = threading.Thread(target=self._warm, name="runbook-html-warmup", daemon=True) if start else None
        if self._thread is not None:
            self._thread.start()

    def _warm(self) -> None:
        exporter = _record_exporter_class()(template_name="lab")
        exporter.from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("warm-up")]))
        self._exporter = _HtmlRenderer._warmed = exporter

    def render(self, nb: nbformat.NotebookNode, title: str = "", no_input: bool = False) -> str:
        """The notebook as one HTML page named ``title``; ``no_input`` leaves the code out (for reviewers)."""
        if self._thread is not None:
            self._thread.join()
        if self._exporter is None:  # the warm-up failed (or never ran); render the slow way and let errors surface
            self._warm()
        with _HtmlRenderer._lock:
            self._exporter.exclude_input = no_input
            self._exporter.exclude_input_prompt = no_input
            body, _ = self._exporter.from_notebook_node(nb, resources={"metadata": {"name": title or "runbook record"}})
        return body


def run_notebook(notebook: str | Path, params_file: str | Path, *, apply: bool = False,
                 timeout: float | None = None, archive_root: str | Path | None = None,
                 stream: TextIO | None = sys.stderr, kernel_name: str | None = None,
                 summary_stream: TextIO | None = sys.stdout, operator_name: str | None = None,
                 why: str | None = None, no_input: bool = False, change: str | None = None,
                 key: str | Path | None = None, suite: dict | None = None, next_notebook: str | Path | None = None) -> RunResult:
    """Execute ``notebook`` against ``params_file`` and archive the record, whatever the outcome.

    ``next_notebook`` (a suite's next step): its kernel is launched as this notebook's cells start, so
    that it has booted by the time this record is written; the next run of this process adopts it.

    SIGINT, SIGTERM and SIGHUP end the run the same way: the kernel is stopped, the partial record
    is archived as ``interrupted`` (naming the signal) and the lock released; ``RunResult.signal``
    then holds the signal number (the command line exits 128 + that number).
    """
    _new_stage_run()
    t_checks = time.perf_counter()
    params = load_params(params_file)  # bad input stops here, before anything else happens
    require_references(params)  # so does a secret, key or known-hosts file that cannot be used
    notebook = Path(notebook)
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise NotebookError(f"{notebook}: not a notebook file; pass a path such as notebooks/00-environment-overview.ipynb")
    try:
        nbformat.read(notebook, as_version=4)
    except Exception as e:  # nbformat raises several unrelated types
        raise NotebookError(f"{notebook}: cannot be read as a Jupyter notebook ({e})") from None
    name = notebook.stem
    env = params.environment.name
    archive = open_archive(archive_root)
    recover_killed_runs(archive, stream)
    archive.check_ready()  # a run that could not be archived must not start (with --apply least of all)
    archive.check_residency(params.environment, stream)  # nor one whose record would leave the data's country
    run_id = new_run_id()
    who = operator(operator_name)
    record_options = {"reason": reason(why), "no_input": no_input, "change": change_id(change), "suite": suite}
    started = dt.datetime.now(dt.timezone.utc)
    holder = {"operator": who, "pid": os.getpid(), "run_id": run_id, "since": started.isoformat(timespec="seconds"),
              "archive": archive.location}

    with archive.run_lock(env, name, holder):
        _add_stage("checks", time.perf_counter() - t_checks)
        t_prepare = time.perf_counter()
        # papermill (and jupyter_client) first, in this thread: the HTML warm-up thread imports
        # nbconvert, and two threads importing jupyter_client at once can meet a half-imported module
        _register_memory_io()
        renderer = _HtmlRenderer()
        redactor, _ = secret_redactor(params)
        info = _journal_info(notebook, params, run_id, apply, who, started, redactor)
        info["change"] = record_options["change"]
        if suite:  # `runbook suite`: the suite id and this run's step in it (runbooklib.suite)
            info["suite"] = suite
        if apply:  # verified here, by the runner, before the notebook (and its confirmations) run
            info["approvals"] = approvals_for(archive, params, notebook, run_id, signing_key(key))
        with archive.journal(run_id, info) as folder, _signals_end_the_run() as signals:
            journal = folder / "journal.jsonl"
            signals.armed = True
            _add_stage("prepare", time.perf_counter() - t_prepare)
            outcome = None
            try:
                outcome = _execute(notebook, params, run_id, apply, timeout, journal, redactor, stream, kernel_name,
                                   next_notebook=Path(next_notebook) if next_notebook is not None else None)
            except _Signalled:  # landed just before or just after _execute's own handling: still a record
                if outcome is None:
                    outcome = _Outcome(nbformat.read(notebook, as_version=4), "interrupted", None, kernel_name)
            finally:
                signals.armed = False  # from here on a signal waits for the record
            t_after = time.perf_counter()
            events = _read_journal(journal)
            if signals.interrupted or outcome.status == "interrupted":
                discard_spare_kernel()  # no next step follows an interrupted one
                _finish_kernel_stops()
                _stop_kernel(events)
            # else the kernel ran every cell and is shutting down: it exits while the record is written (below)
            if signals.interrupted:
                name = signal.Signals(signals.caught[0]).name
                outcome.status = "interrupted"
                outcome.failure = {"ename": name, "signal": name,
                                   "evalue": f"the run was stopped by {name} "
                                             f"({_SIGNAL_MEANING.get(signals.caught[0], 'a signal')})"}
            ended = dt.datetime.now(dt.timezone.utc)
            # Secrets the notebook made appear during the run (a key file written by a step, say).
            redactor.merge(secret_redactor(params)[0])
            try:
                result = _archive(archive, notebook, params, run_id, apply, who, started, ended, outcome, events,
                                  redactor, renderer, summary_stream, git=info["git"], **record_options)
            except BaseException as e:
                # the journal stays; the next command archives what it holds, saying why
                (folder / "not-archived").write_text(f"{type(e).__name__}: {redactor.scrub(str(e))}\n")
                raise
            finally:
                # the kernel is gone before the lock is released; a suite's step (a next one follows) leaves its idle
                # kernel, asked to shut down, to finish exiting meanwhile: the suite holds the environment until it has
                deferred = next_notebook is not None and not signals.interrupted and outcome.status != "interrupted"
                _finish_kernel_stops(leave_newest=deferred)
                if not deferred:
                    _stop_kernel(events)
            archive.close_journal(run_id)
            _add_stage("after (all)", time.perf_counter() - t_after)
            result.signal = signals.caught[0] if signals.caught else None
            return result


_SIGNAL_MEANING = {signal.SIGINT: "Ctrl-C or kill -INT", signal.SIGTERM: "a stop request: CI cancel, service stop, kill",
                   signal.SIGHUP: "the terminal closed"}


class _Signalled(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP, so they end a run the way Ctrl-C does."""


@dataclass
class _Signals:
    caught: list[int]
    armed: bool = False  # True while the notebook executes: the first signal interrupts it
    interrupted: bool = False


@contextlib.contextmanager
def _signals_end_the_run():
    """SIGINT, SIGTERM and SIGHUP interrupt the notebook once; any other waits for the record.

    Outside the main thread (a runner embedded in another program) signals are left to that program.
    """
    state = _Signals([])
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_signal(signum, frame):
        first = not state.caught
        state.caught.append(signum)
        if first and state.armed:
            state.interrupted = True
            raise _Signalled(signal.Signals(signum).name)

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in wanted}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_kernel(events: list[dict]) -> None:
    """Make sure the run's kernel is gone: an interrupted run can leave it executing a cell."""
    kernel = next((e for e in events if e.get("event") == "kernel"), {})
    pid = kernel.get("pid")
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid() or not _is_our_child(pid):
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            if not _is_our_child(pid):
                return
            time.sleep(0.05)


def _proc_stat(pid) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first); OSError when it cannot be read."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()


def _is_our_child(pid: int) -> bool:
    try:
        fields = _proc_stat(pid)
    except OSError:
        return False
    return len(fields) > 1 and fields[0] != "Z" and fields[1] == str(os.getpid())


def _journal_info(notebook: Path, params: Params, run_id: str, apply: bool, who: str, started: dt.datetime,
                  redactor: Redactor) -> dict:
    """What a record needs if the runner dies before archiving (kept in the run's journal folder)."""
    return redactor.scrub_obj({
        "run_id": run_id, "notebook": notebook.stem, "notebook_source": str(notebook),
        "environment": {"name": params.environment.name, "kind": params.environment.kind,
                        "data_country": params.environment.data_country},
        "simulated": params.environment.kind == "lab", "mode": "apply" if apply else "plan",
        "params": {"path": str(params.source), "sha256": params.sha256,
                   "content_redacted": redactor.scrub(params.text)},
        "params_resolved": str(Path(params.source).resolve()),  # for the recovering command, run elsewhere
        "operator": who, "git": git_state(notebook.resolve().parent), "runner_pid": os.getpid(),
        "started_at": started.isoformat(timespec="milliseconds"),
    })


def recover_killed_runs(archive: Archive, stream: TextIO | None = sys.stderr) -> list[str]:
    """Archive the journal of every run whose runner died (SIGKILL, OOM, power loss) as ``killed``.

    Called by every ``runbook`` command that uses the archive. The record holds what the journal
    holds: who, what, the changes applied up to the end, and the journal itself; no notebook.
    """
    from .archive import manifest_bytes

    done = []
    for folder in archive.unfinished_runs():
        try:
            info = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            continue
        redactor = Redactor()
        with contextlib.suppress(RunbookError):  # scrub with the file's secrets if it still loads
            redactor = secret_redactor(load_params(info.get("params_resolved") or info["params"]["path"]))[0]
        journal_path = folder / "journal.jsonl"
        events = _read_journal(journal_path)
        journal_bytes = redactor.scrub(journal_path.read_text() if journal_path.exists() else "").encode()
        kernel = next((e for e in events if e.get("event") == "kernel"), {})
        not_archived = folder / "not-archived"
        if not_archived.exists():
            status, why = "failed", (f"the run ended but its record could not be written "
                                     f"({not_archived.read_text().strip()}); archived from its journal")
        else:
            status, why = "killed", ("the runner ended without archiving (SIGKILL, out of memory or power loss); "
                                     "archived from its journal by the next runbook command")
        try:
            started = dt.datetime.fromisoformat(info["started_at"])
        except (KeyError, ValueError):
            started = dt.datetime.now(dt.timezone.utc)
        last = max([e.get("at", "") for e in events] + [info.get("started_at", "")])
        manifest = redactor.scrub_obj({
            "record": "runbook run", **{k: info.get(k) for k in ("run_id", "notebook", "notebook_source",
                                                                  "environment", "simulated", "mode", "params",
                                                                  "operator", "change", "git", "started_at")},
            **({"suite": info["suite"]} if info.get("suite") else {}),
            "interactive": bool(info.get("interactive")),
            "versions": {"runbooklib": __version__, "kernel": {"python": kernel.get("python"),
                                                               "executable": kernel.get("executable"),
                                                               "pid": kernel.get("pid")}},
            "ended_at": last or None, "duration_s": None, "status": status,
            "failure": {"ename": "Killed" if status == "killed" else "NotArchived", "evalue": why},
            "changes": [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "change"],
            "archived_at": utcnow(),
        })
        if manifest["changes"]:  # an interactive run opens in plan mode; a click on Apply made changes
            manifest["mode"] = "apply"
        leaked = redactor.leaks(journal_bytes + manifest_bytes(manifest))
        if leaked:  # never archive a leak; the folder stays for a person, who is told where
            _write_stream(stream, f"runbook: run {info.get('run_id')} never finished and its journal {folder} still "
                                  f"holds secret {', '.join(leaked)} after scrubbing; it was NOT archived. Look at it, "
                                  "then remove the folder")
            continue
        base = archive.record_base((info.get("environment") or {}).get("name", "unknown"),
                                   started.strftime("%Y-%m-%d"), info["run_id"], info.get("notebook", "unknown"))
        archive.commit(manifest, {"journal": (base.with_name(base.name + ".journal.jsonl"), journal_bytes)},
                       base=base)
        shutil.rmtree(folder, ignore_errors=True)
        done.append(info["run_id"])
        _write_stream(stream, f"runbook: run {info['run_id']} ({info.get('notebook')} on "
                              f"{(info.get('environment') or {}).get('name')}) never finished; archived as {status} "
                              f"with {len(manifest['changes'])} journaled change(s)")
    return done


@dataclass
class _Outcome:
    nb: nbformat.NotebookNode
    status: str
    failure: dict | None
    kernel_name: str | None


def _execute(notebook: Path, params: Params, run_id: str, apply: bool, timeout: float | None, journal: Path,
             redactor: Redactor, stream: TextIO | None, kernel_name: str | None, next_notebook: Path | None = None) -> _Outcome:
    global _ADOPTED
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    _register_memory_io()
    _register_engine()
    out_key = f"{MEMORY_SCHEME}{run_id}.ipynb"
    titles = cell_titles(nbformat.read(notebook, as_version=4))
    logger = logging.getLogger("papermill")
    handler = None
    if stream is not None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        stream_filter = _StreamFilter(redactor, titles)
        handler.addFilter(stream_filter)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    old_journal = os.environ.get(JOURNAL_ENV)
    spare_relays = _take_spare(notebook, kernel_name, redactor)
    if next_notebook is not None:  # the next step's kernel boots while this one's cells run (before this run's journal is set)
        _prestart_kernel(next_notebook, kernel_name)
    os.environ[JOURNAL_ENV] = str(journal)
    status, failure = "succeeded", None
    try:
        with _scrubbed_fds(redactor), _stage("papermill"):
            pm.execute_notebook(
                str(notebook), out_key,
                parameters={"params_file": str(Path(params.source).resolve()), "run_id": run_id, "apply": bool(apply)},
                kernel_name=kernel_name, engine_name=ENGINE, progress_bar=False, log_output=stream is not None,
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
        if _ADOPTED is not None:  # papermill stopped before its client took the spare
            spare, _ADOPTED = _ADOPTED, None
            discard_spare_kernel(spare)
        _RELAYS_DRAINING.extend(spare_relays)  # they end when the kernel has exited (joined by _finish_kernel_stops)
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
    if isinstance(buf, str):
        nb = nbformat.reads(buf, as_version=4)
    else:  # the live notebook (an interrupted run), or nothing if papermill never started it
        nb = buf if buf is not None else nbformat.read(notebook, as_version=4)
    used = nb.metadata.get("kernelspec", {}).get("name") or kernel_name
    if failure and failure.get("cell_index") is not None:
        # papermill's index counts its injected-parameters cell; engineers read the committed notebook
        injected = sum(1 for c in nb.cells[: failure["cell_index"]]
                       if "injected-parameters" in c.get("metadata", {}).get("tags", []))
        failure["notebook_cell"] = failure["cell_index"] - injected
        failure["cell"] = titles.get(failure["cell_index"] + 1, "")  # as the terminal showed it: "[3/4] Plan"
    return _Outcome(nb, status, failure, used)


def _archive(archive: Archive, notebook: Path, params: Params, run_id: str, apply: bool, who: str,
             started: dt.datetime, ended: dt.datetime, outcome: _Outcome, events: list[dict], redactor: Redactor,
             renderer: _HtmlRenderer, stream: TextIO | None, reason: str = "", no_input: bool = False,
             interactive: bool = False, change: str = "", suite: dict | None = None, git: dict | None = None) -> RunResult:
    import papermill

    kernel = next((e for e in events if e.get("event") == "kernel"), {})
    changes = [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "change"]
    verdicts = [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "verdict"]
    plans = [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "plan"]
    manifest: dict[str, Any] = {
        "record": "runbook run",
        "run_id": run_id,
        "interactive": interactive,
        "notebook": notebook.stem,
        "notebook_source": str(notebook),
        "environment": {"name": params.environment.name, "kind": params.environment.kind,
                        "data_country": params.environment.data_country},
        "simulated": params.environment.kind == "lab",
        "mode": "apply" if apply else "plan",
        "params": {"path": str(params.source), "sha256": params.sha256, "content_redacted": redactor.scrub(params.text)},
        "operator": who,
        "reason": reason,
        "change": change,
        **({"suite": suite} if suite else {}),
        "git": git if git is not None else git_state(notebook.resolve().parent),  # the runner's: as the run started
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
        "verdict": verdicts[-1] if verdicts else None,
        "changes": changes,
        "plans": plans,
        "approved_plans": sorted({e["plan_run"] for e in events if e.get("event") == "approved plan"}),
        "archived_at": utcnow(),
    }
    from .approvals import manifest_plan_digest

    manifest["plan_digest"] = manifest_plan_digest(manifest)
    manifest = redactor.scrub_obj(manifest)
    # the record stands alone: a header from the manifest, injected parameters on top, no bar residue
    with _stage("scrub"):
        nb = record.arrange(nbformat.from_dict(redactor.scrub_obj(_merge_streams(outcome.nb))), manifest)
        nb_bytes = redactor.scrub(nbformat.writes(nb)).encode()
    with _stage("render html"):
        html = renderer.render(nb, record.title(manifest), no_input)
    with _stage("scrub"):
        html_bytes = redactor.scrub(html).encode()
    base = archive.record_base(params.environment.name, started.strftime("%Y-%m-%d"), run_id, notebook.stem)
    files = {"notebook": (base.with_name(base.name + ".ipynb"), nb_bytes),
             "html": (base.with_name(base.name + ".html"), html_bytes)}
    # last line of defence: a secret form that survived scrubbing (an encoding nobody foresaw) stops
    # the write; better no record than a record that leaks
    from .archive import manifest_bytes

    for role, data in (("notebook", nb_bytes), ("html", html_bytes), ("manifest", manifest_bytes(manifest))):
        with _stage("leak check"):
            leaked = redactor.leaks(data)
        if leaked:
            raise ArchiveError(f"run {run_id}: the {role} still holds secret {', '.join(leaked)} after scrubbing; "
                               "nothing was archived. This is a runbooklib bug: please report it")
    with _stage("archive commit"):
        mpath = archive.commit(manifest, files)
    manifest = json.loads(mpath.read_bytes())  # with the seq and chain link commit added
    result = RunResult(run_id, outcome.status, mpath, files["notebook"][0], files["html"][0], manifest,
                       chain_head=sha256_file(mpath))
    _write_stream(stream, summary(result))
    return result


def summary(result: RunResult) -> str:
    m = result.manifest
    verdict = f", verdict: {result.verdict}" if result.verdict else ""
    lines = [f"run {result.run_id} {result.status} in {m['duration_s']:.1f} s "
             f"({m['mode']} mode, {len(m['changes'])} change(s) applied{verdict})"]
    if m.get("failure"):
        f = m["failure"]
        cell = f" at {f['cell']}" if f.get("cell") else ""
        lines.append(f"  failed{cell}: {f['ename']}: {f['evalue']}")
    lines.append(f"  record:   {result.notebook_path}")
    lines.append(f"  html:     {result.html_path}")
    lines.append(f"  manifest: {result.manifest_path}")
    # a witness outside the archive: `runbook verify --head SEQ:SHA256` later proves nothing was cut
    lines.append(f"  chain head: {m['seq']}:{result.chain_head}")
    return "\n".join(lines)
