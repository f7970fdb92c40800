"""Files that carry secrets or data, handed to a command on a host: over SFTP into a private folder, mode 600.

A password never goes on a command line (``ps`` shows it to every user of the host) nor through a
shell's echo: it is written into a file of mode 600 (set before a byte is written) in a folder of
mode 700 under the SSH user's home, read by the command, and removed after it. The database and
cache clients, and the database's initial load, share this.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Iterable, Mapping

from .errors import HostError
from .ssh import HostResult


def private_folder(sftp, name: str) -> str:
    """``~/<name>`` of the SSH user (created, and kept, mode 700); its absolute path."""
    folder = f"{sftp.normalize('.')}/{name}"
    try:
        sftp.stat(folder)
    except OSError:
        sftp.mkdir(folder, 0o700)
    sftp.chmod(folder, 0o700)
    return folder


def upload(fleet, host, folder_name: str, files: Mapping[str, str]) -> dict[str, str]:
    """Write ``files`` (name -> content) into ``~/<folder_name>`` on ``host``, mode 600; their absolute paths by name."""
    with fleet.sftp(host, f"cannot write the client's files into ~/{folder_name} over SFTP") as sftp:
        folder = private_folder(sftp, folder_name)
        token = secrets.token_hex(6)
        paths = {}
        for name, content in files.items():
            path = f"{folder}/{token}-{name}"
            with sftp.open(path, "w") as f:
                f.chmod(0o600)  # before a byte is written
                f.write(content)
            paths[name] = path
        return paths


def remove(fleet, host, paths: Iterable[str]) -> None:
    """Remove the files (quietly: a host that went away keeps them in its 700 folder until the next run)."""
    try:
        sftp = fleet.connection(host).sftp()
        for path in paths:
            try:
                sftp.remove(path)
            except OSError:
                pass
    except Exception:
        pass


def variable(name: str) -> str:
    """The shell variable a file is named by: ``$FILE_<name without its extension>``."""
    return "FILE_" + name.split(".")[0].replace("-", "_")


def run_with_files(fleet, host, folder_name: str, files: Mapping[str, str], script: str,
                   setup: Callable[[dict[str, str]], list[str]] = lambda paths: [], timeout: float | None = None) -> HostResult:
    """Run ``script`` on ``host`` with ``files`` written for it (``$FILE_<name>``) and removed after, whatever happens.

    ``setup(paths)`` gives shell lines run first (a client logged in through one of the files). Errors come back in
    the result, naming the host; a failed command's error is its own stderr, not the wrapper's first word.
    """
    try:
        paths = upload(fleet, host, folder_name, files)
    except HostError as e:
        return HostResult(host.name, False, error=str(e))
    lines = [f"{variable(name)}={shlex.quote(p)}" for name, p in paths.items()] + setup(paths)
    cleanup = "rm -f " + " ".join(shlex.quote(p) for p in paths.values())
    result = fleet.run_on(host, f"trap {shlex.quote(cleanup)} EXIT; {'; '.join(lines)}; {script}", timeout)
    if not result.ok and result.exit_code is None:  # the command may not have run its trap
        remove(fleet, host, paths.values())
    if not result.ok and result.exit_code is not None:
        detail = result.stderr.strip()[-500:] or result.stdout.strip()[-300:]
        result.error = f"exit code {result.exit_code}: {detail}"
    return result


class ShellClient:
    """What a client that runs commands through its ``shell(host, command)`` (a logged-in CLI, private files)
    offers the phase engine: ``each`` over hosts, and a transport whose fact commands run through ``shell``."""

    fleet = None  # the client's Fleet

    def shell(self, host, script: str, files: Mapping[str, str] | None = None, timeout: float | None = None) -> HostResult:
        raise NotImplementedError

    def each(self, fn, hosts, desc: str = ""):
        """``fn(host)`` on many hosts at once (the fleet's executor)."""
        return self.fleet.each(fn, hosts=hosts, desc=desc)

    def transport(self):
        """A transport for :meth:`runbooklib.phase.facts.FactSet.gather`."""
        client = self

        class _Transport:
            def run(self, command, hosts, desc: str = ""):
                return client.fleet.each(lambda h: client.shell(h, command(h) if callable(command) else command),
                                         hosts=hosts, desc=desc)

        return _Transport()
