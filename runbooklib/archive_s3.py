"""The archive on S3-compatible object storage with Object Lock: one place for a team's records.

Selected by ``--archive s3://bucket/prefix`` (or ``$RUNBOOK_ARCHIVE``). Everything else comes from
the archive settings file (``$RUNBOOK_ARCHIVE_SETTINGS``, else ``~/.config/runbook/archive.yaml``,
else ``/etc/runbook/archive.yaml``)::

    endpoint: https://s3.storage.example.ru     # the store's API (http only for a store on this machine)
    region: ru-central-1
    country: RU                                 # where the store keeps the data: checked against data_country
    access_key: env:RUNBOOK_S3_ACCESS_KEY       # secret references, as in parameter files
    secret_key: file:/etc/runbook/s3-secret-key
    retention: {mode: compliance, days: 2555}   # Object Lock on every record (governance or compliance)
    lock_lease_s: 300                           # the run lock's lease, renewed while the run lives

Layout under ``s3://bucket/prefix/``, the same relative paths as the folder archive::

    <environment>/<date>/<run-id>-<notebook>.{ipynb,html,manifest.json}   written once, Object Lock
    ledger/<seq, 12 digits>.json   one ledger line per record, created only if absent (If-None-Match: *)
    locks/<environment>--<notebook>.json   run locks: a holder, a lease, taken and renewed with If-Match

A record is written once (If-None-Match: *) with retention, so the store refuses to overwrite or
delete it until the retention ends. A store keeps the first version of a key even when someone
writes over it or hides it behind a delete marker, so every read and ``verify`` uses the first
version of each key, and ``verify`` says when later versions or delete markers exist.

On this machine, under the cache folder (``$RUNBOOK_ARCHIVE_CACHE``, else ``~/.cache/runbook/archive``,
then ``<host>/<bucket>/<prefix>``): the query index (a cache of the bucket, which ``reindex``
rebuilds), the journals of runs under way, and a copy of each record this machine wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import ipaddress
import json
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from .archive import GENESIS, INDEX, Archive, VerifyReport, _atomic_write, manifest_bytes, run_lock, sha256_bytes
from .errors import ArchiveError, ArchiveNotReady, LockedError, SecretError
from .s3 import S3Client, S3Error, Version
from .secrets import SecretRef

SETTINGS_ENV = "RUNBOOK_ARCHIVE_SETTINGS"
CACHE_ENV = "RUNBOOK_ARCHIVE_CACHE"
LEDGER_DIR = "ledger/"
LOCKS_DIR = "locks/"
WORKERS = 16  # parallel reads and writes (reindex, verify, push)


def settings_path() -> Path:
    if os.environ.get(SETTINGS_ENV):
        return Path(os.environ[SETTINGS_ENV]).expanduser()
    user = Path("~/.config/runbook/archive.yaml").expanduser()
    return user if user.exists() or not Path("/etc/runbook/archive.yaml").exists() else Path("/etc/runbook/archive.yaml")


@dataclass
class S3Settings:
    url: str
    bucket: str
    prefix: str  # "" or "some/prefix/"
    endpoint: str
    region: str
    country: str
    access_key: SecretRef
    secret_key: SecretRef
    retention_mode: str  # GOVERNANCE or COMPLIANCE
    retention_days: int
    lock_lease_s: int
    ca_file: str | None
    source: Path

    @classmethod
    def load(cls, url: str, path: Path | None = None) -> S3Settings:
        path = path or settings_path()
        parsed = urllib.parse.urlsplit(url)
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if parsed.scheme != "s3" or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket or "") or parsed.query:
            raise ArchiveNotReady(f"archive {url!r}: expected s3://bucket/prefix (a bucket name of 3-63 lower-case letters, "
                                  "digits, dots and hyphens)")
        if not path.is_file():
            raise ArchiveNotReady(
                f"archive {url}: no archive settings file at {path}. Write one with endpoint, region, country, access_key, "
                f"secret_key and retention (see the README, 'A team's archive'), or point ${SETTINGS_ENV} at it")
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ArchiveNotReady(f"{path}: cannot be read as YAML ({e})") from None
        if not isinstance(doc, dict):
            raise ArchiveNotReady(f"{path}: expected a mapping of settings (endpoint, region, country, ...)")

        def bad(field: str, what: str) -> ArchiveNotReady:
            return ArchiveNotReady(f"{path}: {field}: {what}")

        known = {"url", "endpoint", "region", "country", "access_key", "secret_key", "retention", "lock_lease_s", "ca_file"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise bad(unknown[0], f"not a setting (known: {', '.join(sorted(known))})")
        if doc.get("url") and doc["url"].rstrip("/") != url.rstrip("/"):
            raise bad("url", f"these settings are for {doc['url']}, not for {url}; use the settings file of that archive")
        endpoint = str(doc.get("endpoint") or "")
        ep = urllib.parse.urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise bad("endpoint", "expected the store's address, https://host[:port]")
        if ep.scheme == "http" and not _loopback(ep.hostname):
            raise bad("endpoint", f"{endpoint} is plain http to another machine: the credentials and records would cross the "
                                  "network in the clear; use https (http is for a store on this machine only)")
        country = str(doc.get("country") or "")
        if not re.fullmatch(r"[A-Z]{2}", country):
            raise bad("country", "expected the two-letter country code (ISO 3166-1) where the store keeps the data, e.g. RU")
        refs = {}
        for field in ("access_key", "secret_key"):
            try:
                ref = SecretRef.parse(doc.get(field))
            except ValueError as e:
                raise bad(field, str(e)) from None
            if ref.is_literal:
                raise bad(field, "a literal credential is not allowed here; give a reference, env:NAME or file:PATH")
            refs[field] = ref
        retention = doc.get("retention") or {}
        if not isinstance(retention, dict):
            raise bad("retention", "expected {mode: compliance|governance, days: N}")
        mode = str(retention.get("mode", "")).lower()
        if mode not in ("compliance", "governance"):
            raise bad("retention.mode", "expected compliance (no one can shorten it or delete a record) or governance "
                                        "(users with the bypass permission can)")
        days = retention.get("days")
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
            raise bad("retention.days", "expected a whole number of days, 1 to 36500")
        lease = doc.get("lock_lease_s", 300)
        if not isinstance(lease, int) or isinstance(lease, bool) or not 1 <= lease <= 86400:
            raise bad("lock_lease_s", "expected seconds, 1 to 86400")
        return cls(url=url, bucket=bucket, prefix=prefix + "/" if prefix else "", endpoint=endpoint,
                   region=str(doc.get("region") or "us-east-1"), country=country, access_key=refs["access_key"],
                   secret_key=refs["secret_key"], retention_mode=mode.upper(), retention_days=days, lock_lease_s=lease,
                   ca_file=doc.get("ca_file"), source=path)

    def client(self) -> S3Client:
        values = {}
        for field in ("access_key", "secret_key"):
            ref = getattr(self, field)
            try:
                values[field] = ref.resolve(self.source.parent, field=f"{self.source}: {field}")
            except SecretError as e:
                raise ArchiveNotReady(str(e)) from None
        return S3Client(self.endpoint, self.region, values["access_key"], values["secret_key"], ca_file=self.ca_file)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cache_dir(settings: S3Settings) -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "runbook", "archive")
    host = urllib.parse.urlsplit(settings.endpoint).netloc.replace(":", "_")
    return Path(base).expanduser() / host / settings.bucket / (settings.prefix.strip("/").replace("/", "_") or "_")


def _seq_of(key: str) -> int | None:
    m = re.fullmatch(r"(\d{12})\.json", key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def _originals(versions: Iterable[Version]) -> dict[str, dict]:
    """Per key: the first version written (``original``), how many were written after it, and whether
    a delete marker hides it now. Listings give each key's versions newest first."""
    out: dict[str, dict] = {}
    for v in versions:
        info = out.setdefault(v.key, {"original": None, "later": -1, "hidden": False, "seen": False})
        if not info["seen"]:
            info["seen"] = True
            info["hidden"] = v.delete_marker
        if not v.delete_marker:
            info["original"] = v
            info["later"] += 1
    return out


class S3Archive(Archive):
    """The archive in a bucket; the same public methods as the folder archive."""

    def __init__(self, url: str, settings: S3Settings | None = None):
        self.settings = settings or S3Settings.load(url)
        super().__init__(cache_dir(self.settings))
        self.url = url.rstrip("/")
        self.bucket = self.settings.bucket
        self.prefix = self.settings.prefix
        self._client: S3Client | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def location(self) -> str:
        return self.url

    @property
    def s3(self) -> S3Client:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def _ledger_key(self, seq: int) -> str:
        return f"{self.prefix}{LEDGER_DIR}{seq:012d}.json"

    def _retention(self) -> tuple[str, dt.datetime]:
        until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.settings.retention_days)
        return self.settings.retention_mode, until

    def _put_once(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write a record's object once, with retention. An object already there with the same bytes
        (a retried write that had landed) is fine; other bytes there are refused."""
        try:
            self.s3.put(self.bucket, key, data, if_none_match=True, retention=self._retention(), content_type=content_type)
        except S3Error as e:
            if e.status != 412:
                raise ArchiveError(f"cannot store {self.url}/{key[len(self.prefix):]}: {e}") from None
            there = self._read_original(key)
            if there != data:
                raise ArchiveError(f"{self.url}/{key[len(self.prefix):]} already holds other bytes; a record is written "
                                   "once, so nothing was overwritten (`runbook verify` checks the archive)") from None

    def _read_original(self, key: str) -> bytes | None:
        """The first version of ``key`` (the one written with retention), or None if the store has none."""
        versions = [v for v in self.s3.versions(self.bucket, key) if v.key == key]
        original = _originals(versions).get(key, {}).get("original")
        if original is None:
            return None
        return self.s3.get(self.bucket, key, original.version_id)

    def _get(self, key: str) -> bytes | None:
        try:
            return self.s3.get(self.bucket, key)
        except S3Error as e:
            if e.status == 404:
                return None
            raise ArchiveError(f"cannot read {self.url}/{key[len(self.prefix):]}: {e}") from None

    def _trusted(self, key: str, sha256: str) -> bytes | None:
        """An object's bytes, checked against the hash the chain holds; the first version if the
        current one is not it (someone wrote over the record). None when neither matches."""
        data = self._get(key)
        if data is not None and sha256_bytes(data) == sha256:
            return data
        original = self._read_original(key)
        return original if original is not None and sha256_bytes(original) == sha256 else None

    # -- before a run --------------------------------------------------------------------------
    def check_ready(self) -> None:
        where = f"the archive at {self.url} cannot take a record, so nothing was run"
        e = self._unwritable()
        if e is not None:
            raise ArchiveNotReady(f"{where}: its cache folder {self.root} is not writable ({e.strerror}); set "
                                  f"${CACHE_ENV} to a writable folder")
        try:
            locked = self.s3.object_lock_enabled(self.bucket)
        except S3Error as e:
            hint = ("create it with Object Lock enabled (`runbook archive init`, or your provider's console)"
                    if e.code == "NoSuchBucket" else f"check endpoint and credentials in {self.settings.source}")
            raise ArchiveNotReady(f"{where}: {e}; {hint}") from None
        if not locked:
            raise ArchiveNotReady(f"{where}: bucket {self.bucket} has no Object Lock, so records could be changed or "
                                  "deleted; Object Lock can only be enabled when a bucket is created: create a new one "
                                  "with it (`runbook archive init`) and `runbook archive push` the records there")
        try:
            db = self._open_db()
            try:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise ArchiveNotReady(f"{where}: its index cache {self.root / INDEX} is damaged ({e}); `runbook reindex` "
                                  "rebuilds it from the bucket") from None
        self._store_pending()

    def check_residency(self, environment, stream=None) -> None:
        country, wanted = self.settings.country, environment.data_country
        if country == wanted:
            return
        what = (f"the archive {self.url} keeps its records in {country} ({self.settings.source}: country), but environment "
                f"{environment.name} requires its data in {wanted} (environment.data_country): records describe its "
                "personal-data systems")
        raise ArchiveNotReady(f"{what}. Nothing was run: use an archive in {wanted}")

    def create_bucket(self) -> bool:
        """Create the bucket with Object Lock; False if it already existed (with Object Lock)."""
        try:
            if self.s3.object_lock_enabled(self.bucket):
                return False
            raise ArchiveNotReady(f"bucket {self.bucket} exists without Object Lock; records there could be deleted. "
                                  "Object Lock is set when a bucket is created: choose another bucket name")
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise ArchiveError(f"{self.url}: {e}") from None
        try:
            self.s3.create_bucket(self.bucket, object_lock=True)
        except S3Error as e:
            raise ArchiveError(f"cannot create bucket {self.bucket}: {e}") from None
        return True

    # -- the run lock, shared by every machine ------------------------------------------------------
    @contextlib.contextmanager
    def run_lock(self, environment: str, notebook: str, holder: dict) -> Iterator[None]:
        """This machine's lock (as the folder archive takes it), then the bucket's, which every machine
        using this archive sees: a lease renewed while the run lives, taken over only once it has expired."""
        with run_lock(environment, notebook, holder), BucketLock(self, environment, notebook, holder):
            yield

    # -- writing -------------------------------------------------------------------------------
    def commit(self, manifest: dict, files: dict[str, tuple[Path, bytes]], base: Path | None = None) -> Path:
        """Store the record's files, claim the next place in the chain (a ledger object created only if
        absent: a runner that loses the race takes the next), then store the manifest. Returns the
        manifest's path in this machine's copy."""
        manifest = dict(manifest)
        manifest["files"] = {}
        uploads = []
        for role, (path, data) in files.items():
            rel = self._rel(path)
            _atomic_write(path, data)
            manifest["files"][role] = {"path": rel, "sha256": sha256_bytes(data)}
            uploads.append((self.key(rel), data))
        self._parallel(lambda u: self._put_once(*u), uploads)
        if base is None:
            base = files["notebook"][0].with_suffix("")
        mpath = base.with_name(base.name + ".manifest.json")
        mrel = self._rel(mpath)
        self._store_pending()
        with self._ledger_lock():  # runners on this machine take turns; other machines race on the ledger key
            for _attempt in range(200):
                last = self._ledger_last()
                seq = last["seq"] + 1 if last else 1
                manifest["seq"] = seq
                manifest["prev_manifest_sha256"] = last["sha256"] if last else GENESIS
                data = manifest_bytes(manifest)
                line = {"seq": seq, "run_id": manifest["run_id"], "manifest": mrel, "sha256": sha256_bytes(data)}
                try:
                    self.s3.put(self.bucket, self._ledger_key(seq), (json.dumps(line, sort_keys=True) + "\n").encode(),
                                if_none_match=True, retention=self._retention(), content_type="application/json")
                    break
                except S3Error as e:
                    if e.status != 412:
                        raise ArchiveError(f"cannot add record {seq} to the ledger of {self.url}: {e}") from None
                    time.sleep(0.005 * (_attempt % 10))  # another runner took seq: read the new head, try the next
            else:
                raise ArchiveError(f"{self.url}: could not claim a place in the ledger after 200 tries (runners racing)")
            _atomic_write(mpath, data)
            try:
                self._put_once(self.key(mrel), data, "application/json")
            except ArchiveError:
                pending = self.root / ".pending" / f"{seq:012d}.json"
                _atomic_write(pending, json.dumps({"key": self.key(mrel), "manifest": data.decode()}).encode())
                self._store_pending()  # once more; if the store is still away, this says so and keeps the file
            db = self._db()
            try:
                self._cache_line(db, line)
                self._index_add(manifest, line, db)
                db.commit()
            finally:
                db.close()
        return mpath

    def _store_pending(self) -> None:
        """Store manifests whose ledger place was claimed but whose own write did not finish (a store
        that went away in between); kept on this machine until stored."""
        folder = self.root / ".pending"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            item = json.loads(path.read_text())
            try:
                self._put_once(item["key"], item["manifest"].encode(), "application/json")
            except ArchiveError as e:
                raise ArchiveError(f"record {path.stem.lstrip('0')} has its place in the ledger but its manifest is not "
                                   f"stored yet ({e}); it is kept in {path} and stored by the next command") from None
            path.unlink()

    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    # -- the ledger, cached ----------------------------------------------------------------------
    def _open_db(self) -> sqlite3.Connection:
        db = super()._open_db()
        db.execute("CREATE TABLE IF NOT EXISTS ledger_cache (seq INTEGER PRIMARY KEY, line TEXT NOT NULL)")
        return db

    @staticmethod
    def _cache_line(db: sqlite3.Connection, line: dict) -> None:
        db.execute("INSERT OR REPLACE INTO ledger_cache VALUES (?, ?)", (line["seq"], json.dumps(line, sort_keys=True)))

    def _ledger_versions(self, after: int = 0) -> dict[str, dict]:
        start = self._ledger_key(after) if after else None
        versions = self.s3.versions(self.bucket, self.prefix + LEDGER_DIR, key_marker=start)
        return _originals(versions)

    def _fetch_lines(self, originals: dict[str, dict], after: int) -> list[dict]:
        """Ledger lines after ``after``, in order, up to the first gap or unreadable one."""
        wanted = sorted((seq, info["original"]) for key, info in originals.items()
                        if (seq := _seq_of(key)) is not None and seq > after and info["original"] is not None)
        raws = self._parallel(lambda sv: self.s3.get(self.bucket, sv[1].key, sv[1].version_id), wanted)
        out = []
        for (seq, _), raw in zip(wanted, raws):
            try:
                line = json.loads(raw)
            except ValueError:
                break
            if seq != after + len(out) + 1 or not isinstance(line, dict) or line.get("seq") != seq:
                break  # a gap or a damaged line: the cache stops here; `verify` names it
            out.append(line)
        return out

    def sync(self, db: sqlite3.Connection | None = None) -> int:
        """Bring the index cache up to the bucket: new ledger lines and their manifests. Returns how many."""
        own = db is None
        db = db or self._db()
        try:
            last = db.execute("SELECT max(seq) FROM ledger_cache").fetchone()[0] or 0
            lines = self._fetch_lines(self._ledger_versions(last), last)
            manifests = self._parallel(self._manifest_for, lines)
            for line, manifest in zip(lines, manifests):
                self._cache_line(db, line)
                self._index_add(manifest, line, db)
            if lines:
                db.commit()
            return len(lines)
        finally:
            if own:
                db.close()

    def _manifest_for(self, line: dict) -> dict:
        data = self._trusted(self.key(line["manifest"]), line["sha256"])
        if data is None:
            return {"run_id": line["run_id"], "status": "missing"}
        try:
            return json.loads(data)
        except ValueError:
            return {"run_id": line["run_id"], "status": "missing"}

    def _ledger_last(self) -> dict | None:
        db = self._db()
        try:
            self.sync(db)
            row = db.execute("SELECT line FROM ledger_cache ORDER BY seq DESC LIMIT 1").fetchone()
        finally:
            db.close()
        return json.loads(row[0]) if row else None

    def _ledger_lines(self) -> tuple[list[dict], list[tuple[int, str]]]:
        self.sync()
        db = self._db()
        try:
            return [json.loads(r[0]) for r in db.execute("SELECT line FROM ledger_cache ORDER BY seq")], []
        finally:
            db.close()

    # -- reading -------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        if self._inside(rel) is None:
            raise ArchiveError(f"{rel!r} points outside the archive {self.url}")
        data = self._read_original(self.key(rel))
        if data is None:
            raise ArchiveError(f"{self.url}/{rel} is missing; run `runbook verify`")
        return data

    def read_manifest(self, entry: dict) -> dict:
        data = self._trusted(self.key(entry["manifest"]), entry["sha256"])
        if data is None:
            raise ArchiveError(f"{self.url}/{entry['manifest']}: the manifest of run {entry['run_id']} is missing or not "
                               "the one the ledger holds; run `runbook verify`")
        return json.loads(data)

    def runs(self, *args, **kwargs) -> list[dict]:
        self.sync()
        return super().runs(*args, **kwargs)

    def manifest(self, run: str) -> dict:
        self.sync()
        db = self._db()
        try:
            rows = db.execute("SELECT seq, run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\'",
                              (run.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        finally:
            db.close()
        if not rows:
            raise ArchiveError(f"no run {run!r} in the archive at {self.url}; `runbook runs` lists them")
        if len(rows) > 1 and not any(r[1] == run for r in rows):
            raise ArchiveError(f"{run!r} matches {len(rows)} runs; give more of the run id")
        seq = next((r[0] for r in rows if r[1] == run), rows[0][0])
        db = self._db()
        try:
            entry = json.loads(db.execute("SELECT line FROM ledger_cache WHERE seq = ?", (seq,)).fetchone()[0])
        finally:
            db.close()
        return self.read_manifest(entry)

    def reindex(self) -> int:
        """Rebuild the index cache from the bucket: every ledger line and manifest read again."""
        self.moved_aside = None
        db = self._index_or_moved_aside()
        try:
            db.execute("DELETE FROM runs")
            db.execute("DELETE FROM ledger_cache")
            db.commit()
        finally:
            db.close()
        return self.sync()

    # -- verification ----------------------------------------------------------------------------
    def verify(self, head: str | None = None) -> VerifyReport:
        """Walk the bucket: every ledger object from 1 on, each record's manifest and files (their first
        versions, under Object Lock), the chain, objects no record accounts for, and the index cache.
        The first missing or broken record comes first."""
        report = VerifyReport()
        self.sync()  # the index cache catches up with what other machines wrote; then it is compared
        objects = _originals(self.s3.versions(self.bucket, self.prefix))
        ledger = {}
        for key, info in objects.items():
            rel = key[len(self.prefix):]
            if rel.startswith(LEDGER_DIR):
                seq = _seq_of(rel)
                if seq is None or rel.count("/") != 1:
                    report.problems.append(f"{rel}: not a ledger object (ledger/<12-digit seq>.json); added by hand")
                elif info["original"] is not None:
                    ledger[seq] = info
        top = max(ledger, default=0)
        report.records = top

        def load(seq: int) -> dict:
            """Everything verify needs of one record, read in parallel with the others."""
            out: dict = {"seq": seq}
            info = ledger.get(seq)
            if info is None:
                return out
            raw = self.s3.get(self.bucket, info["original"].key, info["original"].version_id)
            out["raw"] = raw
            out["retention"] = self.s3.retention(self.bucket, info["original"].key, info["original"].version_id)
            try:
                line = json.loads(raw)
            except ValueError:
                return out
            if not isinstance(line, dict):
                return out
            out["line"] = line
            rel = str(line.get("manifest", ""))
            minfo = objects.get(self.key(rel)) if self._inside(rel) is not None else None
            if minfo and minfo["original"] is not None:
                out["manifest"] = self.s3.get(self.bucket, minfo["original"].key, minfo["original"].version_id)
                try:
                    manifest = json.loads(out["manifest"])
                except ValueError:
                    return out
                out["files"] = {}
                for role, finfo in ((manifest.get("files") or {}).items() if isinstance(manifest, dict) else ()):
                    frel = str((finfo or {}).get("path", ""))
                    fobj = objects.get(self.key(frel)) if self._inside(frel) is not None else None
                    if fobj and fobj["original"] is not None:
                        out["files"][role] = self.s3.get(self.bucket, fobj["original"].key, fobj["original"].version_id)
            return out

        loaded = self._parallel(load, range(1, top + 1))
        prev: str | None = GENESIS
        owned: set[str] = set()
        entries: list[dict] = []
        manifests: dict[int, dict] = {}
        for rec in loaded:
            seq = rec["seq"]
            lkey = f"{LEDGER_DIR}{seq:012d}.json"
            owned.add(lkey)
            line = rec.get("line")
            if "raw" not in rec:
                report.problems.append(f"record {seq}: its ledger object {lkey} is missing: deleted by force (a governance "
                                       "bypass) or never written; the chain cannot vouch for the records after it")
                entries.append({"seq": seq, "run_id": "?", "manifest": "", "sha256": ""})
                prev = None
                continue
            if line is None or not {"seq", "run_id", "manifest", "sha256"} <= set(line):
                report.problems.append(f"record {seq}: ledger object {lkey} is not a ledger record; it was damaged or written by hand")
                entries.append({"seq": seq, "run_id": "?", "manifest": "", "sha256": ""})
                prev = None
                continue
            entries.append(line)
            run_id, rel = line.get("run_id", "?"), str(line.get("manifest", ""))
            where = f"record {seq} (run {run_id})"
            owned.add(rel)
            if rec.get("retention") is None:
                report.problems.append(f"{where}: ledger object {lkey} has no Object Lock retention: it can be deleted")
            if line.get("seq") != seq:
                report.problems.append(f"{where}: ledger object {lkey} says seq {line.get('seq')}; records were moved")
            if self._inside(rel) is None:
                report.problems.append(f"{where}: manifest path {rel!r} points outside the archive")
                prev = line.get("sha256")
                continue
            data = rec.get("manifest")
            if data is None:
                report.problems.append(f"{where}: manifest {rel} is missing: deleted by force (a governance bypass), or "
                                       "a runner stopped between claiming its place and storing it")
                prev = line.get("sha256")
                continue
            if sha256_bytes(data) != line.get("sha256"):
                report.problems.append(f"{where}: manifest {rel} is not the one the ledger holds (its sha256 differs)")
            try:
                manifest = json.loads(data)
            except ValueError:
                manifest = None
            if not isinstance(manifest, dict):
                report.problems.append(f"{where}: manifest {rel} is not a record")
                prev = line.get("sha256")
                continue
            manifests[seq] = manifest
            if manifest.get("run_id") != run_id or manifest.get("seq") != seq:
                report.problems.append(f"{where}: manifest {rel} belongs to run {manifest.get('run_id')} "
                                       f"(seq {manifest.get('seq')}); records were swapped")
            if prev is not None and manifest.get("prev_manifest_sha256") != prev:
                report.problems.append(f"{where}: chain broken: it follows a record other than the one before it")
            for role, info in (manifest.get("files") or {}).items():
                frel = str((info or {}).get("path", ""))
                owned.add(frel)
                fdata = rec.get("files", {}).get(role)
                if self._inside(frel) is None:
                    report.problems.append(f"{where}: {role} path {frel!r} points outside the archive")
                elif fdata is None:
                    report.problems.append(f"{where}: {role} {frel} is missing: deleted by force (a governance bypass)")
                elif sha256_bytes(fdata) != info.get("sha256"):
                    report.problems.append(f"{where}: {role} {frel} is not the file that was archived")
            prev = line.get("sha256")
        for key, info in sorted(objects.items()):
            rel = key[len(self.prefix):]
            if rel.startswith(LOCKS_DIR):
                continue  # run locks: not records
            if rel in owned:
                if info["later"] > 0:
                    report.warnings.append(f"{rel}: {info['later']} later version(s) were written over this record; the "
                                           "store kept the locked original, which is the one checked")
                if info["hidden"]:
                    report.warnings.append(f"{rel}: a delete marker hides this record (someone deleted it); the store kept "
                                           "the locked original, which is the one checked")
                continue
            if rel.startswith(LEDGER_DIR) or info["original"] is None:
                continue
            if rel.endswith(".manifest.json"):
                report.problems.append(f"{rel}: manifest is not in the ledger; a record was added by hand, or a runner "
                                       "stopped before claiming its place")
            else:
                report.problems.append(f"{rel}: belongs to no record; only runners write into the archive")
        gap = next((e["seq"] for e in entries if not e["sha256"]), len(entries) + 1)  # the cache stops at a gap
        report.problems += self._index_disagreements(entries, {k: v for k, v in manifests.items() if k < gap}, report)
        report.head = f"{entries[-1]['seq']}:{entries[-1]['sha256']}" if entries else None
        if head:
            report.problems += self._against_witness(head, entries)
        return report

    def _parallel(self, fn: Callable, items: Iterable) -> list:
        """``fn`` over ``items`` on the archive's worker threads (kept: each keeps its connection to the store)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="archive-s3")
        return list(self._pool.map(fn, items))

    # -- migration -------------------------------------------------------------------------------
    def push(self, source: Archive, stream=sys.stdout) -> VerifyReport:
        """Copy a folder archive into this bucket, chain and all, then verify it here.

        The folder must verify first. The bucket must be empty or hold a beginning of the same chain
        (a push that stopped half-way is simply run again). Records of environments whose data
        country is not the archive's are refused, whatever the environment (a rehearsal's records too).
        """
        checked = source.verify()
        if not checked.ok:
            raise ArchiveError(f"{source.location} does not verify ({len(checked.problems)} problem(s), first: "
                               f"{checked.problems[0]}); nothing was pushed: a broken chain copied would look sound")
        entries = source._ledger_entries()
        manifests = [source.read_manifest(e) for e in entries]
        for m in manifests:
            env = m.get("environment") or {}
            if env.get("data_country") and env["data_country"] != self.settings.country:
                raise ArchiveNotReady(f"run {m.get('run_id')} of environment {env.get('name')} must stay in "
                                      f"{env['data_country']}, but {self.url} keeps records in {self.settings.country} "
                                      f"({self.settings.source}: country); nothing was pushed")
        there = self._fetch_lines(self._ledger_versions(0), 0)
        for line, mine in zip(there, entries):
            if line.get("sha256") != mine.get("sha256") or line.get("seq") != mine.get("seq"):
                raise ArchiveError(f"{self.url} already holds another chain (record {line.get('seq')} differs); push into "
                                   "an empty archive (another prefix)")
        if len(there) > len(entries):
            raise ArchiveError(f"{self.url} already holds {len(there)} records, more than {source.location}; nothing pushed")
        todo = entries[len(there):]
        objects = []
        for entry, m in zip(entries[len(there):], manifests[len(there):]):
            objects += [(self.key(info["path"]), source.read_bytes(info["path"])) for info in (m.get("files") or {}).values()]
            objects.append((self.key(entry["manifest"]), source.read_bytes(entry["manifest"])))
        t0 = time.monotonic()
        self._parallel(lambda o: self._put_once(*o), objects)
        self._parallel(lambda e: self._put_once(self._ledger_key(e["seq"]), (json.dumps(e, sort_keys=True) + "\n").encode(),
                                                "application/json"), todo)
        if stream is not None:
            print(f"pushed {len(todo)} record(s) ({len(objects) + len(todo)} objects) in {time.monotonic() - t0:.1f} s"
                  + (f"; {len(there)} were already there" if there else ""), file=stream)
        self.reindex()
        return self.verify(head=checked.head)


class BucketLock:
    """The run lock in the bucket: ``locks/<environment>--<notebook>.json`` holds the holder and a lease.

    Taken with a create-if-absent, or, when the object says released or its lease has expired by the
    store's clock, with a write conditional on the very version read (If-Match), so of two runners
    taking over the same stale lock one wins. Renewed by a thread every third of the lease.
    """

    def __init__(self, archive: S3Archive, environment: str, notebook: str, holder: dict):
        self.archive, self.s3 = archive, archive.s3
        self.key = archive.key(f"{LOCKS_DIR}{environment}--{notebook}.json")
        self.environment, self.notebook = environment, notebook
        self.lease = archive.settings.lock_lease_s
        self.holder = dict(holder, machine=socket.gethostname())
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, released: bool = False) -> bytes:
        now = dt.datetime.now(dt.timezone.utc)
        body = {"holder": self.holder, "lease_s": self.lease, "written_at": now.isoformat(timespec="seconds"),
                "expires_at": (now + dt.timedelta(seconds=self.lease)).isoformat(timespec="seconds")}
        if released:
            body["released"] = True
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    def __enter__(self) -> BucketLock:
        where = f"s3://{self.archive.bucket}/{self.key}"
        for _ in range(5):
            try:
                self.etag = self.s3.put(self.archive.bucket, self.key, self._body(), if_none_match=True,
                                        content_type="application/json").etag
                break
            except S3Error as e:
                if e.status != 412:
                    raise ArchiveError(f"cannot take the run lock {where}: {e}") from None
            try:
                headers, raw = self.s3.get_with_headers(self.archive.bucket, self.key)
            except S3Error as e:
                if e.status == 404:
                    continue
                raise ArchiveError(f"cannot read the run lock {where}: {e}") from None
            try:
                other = json.loads(raw)
            except ValueError:
                other = {}
            expires = _lease_end(headers, other)
            now = _store_now(headers)
            if not other.get("released") and expires is not None and now < expires:
                who = other.get("holder") or {}
                raise LockedError(
                    f"{self.notebook} is already running on environment {self.environment}: held by "
                    f"{who.get('operator', '?')} on {who.get('machine', '?')} (pid {who.get('pid', '?')}, run "
                    f"{who.get('run_id', '?')}, since {who.get('since', '?')}); its lease runs until "
                    f"{expires.isoformat(timespec='seconds')} by the store's clock and is renewed while that run lives. "
                    f"Wait for it to finish; if its machine died, the lock can be taken once the lease ends. Lock {where}")
            try:
                self.etag = self.s3.put(self.archive.bucket, self.key, self._body(), if_match=headers.get("etag"),
                                        content_type="application/json").etag
            except S3Error as e:
                if e.status in (412, 404):
                    continue  # another runner took it over first: read who
                raise ArchiveError(f"cannot take the run lock {where}: {e}") from None
            if not other.get("released"):
                who = other.get("holder") or {}
                print(f"runbook: took over the run lock of {who.get('operator', '?')} on {who.get('machine', '?')} (run "
                      f"{who.get('run_id', '?')}), whose lease ended at {expires.isoformat(timespec='seconds')} without "
                      "renewal: that run's machine stopped or lost the store", file=sys.stderr)
            break
        else:
            raise LockedError(f"{self.notebook} on {self.environment}: the run lock {where} keeps changing hands; try again")
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(max(self.lease / 3, 0.2)):
            try:
                self.etag = self.s3.put(self.archive.bucket, self.key, self._body(), if_match=self.etag,
                                        content_type="application/json").etag
            except S3Error as e:
                if e.status == 412:
                    self.lost = "another runner took the lock over (this run's lease had ended)"
                    print(f"runbook: warning: {self.lost}: s3://{self.archive.bucket}/{self.key}", file=sys.stderr)
                    return
                # the store did not answer: try again at the next beat, the lease still runs

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            return
        with contextlib.suppress(S3Error):  # not released: the lease ends by itself
            self.s3.put(self.archive.bucket, self.key, self._body(released=True), if_match=self.etag,
                        content_type="application/json")


def _store_now(headers: dict[str, str]) -> dt.datetime:
    with contextlib.suppress(TypeError, ValueError):
        return email.utils.parsedate_to_datetime(headers["date"])
    return dt.datetime.now(dt.timezone.utc)


def _lease_end(headers: dict[str, str], body: dict) -> dt.datetime | None:
    """When a lock's lease ends, by the store's clock: its last write plus the lease (one second more for
    Last-Modified's resolution), so runners' clocks need not agree."""
    try:
        written = email.utils.parsedate_to_datetime(headers["last-modified"])
        return written + dt.timedelta(seconds=float(body.get("lease_s", 0)) + 1)
    except (KeyError, TypeError, ValueError):
        return None
