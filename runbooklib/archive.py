"""The run archive: every executed notebook kept as a tamper-evident record.

Layout under the archive root (``outputs/`` by default, ``--archive`` or ``RUNBOOK_ARCHIVE``)::

    <environment>/<date>/<run-id>-<notebook>.ipynb          the executed, scrubbed notebook
    <environment>/<date>/<run-id>-<notebook>.html           its rendering
    <environment>/<date>/<run-id>-<notebook>.manifest.json  who, what, when, result, changes, hashes
    ledger.jsonl      one line per record, in order: seq, run id, manifest path and sha256
    index.sqlite      a query index for `runbook runs` (derived; rebuilt from the ledger when missing)
    .locks/           one lock file per environment and notebook, plus the ledger's

Each manifest carries the sha256 of the previous record's manifest, and each ledger line the sha256
of its manifest, so editing, removing or reordering any record breaks the chain at that record.
The index also remembers the newest record it saw, which catches records cut from the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArchiveError, ArchiveNotReady, LockedError

GENESIS = "0" * 64
LEDGER = "ledger.jsonl"
INDEX = "index.sqlite"
ENV_VAR = "RUNBOOK_ARCHIVE"
LOCK_DIR_ENV = "RUNBOOK_LOCK_DIR"
JOURNALS = ".journal"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_root(option: str | Path | None = None) -> Path:
    """The archive root: the option, else $RUNBOOK_ARCHIVE, else the project's ``outputs/``."""
    if option:
        return Path(option)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists() and (checkout / "outputs").is_dir():
        return checkout / "outputs"
    return Path.cwd() / "outputs"


def is_url(value: str | Path | None) -> bool:
    """Whether an archive setting names object storage (``s3://bucket/prefix``) rather than a folder."""
    return isinstance(value, str) and value.startswith("s3://")


def open_archive(option: str | Path | None = None) -> Archive:
    """The archive the option, else ``$RUNBOOK_ARCHIVE``, else the project's ``outputs/`` names.

    ``s3://bucket/prefix`` opens the object-storage backend (:mod:`runbooklib.archive_s3`, its
    endpoint, region, credentials, retention and country from the archive settings file); anything
    else is a folder.
    """
    value = option or os.environ.get(ENV_VAR) or None
    if is_url(str(value) if value else None):
        from .archive_s3 import S3Archive

        return S3Archive(str(value))
    return Archive(default_root(option))


def lock_dir() -> Path:
    """Where run locks live: ``$RUNBOOK_LOCK_DIR``, else ``/run/lock/runbook``, else a per-user folder.

    Not inside the archive: two archives must not let the same runbook run twice on one environment.
    """
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    if os.access("/run/lock", os.W_OK):
        return Path("/run/lock/runbook")
    return Path.home() / ".cache" / "runbook" / "locks"


def _read_holder(fd: int, wait: bool = True) -> dict:
    # the holder writes its name right after taking the lock; give it a moment before saying "unknown"
    for _ in range(20 if wait else 1):
        raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if raw:
            try:
                return json.loads(raw)
            except ValueError:
                pass
        time.sleep(0.05)
    return {}


def _locks() -> Path:
    locks = lock_dir()
    if not locks.exists():
        locks.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            locks.chmod(0o1777)  # operators are different users; the sticky bit keeps their files theirs
    return locks


# environments whose suite lock this process holds: its own runs take their runbook locks under it
_SUITES_HELD: dict[str, dict] = {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def suite_lock(environment: str, holder: dict) -> Iterator[dict]:
    """Hold ``environment`` for a whole suite: no single run starts there until it ends, and it starts
    only while no single run holds a runbook there. Refuses (:class:`LockedError`), naming the holder.

    An flock, exclusive, on ``<env>.environment.lock``; every run takes it shared (see :func:`run_lock`),
    except the suite's own runs, in this process, which run under it. ``holder`` (operator, pid, since,
    suite id) is written into the file and may be updated while held (the yielded dict: call
    :func:`update_suite_holder`). As with the run lock, a dead holder's lock is free: the kernel drops it.
    """
    path = _locks() / f"{environment}.environment.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(fd)
            if other.get("suite") and _alive(other.get("pid")):
                raise LockedError(_suite_holds(environment, other, path)) from None
            runs = _runs_holding(environment)
            named = "; ".join(f"{r.get('notebook', '?')} by {r.get('operator', '?')} (pid {r.get('pid', '?')}, run {r.get('run_id', '?')}, "
                              f"since {r.get('since', '?')})" for r in runs) or "a runbook run that has not written its name yet"
            raise LockedError(
                f"environment {environment} has a runbook running: {named}. A suite must not interleave with it: wait for it "
                f"to finish (or check that process), then start the suite again; lock file {path}") from None
        held = True
        _write_holder(fd, holder)
        _SUITES_HELD[environment] = {"fd": fd, "holder": holder}
        yield holder
    finally:
        if held:
            _SUITES_HELD.pop(environment, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


def update_suite_holder(environment: str, **fields) -> None:
    """Add ``fields`` (the suite id, once known) to the holder written in the suite lock this process holds."""
    held = _SUITES_HELD.get(environment)
    if held:
        held["holder"].update(fields)
        _write_holder(held["fd"], held["holder"])


def _write_holder(fd: int, holder: dict) -> None:
    data = json.dumps(holder).encode()
    os.pwrite(fd, data, 0)  # write, then cut: a reader never sees an empty file while we hold it
    os.ftruncate(fd, len(data))


def _suite_holds(environment: str, other: dict, path: Path) -> str:
    return (f"environment {environment} is held by suite {other.get('suite', '?')} of {other.get('operator', '?')} (pid "
            f"{other.get('pid', '?')}, since {other.get('since', '?')}, archive {other.get('archive', '?')}): a single run "
            f"would interleave with its steps. Wait for the suite to finish, or stop it (Ctrl-C or kill -INT "
            f"{other.get('pid', '?')}; the same suite command resumes it later); lock file {path}")


def _runs_holding(environment: str) -> list[dict]:
    """The holders named in ``environment``'s runbook lock files whose process lives (a message's detail only)."""
    out = []
    for path in sorted(_locks().glob(f"{glob.escape(environment)}--*.lock")):
        try:
            raw = path.read_text().strip()
            other = json.loads(raw) if raw else {}
        except (OSError, ValueError):
            continue
        if other and _alive(other.get("pid")):
            out.append({"notebook": path.name[len(environment) + 2:-len(".lock")], **other})
    return out


@contextlib.contextmanager
def run_lock(environment: str, notebook: str, holder: dict) -> Iterator[None]:
    """Hold the lock for one notebook on one environment; refuse, naming the holder, if it is taken.

    The lock is an flock, so a crashed run never leaves a stale lock behind. A refusal never
    writes to the lock file, so the next refusal still names the holder. The environment's lock is
    taken shared first: refused while a suite holds the environment (:func:`suite_lock`), unless that
    suite is this process's, whose steps these runs are.
    """
    locks = _locks()
    env_fd = None
    if environment not in _SUITES_HELD:
        env_path = locks / f"{environment}.environment.lock"
        env_fd = os.open(env_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(env_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(env_fd)
            os.close(env_fd)
            raise LockedError(_suite_holds(environment, other, env_path)) from None
    path = locks / f"{environment}--{notebook}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except BaseException:
        if env_fd is not None:
            os.close(env_fd)
        raise
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(fd)
            who = other.get("operator", "another process (it has not written its name)")
            raise LockedError(
                f"{notebook} is already running on environment {environment}: held by {who} "
                f"(pid {other.get('pid', '?')}, run {other.get('run_id', '?')}, archive "
                f"{other.get('archive', '?')}, since {other.get('since', '?')}). Wait for it to finish, or "
                f"check that process; lock file {path}"
            ) from None
        held = True
        _write_holder(fd, holder)
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock
        if env_fd is not None:
            os.close(env_fd)


@dataclass
class VerifyReport:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # limits of what could be checked; not failures
    head: str | None = None  # the chain head as ``SEQ:SHA256``, a witness to keep outside the archive

    @property
    def ok(self) -> bool:
        return not self.problems


class Archive:
    """Writes and reads records under one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def location(self) -> str:
        """Where the records are, as an operator would name it (a folder here; ``s3://...`` in the bucket)."""
        return str(self.root)

    def check_residency(self, environment, stream=None) -> None:
        """Refuse records of ``environment`` if the archive is declared outside its data country.

        A folder has no declared country: it is on the runner's machine, whose location the inventory
        does not describe. The object-storage archive checks the ``country`` of its settings.
        """

    def read_bytes(self, rel: str) -> bytes:
        """A file of a record, by its path relative to the archive (as manifests and the ledger name it)."""
        path = self._inside(rel)
        if path is None:
            raise ArchiveError(f"{rel!r} points outside the archive at {self.root}")
        try:
            return path.read_bytes()
        except OSError:
            raise ArchiveError(f"{path} is missing; run `runbook verify`") from None

    def read_manifest(self, entry: dict) -> dict:
        """The manifest a ledger entry (``seq``, ``run_id``, ``manifest``, ``sha256``) names."""
        return json.loads(self.read_bytes(entry["manifest"]))

    # -- locks -------------------------------------------------------------------------------
    def run_lock(self, environment: str, notebook: str, holder: dict) -> contextlib.AbstractContextManager[None]:
        """The run lock for one notebook on one environment (see :func:`run_lock`; not per archive)."""
        return run_lock(environment, notebook, holder)

    @contextlib.contextmanager
    def _ledger_lock(self) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / "ledger.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- writing -----------------------------------------------------------------------------
    def record_base(self, environment: str, date: str, run_id: str, notebook: str) -> Path:
        """Path prefix of a record's files: ``<env>/<date>/<run-id>-<notebook>``."""
        return self.root / environment / date / f"{run_id}-{notebook}"

    def commit(self, manifest: dict, files: dict[str, tuple[Path, bytes]], base: Path | None = None) -> Path:
        """Write a record's files, then chain its manifest into the ledger. Returns the manifest path.

        ``files`` maps a role (``notebook``, ``html``) to the path and bytes to write; their hashes
        go into the manifest, whose own hash goes into the ledger.
        """
        manifest = dict(manifest)
        manifest["files"] = {}
        for role, (path, data) in files.items():
            _atomic_write(path, data)
            manifest["files"][role] = {"path": self._rel(path), "sha256": sha256_bytes(data)}
        if base is None:
            base = files["notebook"][0].with_suffix("")
        mpath = base.with_name(base.name + ".manifest.json")
        with self._ledger_lock():
            last = self._ledger_last()
            seq = last["seq"] + 1 if last else 1
            prev = last["sha256"] if last else GENESIS
            manifest["seq"] = seq
            manifest["prev_manifest_sha256"] = prev
            data = manifest_bytes(manifest)
            _atomic_write(mpath, data)
            line = {"seq": seq, "run_id": manifest["run_id"], "manifest": self._rel(mpath), "sha256": sha256_bytes(data)}
            with open(self.root / LEDGER, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._index_add(manifest, line)
        return mpath

    def _rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def _ledger_last(self) -> dict | None:
        """The ledger's last line, read from the end (commits stay O(1) as the archive grows)."""
        path = self.root / LEDGER
        if not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            block = 4096
            while True:
                start = max(0, size - block)
                f.seek(start)
                lines = f.read().splitlines()
                if start == 0 or len(lines) >= 2:
                    break
                block *= 2
        try:
            return json.loads(lines[-1])
        except (ValueError, IndexError):
            raise ArchiveError(f"{path}: the last ledger line is damaged; run `runbook verify`") from None

    def _ledger_entries(self) -> list[dict]:
        entries, damaged = self._ledger_lines()
        if damaged:
            n, why = damaged[0]
            raise ArchiveError(f"{self.root / LEDGER}:{n}: ledger line {why}; the archive was damaged or edited "
                               "by hand (`runbook verify` shows what else changed)")
        return entries

    def _ledger_lines(self) -> tuple[list[dict], list[tuple[int, str]]]:
        """The ledger's records, and the (line number, what is wrong) of every line that is not one."""
        path = self.root / LEDGER
        if not path.exists():
            return [], []
        out, damaged = [], []
        raw_text = path.read_bytes()
        lines = raw_text.split(b"\n")
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                last = n == len(lines) or (n == len(lines) - 1 and not lines[-1])
                damaged.append((n, "is cut short (a write that never finished)" if last and not raw_text.endswith(b"\n")
                                else "is not JSON"))
                continue
            if not isinstance(line, dict) or not {"seq", "run_id", "manifest", "sha256"} <= set(line):
                damaged.append((n, "is not a ledger record (seq, run_id, manifest, sha256)"))
                continue
            out.append(line)
        return out, damaged

    def head(self) -> str | None:
        """The chain head, ``SEQ:SHA256`` of the newest record: print it where the archive's owner
        cannot rewrite it (a CI log), and check against it later with ``runbook verify --head``."""
        last = self._ledger_last()
        return f"{last['seq']}:{last['sha256']}" if last else None

    # -- journals of runs under way ------------------------------------------------------------
    @contextlib.contextmanager
    def journal(self, run_id: str, info: dict) -> Iterator[Path]:
        """A folder for a run under way, ``<root>/.journal/<run-id>/``: ``run.json`` (what the record
        needs if the runner dies) and ``journal.jsonl`` (what the notebook changed, as it happens).

        An flock on ``alive.lock`` is held while the runner lives; the next ``runbook`` command takes
        over a folder whose lock is free (the runner was killed) and archives it. The caller removes
        the folder once the record is archived (:meth:`close_journal`).
        """
        journals = self.root / JOURNALS
        journals.mkdir(parents=True, exist_ok=True)
        staging = journals / f".{run_id}.new"
        staging.mkdir(mode=0o700)
        fd = os.open(staging / "alive.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            (staging / "run.json").write_text(json.dumps(info, sort_keys=True) + "\n")
            final = journals / run_id
            os.rename(staging, final)  # appears whole, already locked
            yield final
        finally:
            os.close(fd)

    def close_journal(self, run_id: str) -> None:
        shutil.rmtree(self.root / JOURNALS / run_id, ignore_errors=True)

    def unfinished_runs(self) -> Iterator[Path]:
        """Journal folders of runs whose runner died; each is yielded with its lock held by us."""
        journals = self.root / JOURNALS
        if not journals.is_dir():
            return
        for folder in sorted(journals.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / "alive.lock", os.O_RDWR)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its runner is alive
                if not folder.exists():
                    continue  # another command archived it while we waited
                if folder.name.startswith("."):  # died before it began: nothing ran
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                yield folder
            finally:
                os.close(fd)

    # -- before a run ------------------------------------------------------------------------
    def _unwritable(self) -> OSError | None:
        """Why the archive's folder (the bucket archive's cache) cannot be written, or None."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            return e
        return None

    def check_ready(self) -> None:
        """Refuse, before anything runs, unless this archive can take a record.

        A run that cannot be archived must not start: with ``--apply`` it would change hosts and
        leave no record. Checked: the root is a writable folder, every ledger line is whole, the
        index opens.
        """
        where = f"the archive at {self.root} cannot take a record, so nothing was run"
        e = self._unwritable()
        if e is not None:
            raise ArchiveNotReady(f"{where}: {e.strerror} ({e.filename}); pass a writable folder with --archive")
        _, damaged = self._ledger_lines()
        if damaged:
            n, why = damaged[0]
            raise ArchiveNotReady(
                f"{where}: {self.root / LEDGER} line {n} {why}. Run `runbook verify` to see the damage, restore "
                "ledger.jsonl from a backup (or, if the last record's files are intact, remove only the cut "
                "line and re-check)")
        if (self.root / INDEX).exists():
            try:
                db = sqlite3.connect(f"file:{self.root / INDEX}?mode=ro", uri=True, timeout=30)
                try:
                    if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                        raise sqlite3.DatabaseError("quick_check failed")
                    db.execute("SELECT count(*) FROM runs").fetchone()
                finally:
                    db.close()
            except sqlite3.DatabaseError as e:
                raise ArchiveNotReady(f"{where}: {self.root / INDEX} is damaged ({e}); `runbook reindex` rebuilds it "
                                      "from the ledger, then `runbook verify`") from None

    # -- index -------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        try:
            return self._open_db()
        except sqlite3.DatabaseError as e:
            raise ArchiveError(f"{self.root / INDEX} is damaged ({e}); `runbook reindex` rebuilds it from the "
                               "ledger") from None

    def _open_db(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / INDEX, timeout=30)
        columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
        # an index written before these columns: add them (its rows show them empty; `reindex` fills them),
        # keeping the chain head it remembers
        for column, kind in (("changes", "INTEGER"), ("verdict", "TEXT"), ("interactive", "INTEGER"), ("reason", "TEXT")):
            if columns and column not in columns:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS runs (
                seq INTEGER PRIMARY KEY, run_id TEXT UNIQUE NOT NULL, notebook TEXT, environment TEXT,
                status TEXT, mode TEXT, started_at TEXT, ended_at TEXT, duration_s REAL,
                operator TEXT, manifest TEXT, changes INTEGER, verdict TEXT, interactive INTEGER, reason TEXT);
            CREATE INDEX IF NOT EXISTS runs_env ON runs(environment, started_at);
            CREATE INDEX IF NOT EXISTS runs_nb ON runs(notebook, started_at);
            CREATE INDEX IF NOT EXISTS runs_status ON runs(status, started_at);
            CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
            CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER, sha256 TEXT);
            """
        )
        return db

    def _index_add(self, manifest: dict, line: dict, db: sqlite3.Connection | None = None) -> None:
        own = db is None
        db = db or self._db()
        try:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (line["seq"], manifest["run_id"], manifest.get("notebook"), manifest.get("environment", {}).get("name"),
                 manifest.get("status"), manifest.get("mode"), manifest.get("started_at"), manifest.get("ended_at"),
                 manifest.get("duration_s"), manifest.get("operator"), line["manifest"],
                 len(manifest.get("changes") or []), (manifest.get("verdict") or {}).get("verdict"),
                 int(bool(manifest.get("interactive"))), manifest.get("reason") or ""),
            )
            db.execute("INSERT INTO head VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, "
                       "sha256=excluded.sha256 WHERE excluded.seq >= head.seq", (line["seq"], line["sha256"]))
            if own:
                db.commit()
        finally:
            if own:
                db.close()

    def _index_or_moved_aside(self) -> sqlite3.Connection:
        """The index database, opened; a damaged one is moved aside first (``self.moved_aside`` says where)."""
        try:
            db = self._open_db()
            db.execute("SELECT count(*) FROM runs").fetchone()
            return db
        except sqlite3.DatabaseError:
            self.moved_aside = self.root / f"{INDEX}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(self.root / INDEX, self.moved_aside)
            return self._db()

    def reindex(self) -> int:
        """Rebuild the query index from the ledger and manifests (keeps the remembered head).

        A damaged index file is moved aside (``index.sqlite.damaged-<time>``) first; the head it
        remembered is then lost, which ``reindex`` says.
        """
        entries = self._ledger_entries()
        self.moved_aside: Path | None = None
        db = self._index_or_moved_aside()
        try:
            db.execute("DELETE FROM runs")
            for line in entries:
                mpath = self.root / line["manifest"]
                try:
                    manifest = json.loads(mpath.read_text())
                except (OSError, ValueError):
                    manifest = {"run_id": line["run_id"], "status": "missing"}
                self._index_add(manifest, line, db)
            db.commit()
        finally:
            db.close()
        return len(entries)

    def runs(self, environment: str | None = None, notebook: str | None = None, status: str | None = None,
             since: str | None = None, until: str | None = None, limit: int = 50) -> list[dict]:
        """Newest first, filtered. Dates are ISO strings compared on the start time."""
        if not (self.root / INDEX).exists() and (self.root / LEDGER).exists():
            self.reindex()
        if not (self.root / INDEX).exists():
            return []
        where, args = [], []
        for col, value in (("environment", environment), ("notebook", notebook), ("status", status)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if since:
            where.append("started_at >= ?")
            args.append(since)
        if until:
            where.append("started_at < ?")
            args.append(until)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        db = self._db()
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql, (*args, limit))]
        finally:
            db.close()

    def manifest(self, run: str) -> dict:
        """One run's manifest, by run id or a unique prefix of it."""
        matches = [e for e in self._ledger_entries() if e["run_id"].startswith(run)]
        if not matches:
            raise ArchiveError(f"no run {run!r} in the archive at {self.root}; `runbook runs` lists them")
        if len(matches) > 1 and not any(e["run_id"] == run for e in matches):
            raise ArchiveError(f"{run!r} matches {len(matches)} runs; give more of the run id")
        entry = next((e for e in matches if e["run_id"] == run), matches[0])
        path = self.root / entry["manifest"]
        try:
            return json.loads(path.read_text())
        except OSError:
            raise ArchiveError(f"{path}: manifest of run {entry['run_id']} is missing; run `runbook verify`") from None

    # -- verification ------------------------------------------------------------------------
    def verify(self, head: str | None = None) -> VerifyReport:
        """Recompute the chain and every file hash from the records themselves; never trust the index.

        Problems come in ledger order, first one first, then files that belong to no record, then
        where the index disagrees with the records. ``head`` (``SEQ:SHA256`` or a SHA256 printed by an
        earlier run) is a witness kept outside the archive: it must still be in the chain.
        """
        report = VerifyReport()
        entries, damaged = self._ledger_lines()
        for n, why in damaged:
            report.problems.append(f"{LEDGER} line {n} {why}; the ledger was damaged or edited")
        report.records = len(entries)
        prev = GENESIS
        owned: set[str] = set()  # every path that belongs to a record
        manifests: dict[int, dict] = {}
        for pos, line in enumerate(entries, 1):
            seq, run_id = line.get("seq"), line.get("run_id", "?")
            where = f"record {pos} (run {run_id})"
            rel = str(line.get("manifest", ""))
            owned.add(rel)
            if seq != pos:
                report.problems.append(f"{where}: ledger says seq {seq} at position {pos}; records were removed or reordered")
            mpath = self._inside(rel)
            if mpath is None:
                report.problems.append(f"{where}: manifest path {rel!r} points outside the archive")
                prev = line.get("sha256", prev)
                continue
            if mpath.is_symlink():
                report.problems.append(f"{where}: manifest {rel} is a symbolic link; a record is a regular file")
            try:
                data = mpath.read_bytes()
            except OSError:
                report.problems.append(f"{where}: manifest {rel} is missing; the record was removed")
                prev = line.get("sha256", prev)
                continue
            if sha256_bytes(data) != line.get("sha256"):
                report.problems.append(f"{where}: manifest {rel} was edited (its sha256 no longer matches the ledger)")
            try:
                manifest = json.loads(data)
            except ValueError:
                report.problems.append(f"{where}: manifest {rel} is not JSON")
                prev = line.get("sha256", prev)
                continue
            if not isinstance(manifest, dict):
                report.problems.append(f"{where}: manifest {rel} is not a record")
                prev = line.get("sha256", prev)
                continue
            manifests[pos] = manifest
            if manifest.get("run_id") != run_id or manifest.get("seq") != seq:
                report.problems.append(f"{where}: manifest {rel} belongs to run {manifest.get('run_id')} "
                                       f"(seq {manifest.get('seq')}); records were swapped")
            if manifest.get("prev_manifest_sha256") != prev:
                report.problems.append(f"{where}: chain broken: it follows a record other than the one before it "
                                       "in the ledger; a record was removed or reordered")
            for role, info in (manifest.get("files") or {}).items():
                frel = str(info.get("path", ""))
                owned.add(frel)
                fpath = self._inside(frel)
                if fpath is None:
                    report.problems.append(f"{where}: {role} path {frel!r} points outside the archive")
                elif fpath.is_symlink():
                    report.problems.append(f"{where}: {role} {frel} is a symbolic link; a record is a regular file")
                elif not fpath.exists():
                    report.problems.append(f"{where}: {role} {frel} is missing")
                elif sha256_file(fpath) != info.get("sha256"):
                    report.problems.append(f"{where}: {role} {frel} was changed after it was archived")
            prev = line.get("sha256", prev)
        report.problems += self._strays(owned)
        report.problems += self._index_disagreements(entries, manifests, report)
        report.head = f"{entries[-1]['seq']}:{entries[-1]['sha256']}" if entries else None
        if head:
            report.problems += self._against_witness(head, entries)
        return report

    def _inside(self, rel: str) -> Path | None:
        """``root/rel`` if it stays inside the archive (no absolute path, no ``..``), else None."""
        path = Path(rel)
        if not rel or path.is_absolute() or ".." in path.parts:
            return None
        return self.root / path

    def _strays(self, owned: set[str]) -> list[str]:
        """Files, links and folders that no record accounts for. Only the runner writes here."""
        out = []
        infra = {LEDGER, "README.md"}
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            rel_dir = here.relative_to(self.root)
            top = rel_dir.parts[0] if rel_dir.parts else ""
            if top in (".locks", JOURNALS):
                dirnames[:] = []  # the runner's own working folders
                continue
            for name in sorted(dirnames):
                if (here / name).is_symlink():
                    out.append(f"{rel_dir / name}: a symbolic link to a folder inside the archive; records are "
                               "regular files (a link can point anywhere); remove it")
            dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
            for name in sorted(filenames):
                rel = str(rel_dir / name) if rel_dir.parts else name
                if rel in owned:
                    continue
                if not rel_dir.parts and (name in infra or name == INDEX
                                          or name.startswith((INDEX + "-", INDEX + ".damaged-"))):
                    continue
                if (here / name).is_symlink():
                    out.append(f"{rel}: a symbolic link inside the archive; records are regular files (a link can "
                               "point anywhere); remove it")
                elif name.endswith(".manifest.json"):
                    out.append(f"{rel}: manifest is not in the ledger; a record was added or moved by hand")
                else:
                    out.append(f"{rel}: belongs to no record; only the runner writes into the archive (a notebook "
                               "that writes here, or a hand edit); move it out, after checking it for secrets")
        return out

    def _index_disagreements(self, entries: list[dict], manifests: dict[int, dict], report: VerifyReport) -> list[str]:
        """Where the query index says something the records do not (it is derived, so it may lie)."""
        path = self.root / INDEX
        if not path.exists():
            if entries:
                report.warnings.append(
                    f"{INDEX} is missing, so records cut from the end of the chain cannot be detected here; "
                    "compare the chain head with a witness (`runbook verify --head SEQ:SHA256` with the head an "
                    "earlier run printed)")
            return []
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                db.row_factory = sqlite3.Row
                rows = {r["seq"]: dict(r) for r in db.execute("SELECT * FROM runs")}
                remembered = db.execute("SELECT seq, sha256 FROM head WHERE id = 1").fetchone()
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            return [f"{INDEX} is damaged ({e}); nothing in it was used. `runbook reindex` rebuilds it from the ledger"]
        out = []
        by_seq = {line["seq"]: line for line in entries}
        if remembered and remembered["seq"] > len(entries):
            out.append(f"ledger ends at record {len(entries)} but record {remembered['seq']} was archived; "
                       "records were cut from the end")
        elif remembered and remembered["seq"] in by_seq and by_seq[remembered["seq"]]["sha256"] != remembered["sha256"]:
            out.append(f"record {remembered['seq']} was rewritten after it was archived: its ledger hash is not the "
                       "one the index remembered")
        for pos, manifest in manifests.items():
            row = rows.pop(pos, None)
            if row is None:
                out.append(f"{INDEX}: record {pos} (run {manifest.get('run_id')}) is not in the index; "
                           "`runbook reindex` rebuilds it")
                continue
            truth = {"run_id": manifest.get("run_id"), "notebook": manifest.get("notebook"),
                     "environment": (manifest.get("environment") or {}).get("name"), "status": manifest.get("status"),
                     "mode": manifest.get("mode"), "started_at": manifest.get("started_at"),
                     "operator": manifest.get("operator"), "manifest": entries[pos - 1].get("manifest")}
            for column, value in truth.items():
                if row.get(column) != value:
                    out.append(f"{INDEX}: record {pos} (run {manifest.get('run_id')}) has {column} "
                               f"{row.get(column)!r} in the index but {value!r} in its manifest; the index was edited "
                               "(`runs` showed the index; `runbook reindex` rebuilds it)")
        for seq in sorted(set(rows) - set(range(1, len(entries) + 1))):
            out.append(f"{INDEX}: lists record {seq} (run {rows[seq].get('run_id')}) that is not in the ledger")
        return out

    @staticmethod
    def _against_witness(head: str, entries: list[dict]) -> list[str]:
        seq_text, _, sha = head.strip().rpartition(":")
        sha = sha.lower()
        if len(sha) < 12 or any(c not in "0123456789abcdef" for c in sha):
            return [f"--head {head!r}: expected SEQ:SHA256 (or a SHA256) as printed after a run"]
        matches = [line for line in entries if str(line.get("sha256", "")).startswith(sha)]
        if not matches:
            now = (f"the chain now ends at {entries[-1]['seq']}:{entries[-1]['sha256'][:12]}..." if entries
                   else "the archive has no records")
            return [f"witness {head} is not in the chain: the record it names was removed or rewritten ({now})"]
        if seq_text and str(matches[0].get("seq")) != seq_text:
            moved = matches[0].get("seq")
            return [f"witness {head}: that record is now at seq {moved}; records before it were removed or reordered"]
        return []
