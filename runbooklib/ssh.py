"""SSH to the inventory: the one place in the library that opens connections.

Every connection checks the host key strictly against the pinned known-hosts file from the
parameters (``ssh.known_hosts``): an unknown or changed key is refused before anything runs on that
host, never trusted on first use. The key comes from the ``ssh.key`` secret reference. Fleet
commands run with bounded parallelism (``ssh.parallelism``), a deadline per command
(``ssh.command_timeout``), and return a result or an error per host, each naming its host; a
progress callback, when given, ticks once per host.

    fleet = Fleet.from_params(params)
    results = fleet.run("uname -r")
    for host, r in results.items(): print(host, r.ok, r.stdout or r.error)
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import paramiko

from .errors import HostError, RunbookError
from .schema import SSH, Host

if TYPE_CHECKING:
    from .params import Params

T = TypeVar("T")
EOF_GRACE = 2.0  # seconds a finished command's output may take to reach end of file (see Fleet._exec)


class HostKeyError(HostError):
    """The host's key is not the pinned one (or is not pinned at all). Nothing ran there."""


class Unreachable(HostError):
    """The host did not answer on its SSH port in time."""


@dataclass
class _Deadline(Exception):
    """A command's deadline passed (ssh.command_timeout), or (``silent``) nothing came back for its ``idle`` bound."""

    def __init__(self, silent: bool = False, out: bytes = b"", err: bytes = b""):
        super().__init__()
        self.silent, self.out, self.err = silent, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass
class HostResult:
    """What one host did with one command."""

    host: str
    ok: bool
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: str = ""
    seconds: float = 0.0

    def check(self) -> "HostResult":
        """Raise HostError naming the host unless the command succeeded."""
        if not self.ok:
            raise HostError(self.host, self.error or f"exit code {self.exit_code}: {self.stderr.strip()[:500]}")
        return self


def _words(e: BaseException) -> str:
    """An exception's words; a bare one (a cut link ends SFTP with an empty EOFError or timeout; paramiko's "Server
    connection dropped: " has nothing after its colon) by what it is."""
    text = str(e).strip().rstrip(":")
    if type(e).__name__ == "SSHException" and text == "Server connection dropped":
        return "Server connection dropped (the host stopped or its link was cut)"
    return text or {"EOFError": "the connection ended (EOFError)", "TimeoutError": "timed out"}.get(type(e).__name__, type(e).__name__)


class FleetResult(dict):
    """host name -> HostResult, in inventory order, with helpers for the usual questions."""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.values())

    @property
    def failed(self) -> dict[str, HostResult]:
        return {h: r for h, r in self.items() if not r.ok}


def _load_pkey(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise RunbookError("ssh.key: the secret is not a private key paramiko can read (ed25519, ecdsa or rsa)")


class _Transport(paramiko.Transport):
    """paramiko's transport, preferring the algorithms that cost least CPU on both ends for the same strength.

    Key exchange and host keys keep paramiko's order (hybrid ML-KEM/curve25519, then curve25519; ed25519 keys
    first); ciphers put AES-GCM (one AEAD pass, AES instructions on both sides) before CTR with a separate MAC.
    Only the order changes: nothing weaker is enabled, and the server still has to offer what is chosen.
    """

    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                          *(c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c))

    sftp_timeout: float | None = None  # ssh.command_timeout, set by Fleet.connection: every SFTP request's deadline

    def open_sftp_client(self):
        """The SFTP session, each of its requests bounded: on a link that went down a copy fails after
        ``sftp_timeout`` (socket.timeout, an OSError) instead of waiting for TCP to give up."""
        client = super().open_sftp_client()
        if client is not None and self.sftp_timeout:
            client.get_channel().settimeout(self.sftp_timeout)
        return client


class Fleet:
    """Connections to a list of hosts with one set of SSH settings, opened lazily and reused."""

    def __init__(self, hosts: Iterable[Host], ssh: SSH, base_dir: Path,
                 progress: Callable[..., Iterable] | str | None = "auto"):
        """``base_dir`` resolves relative paths in ``ssh`` (the parameter file's folder).

        ``progress``: a tqdm-like factory ``(total=, desc=)``, "auto" (a widget in notebooks, text on
        a terminal) or None for no bar.
        """
        if progress == "auto":
            from .display import progress as auto_progress

            progress = lambda total, desc: auto_progress(total=total, desc=desc)  # noqa: E731
        self.hosts = list(hosts)
        self.ssh = ssh
        known = Path(ssh.known_hosts).expanduser()
        self.known_hosts = known if known.is_absolute() else base_dir / known
        self._progress = progress
        self._conns: dict[str, object] = {}  # host name -> fabric Connection
        self._lock = threading.Lock()
        self.handshakes = 0  # connections opened (each a key exchange and an authentication): one per host per run
        ref = ssh.key
        if ref.scheme == "file":
            key_file = ref.path(base_dir)
            if not key_file.exists():
                raise RunbookError(f"ssh.key: key file {key_file} does not exist (for the lab, run `runbook lab up`)")
            self._connect_kwargs = {"key_filename": str(key_file)}
        else:
            self._connect_kwargs = {"pkey": _load_pkey(ref.resolve(base_dir, "ssh.key"))}
        if not self.known_hosts.exists():
            raise RunbookError(f"ssh.known_hosts: {self.known_hosts} does not exist; host keys must be pinned "
                               "before any connection (for the lab, run `runbook lab up`)")

    @classmethod
    def from_params(cls, params: "Params", progress: Callable[..., Iterable] | str | None = "auto") -> "Fleet":
        """The fleet of a parameter file: its inventory, its ``ssh`` section."""
        return cls(params.hosts, params.ssh, params.source_dir, progress)

    # -- single host -------------------------------------------------------------------------
    def connection(self, host: Host):
        """The open fabric ``Connection`` to ``host`` (opened on first use, with the pinned key checked), reused by
        every later command, copy and step of the run: a host pays one handshake per Fleet. Commands go through
        its paramiko client (:meth:`run_on`), files through its ``sftp()`` (opened once)."""
        with self._lock:
            conn = self._conns.get(host.name)
        if conn is not None and conn.is_connected:
            return conn
        import fabric  # here, not at the top: fabric's few milliseconds are paid only by a command that connects

        config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={
            "run": {"hide": True, "warn": True, "in_stream": False},
            "timeouts": {"connect": self.ssh.connect_timeout},
        })
        conn = fabric.Connection(str(host.address), user=host.user, port=host.ssh_port, config=config,
                                 connect_timeout=self.ssh.connect_timeout,
                                 connect_kwargs={**self._connect_kwargs, "look_for_keys": False, "allow_agent": False,
                                                 "banner_timeout": self.ssh.connect_timeout, "auth_timeout": self.ssh.connect_timeout,
                                                 "transport_factory": _Transport})
        client = paramiko.SSHClient()  # fabric's default client trusts unknown keys; ours never does
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client = client
        try:
            try:
                conn.open()
            except BaseException:
                client.close()  # a half-open transport keeps a thread and a socket otherwise
                raise
        except paramiko.BadHostKeyException:
            raise HostKeyError(host.name, (
                f"host key at {host.address}:{host.ssh_port} does not match the one pinned in {self.known_hosts}. "
                "This is what a man-in-the-middle looks like; it is also what a rebuilt VM looks like. Compare "
                "the key on the VM's console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before you "
                "update the pin. Nothing was run on this host.")) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise HostKeyError(host.name, (
                    f"{host.address}:{host.ssh_port} has no pinned key in {self.known_hosts}; add the VM's "
                    "verified key there (keys are never trusted on first use). Nothing was run on this host.")) from None
            if "No existing session" in str(e) or "protocol banner" in str(e) or "authentication timeout" in str(e).lower():
                raise Unreachable(host.name, (
                    f"{host.address}:{host.ssh_port} accepted the connection but its SSH server did not complete the "
                    f"handshake within {self.ssh.connect_timeout:g} s (ssh.connect_timeout); sshd is stalled or the "
                    "host is overloaded. Nothing was run on this host.")) from None
            raise HostError(host.name, f"SSH to {host.address}:{host.ssh_port} failed: {e}") from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            raise Unreachable(host.name, f"connection refused at {host.address}:{host.ssh_port}: nothing listens "
                                         "on the SSH port; is the VM running and sshd up?") from None
        except (socket.timeout, TimeoutError):
            raise Unreachable(host.name, f"no answer on {host.address}:{host.ssh_port} within "
                                         f"{self.ssh.connect_timeout:g} s; is the VM up and its network connected?") from None
        except OSError as e:
            raise Unreachable(host.name, f"cannot reach {host.address}:{host.ssh_port}: {e.strerror or e}") from None
        # small request/response exchanges: without TCP_NODELAY each command waits on delayed ACKs
        client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # no wait on this host unbounded: opening a channel (paramiko's default is an hour) and each SFTP request
        client.get_transport().channel_timeout = client.get_transport().sftp_timeout = self.ssh.command_timeout
        with self._lock:
            self._conns[host.name] = conn
            self.handshakes += 1
        return conn

    def run_on(self, host: Host, command: str, timeout: float | None = None, idle: float | None = None) -> HostResult:
        """Run ``command`` on one host; errors come back in the result, naming the host.

        The command is bounded by ``timeout`` (default ``ssh.command_timeout``) whatever the network
        does: a host whose link goes down mid-command is reported after the deadline, and its
        connection is dropped so that the next command reconnects. With ``idle``, also by silence:
        nothing received for that long ends it the same way, with what came back before kept (a batch
        of steps that prints a marker as each starts and ends, see ``phase.steps.batch_script``).
        """
        t0 = time.monotonic()
        limit = timeout or self.ssh.command_timeout
        try:
            conn = self.connection(host)
            code, out, err = self._exec(conn, command, limit, idle)
            return HostResult(host.name, code == 0, out, err, code,
                              "" if code == 0 else f"{command.split()[0]!r} exited {code}: {err.strip()[-300:]}",
                              time.monotonic() - t0)
        except HostError as e:
            return HostResult(host.name, False, error=str(e), seconds=time.monotonic() - t0)
        except _Deadline as d:
            self._drop(host.name)
            # what came back before is kept: a batch's markers say which of its steps finished
            if d.silent:
                return HostResult(host.name, False, d.out, d.err, error=(
                    f"{host.name}: nothing came back for {idle:g} s (ssh.command_timeout) while a step ran; the host stopped "
                    "answering or the step hangs. The connection was dropped; check the host and re-run"),
                    seconds=time.monotonic() - t0)
            return HostResult(host.name, False, d.out, d.err, error=(
                f"{host.name}: command did not finish within {limit:g} s (ssh.command_timeout); the host stopped "
                "answering or the command hangs. The connection was dropped; check the host and re-run"),
                seconds=time.monotonic() - t0)
        except (paramiko.SSHException, OSError, EOFError) as e:  # a transport that died under the command
            self._drop(host.name)
            text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return HostResult(host.name, False, error=f"{host.name}: connection lost during the command ({text})",
                              seconds=time.monotonic() - t0)

    @staticmethod
    def _exec(conn, command: str, limit: float, idle: float | None = None) -> tuple[int, str, str]:
        """Execute on an open connection's transport with a deadline on every wait (not invoke's runner).

        A channel read on a link that went down blocks until TCP gives up (many minutes); here each
        wait is a select bounded by what is left of ``limit``.
        """
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("the connection is closed")
        deadline = time.monotonic() + limit
        chan = transport.open_session(timeout=limit)
        try:
            chan.exec_command(command)
            chan.shutdown_write()  # no stdin: a command that reads it sees end of file
            out, err = bytearray(), bytearray()
            exited_at = None
            heard = time.monotonic()  # when something last came back (``idle``)
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                    heard = time.monotonic()
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    heard = time.monotonic()
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last of the output it still reads from the
                    # command's pipes: the output is whole at end of file. A command that leaves a process
                    # holding its stdout never sends one, so end of file is waited for a short while only.
                    exited_at = exited_at or time.monotonic()
                    if chan.eof_received or chan.closed or time.monotonic() - exited_at > EOF_GRACE:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Deadline(False, out, err)
                if idle is not None and exited_at is None and time.monotonic() - heard > idle:
                    raise _Deadline(True, out, err)
                if not transport.is_active():
                    raise paramiko.SSHException("the transport closed")
                select.select([chan], [], [], min(left, 0.05 if exited_at else 0.5))
            code = chan.recv_exit_status()
            if code == -1 and not transport.is_active():  # paramiko's -1: no exit status came, the connection died under the command
                raise paramiko.SSHException("the connection closed without an exit status: the host or its SSH server went away")
            return code, out.decode(errors="replace"), err.decode(errors="replace")
        finally:
            chan.close()

    @contextmanager
    def sftp(self, host: Host, what: str):
        """The SFTP session of ``host``'s connection; ``what`` begins the message of its failure ("cannot copy A to B"). A failure of the transfer, or of a
        connection that died under it (the host stopped, the link cut: paramiko says "Server connection dropped", an
        empty ``EOFError``, a timeout) is a :class:`HostError` naming the host and ``what``, and the connection is
        dropped so that the next command reconnects; errors of the connection itself (unreachable, a changed host key)
        pass as they are."""
        try:
            # a connection that cannot be made raises its own HostError (unreachable, host key), which passes; a stale one
            # (the host stopped since its last command) fails opening the session: "Server connection dropped"
            yield self.connection(host).sftp()
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop(host.name)
            raise HostError(host.name, f"{what}: {_words(e)}") from None

    def put(self, host: Host, local: str | Path, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to ``host`` over SFTP (the parent folder must exist)."""
        with self.sftp(host, f"cannot copy {local} to {remote}") as sftp:
            sftp.put(str(local), remote)
            sftp.chmod(remote, mode)

    # -- many hosts --------------------------------------------------------------------------
    def each(self, fn: Callable[[Host], T], hosts: Iterable[Host] | None = None, desc: str = "") -> dict[str, T]:
        """Call ``fn(host)`` for many hosts at once (``ssh.parallelism`` at a time), one progress tick per host.

        The one executor of the library: ``run`` and every phase's apply go through it. Results come
        back in inventory order; ``fn`` reports a host's failure in its result, never by raising.
        """
        targets = list(hosts) if hosts is not None else self.hosts
        results: dict[str, T] = {}
        bar = self._progress(total=len(targets), desc=desc or "fleet") if self._progress and targets else None
        raised: list[BaseException] = []
        try:
            with ThreadPoolExecutor(max_workers=min(self.ssh.parallelism, max(len(targets), 1))) as pool:
                futures = {pool.submit(fn, h): h for h in targets}
                for fut in as_completed(futures):
                    try:
                        results[futures[fut].name] = fut.result()
                    except BaseException as e:  # a bug in fn: every other host still finishes first
                        raised.append(e)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if raised:
            raise raised[0]
        return {h.name: results[h.name] for h in targets}

    def run(self, command: str | Callable[[Host], str], hosts: Iterable[Host] | None = None,
            timeout: float | None = None, desc: str = "") -> FleetResult:
        """Run a command (or a per-host command) on many hosts at once, one progress tick per host."""
        def one(h: Host) -> HostResult:
            return self.run_on(h, command(h) if callable(command) else command, timeout)

        return FleetResult(self.each(one, hosts, desc or (command if isinstance(command, str) else "fleet")[:40]))

    def _drop(self, name: str) -> None:
        with self._lock:
            conn = self._conns.pop(name, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        for name in list(self._conns):
            self._drop(name)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
