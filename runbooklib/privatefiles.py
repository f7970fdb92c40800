"""Files that carry secrets or data, handed to a command on a host: over SFTP into a private folder, mode 600.

A password never goes on a command line (``ps`` shows it to every user of the host) nor through a
shell's echo: it is written into a file of mode 600 (set before a byte is written) in a folder of
mode 700 under the SSH user's home, read by the command, and removed after it. The database and
cache clients, and the database's initial load, share this.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from .errors import HostError


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
    try:
        sftp = fleet.connection(host).sftp()
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
    except (OSError, EOFError) as e:
        raise HostError(host.name, f"cannot write the client's files into ~/{folder_name} over SFTP: {e}") from None


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
