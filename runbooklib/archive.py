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
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArchiveError, LockedError

GENESIS = "0" * 64
LEDGER = "ledger.jsonl"
INDEX = "index.sqlite"
ENV_VAR = "RUNBOOK_ARCHIVE"


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


@dataclass
class VerifyReport:
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Archive:
    """Writes and reads records under one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run_lock(self, environment: str, notebook: str, holder: dict) -> Iterator[None]:
        """Hold the lock for one notebook on one environment; refuse if someone else holds it.

        The lock is an flock, so a crashed run never leaves a stale lock behind.
        """
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / f"{environment}--{notebook}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    other = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                except ValueError:
                    other = {}
                who = other.get("operator", "another process")
                raise LockedError(
                    f"{notebook} is already running on environment {environment}: held by {who} "
                    f"(pid {other.get('pid', '?')}, run {other.get('run_id', '?')}, since "
                    f"{other.get('since', '?')}). Wait for it to finish, or check that process; "
                    f"lock file {path}"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock

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

    def commit(self, manifest: dict, files: dict[str, tuple[Path, bytes]]) -> Path:
        """Write a record's files, then chain its manifest into the ledger. Returns the manifest path.

        ``files`` maps a role (``notebook``, ``html``) to the path and bytes to write; their hashes
        go into the manifest, whose own hash goes into the ledger.
        """
        manifest = dict(manifest)
        manifest["files"] = {}
        for role, (path, data) in files.items():
            _atomic_write(path, data)
            manifest["files"][role] = {"path": self._rel(path), "sha256": sha256_bytes(data)}
        base = files["notebook"][0]
        mpath = base.with_name(base.name.removesuffix(".ipynb") + ".manifest.json")
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
        path = self.root / LEDGER
        if not path.exists():
            return []
        out = []
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                raise ArchiveError(f"{path}:{n}: ledger line is not JSON; the archive was edited by hand "
                                   "(run `runbook verify` to see what else changed)") from None
        return out

    # -- index -------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / INDEX, timeout=30)
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS runs (
                seq INTEGER PRIMARY KEY, run_id TEXT UNIQUE NOT NULL, notebook TEXT, environment TEXT,
                status TEXT, mode TEXT, started_at TEXT, ended_at TEXT, duration_s REAL,
                operator TEXT, manifest TEXT);
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
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (line["seq"], manifest["run_id"], manifest.get("notebook"), manifest.get("environment", {}).get("name"),
                 manifest.get("status"), manifest.get("mode"), manifest.get("started_at"), manifest.get("ended_at"),
                 manifest.get("duration_s"), manifest.get("operator"), line["manifest"]),
            )
            db.execute("INSERT INTO head VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, "
                       "sha256=excluded.sha256 WHERE excluded.seq >= head.seq", (line["seq"], line["sha256"]))
            if own:
                db.commit()
        finally:
            if own:
                db.close()

    def reindex(self) -> int:
        """Rebuild the query index from the ledger and manifests (keeps the remembered head)."""
        entries = self._ledger_entries()
        db = self._db()
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
    def verify(self) -> VerifyReport:
        """Recompute the chain and every file hash. Problems come in ledger order, first one first."""
        report = VerifyReport()
        entries = self._ledger_entries()
        report.records = len(entries)
        prev = GENESIS
        listed = set()
        for pos, line in enumerate(entries, 1):
            seq, run_id = line.get("seq"), line.get("run_id", "?")
            where = f"record {pos} (run {run_id})"
            listed.add(line.get("manifest"))
            if seq != pos:
                report.problems.append(f"{where}: ledger says seq {seq} at position {pos}; records were removed or reordered")
            mpath = self.root / line.get("manifest", "")
            try:
                data = mpath.read_bytes()
            except OSError:
                report.problems.append(f"{where}: manifest {line.get('manifest')} is missing; the record was removed")
                prev = line.get("sha256", prev)
                continue
            if sha256_bytes(data) != line.get("sha256"):
                report.problems.append(f"{where}: manifest {line['manifest']} was edited (its sha256 no longer matches the ledger)")
            try:
                manifest = json.loads(data)
            except ValueError:
                report.problems.append(f"{where}: manifest {line['manifest']} is not JSON")
                prev = line.get("sha256", prev)
                continue
            if manifest.get("run_id") != run_id or manifest.get("seq") != seq:
                report.problems.append(f"{where}: manifest {line['manifest']} belongs to run {manifest.get('run_id')} "
                                       f"(seq {manifest.get('seq')}); records were swapped")
            if manifest.get("prev_manifest_sha256") != prev:
                report.problems.append(f"{where}: chain broken: it follows a record other than the one before it "
                                       "in the ledger; a record was removed or reordered")
            for role, info in manifest.get("files", {}).items():
                fpath = self.root / info["path"]
                if not fpath.exists():
                    report.problems.append(f"{where}: {role} {info['path']} is missing")
                elif sha256_file(fpath) != info["sha256"]:
                    report.problems.append(f"{where}: {role} {info['path']} was changed after it was archived")
            prev = line.get("sha256", prev)
        for mpath in sorted(self.root.glob("*/*/*.manifest.json")):
            rel = self._rel(mpath)
            if rel not in listed:
                report.problems.append(f"{rel}: manifest is not in the ledger; a record was added or moved by hand")
        if (self.root / INDEX).exists():
            db = self._db()
            try:
                head = db.execute("SELECT seq FROM head WHERE id = 1").fetchone()
            finally:
                db.close()
            if head and head[0] > len(entries):
                report.problems.append(f"ledger ends at record {len(entries)} but record {head[0]} was archived; "
                                       "records were cut from the end")
        return report
