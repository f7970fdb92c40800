"""The lab's object store: a real S3-compatible server with Object Lock, on loopback.

versitygw (the Versity S3 Gateway, Apache-2.0), built from its Go module into a cache outside the
checkout by ``make setup`` (``python3 runbooklab/objectstore.py --build``: about 3 minutes on 2
cores the first time, nothing after), serving a folder through its posix backend with versioning.
It is the store the archive's tests and benchmark use: Object Lock retention in governance and
compliance mode (it refuses to overwrite or delete a locked version, and honours the governance
bypass), conditional writes (``If-None-Match: *``, ``If-Match``), version listings.

Why not MinIO: MinIO's server is AGPL-3.0, which this project's rules leave out; versitygw is
Apache-2.0 and builds with a plain ``go install`` from the module proxy.

    python3 runbooklab/objectstore.py --build    # build what is missing (prints the binary's path)
    python3 runbooklab/objectstore.py --check    # exit 0 iff the binary is there

Python 3.11, standard library only (it runs before the venv exists).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = "github.com/versity/versitygw"
VERSION = "v1.8.0"
PACKAGE = f"{MODULE}/cmd/versitygw"


def cache_root() -> Path:
    env = os.environ.get("RUNBOOK_OBJECTSTORE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runbooklab" / "versitygw"


def binary() -> Path:
    return cache_root() / VERSION / "bin" / "versitygw"


def build(quiet: bool = False) -> Path:
    """Build versitygw VERSION into the cache unless it is there; the folder is complete or absent."""
    target = binary()
    if target.is_file():
        return target
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once (two test sessions): one builds, one waits
        if target.is_file():
            return target
        if not shutil.which("go"):
            raise SystemExit("objectstore: the Go toolchain is needed to build versitygw (`make setup` installs it)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}.", dir=root))
        env = dict(os.environ, GOBIN=str(tmp / "bin"), CGO_ENABLED="0")
        env.setdefault("GOTOOLCHAIN", "local")
        if not quiet:
            print(f"objectstore: building versitygw {VERSION} from its Go module (about 3 minutes the first time)",
                  file=sys.stderr)
        t0 = time.monotonic()
        proc = subprocess.run(["go", "install", f"{PACKAGE}@{VERSION}"], env=env, text=True, capture_output=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"objectstore: `go install {PACKAGE}@{VERSION}` failed:\n{proc.stderr}")
        os.replace(tmp, root / VERSION)
        if not quiet:
            print(f"objectstore: built in {time.monotonic() - t0:.0f} s: {target}", file=sys.stderr)
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ObjectStore:
    """One versitygw process on 127.0.0.1 serving ``folder`` (buckets, their versions), with a root key
    pair of its own. ``stop()`` ends it; its folder is the caller's."""

    def __init__(self, folder: Path, region: str = "us-east-1"):
        self.folder = Path(folder)
        self.region = region
        self.access_key = "lab" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ObjectStore:
        exe = build(quiet=True)
        (self.folder / "buckets").mkdir(parents=True, exist_ok=True)
        (self.folder / "versions").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ROOT_ACCESS_KEY=self.access_key, ROOT_SECRET_KEY=self.secret_key)
        for attempt in range(5):  # the free port may be taken between choosing and binding: choose again
            self.port = _free_port()
            log = open(self.folder / "versitygw.log", "ab")
            self.proc = subprocess.Popen(
                [str(exe), "--port", f"127.0.0.1:{self.port}", "--region", self.region, "--keep-alive", "--quiet",
                 "posix", "--versioning-dir", str(self.folder / "versions"), str(self.folder / "buckets")],
                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
                time.sleep(0.05)
            self.stop()
        tail = (self.folder / "versitygw.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"versitygw did not start on 127.0.0.1 (its log, {self.folder / 'versitygw.log'}):\n{tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def write_settings(self, directory: Path, url: str | None, *, country: str = "RU", mode: str = "governance", days: int = 1,
                       lease_s: int = 300, name: str = "archive.yaml") -> Path:
        """An archive settings file for ``url`` (None: any archive) on this store, its credentials in files beside it."""
        directory.mkdir(parents=True, exist_ok=True)
        for fname, value in (("s3-access-key", self.access_key), ("s3-secret-key", self.secret_key)):
            (directory / fname).write_text(value + "\n")
            (directory / fname).chmod(0o600)
        path = directory / name
        path.write_text((f"url: {url}\n" if url else "") + f"endpoint: {self.endpoint}\nregion: {self.region}\ncountry: {country}\n"
                        f"access_key: file:s3-access-key\nsecret_key: file:s3-secret-key\n"
                        f"retention: {{mode: {mode}, days: {days}}}\nlock_lease_s: {lease_s}\n")
        return path

    def __enter__(self) -> ObjectStore:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 runbooklab/objectstore.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="store_true", help="build versitygw into the cache unless it is there")
    ap.add_argument("--check", action="store_true", help="exit 0 iff the binary is there")
    args = ap.parse_args(argv)
    if args.check:
        return 0 if binary().is_file() else 1
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
