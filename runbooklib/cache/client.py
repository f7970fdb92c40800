"""``redis-cli`` on the cache hosts, over SSH, with the password in a file of mode 600.

Why ``redis-cli`` over SSH and not the ``redis`` Python package through a tunnel: the Redis port is
bound to the cache hosts' own addresses (and open to the applications' network only), SSH with
pinned host keys is already how every runbook reaches a host, ``redis-cli`` ships with the server
(Debian's ``redis-tools``, a dependency of ``redis-server``), and it adds no dependency here.

The password never travels in a command line (``ps`` shows those to every user of the host) or in
output: before a command, the files it needs are written over SFTP into ``~/.runbooklib-cache/``
(mode 700, the files 600): ``auth`` (the password) and ``secret_lines`` (the ``requirepass`` and
``masterauth`` lines as the drop-in writes them, which the facts compare on the host). The command
defines ``rcli``, which reads the file into ``REDISCLI_AUTH`` in the environment of that one
``redis-cli`` (an environment is visible to the user and root only, as the file is), and removes the
files when it ends, whatever its exit code.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from .. import privatefiles
from ..errors import SecretError
from ..secrets import Secret
from ..ssh import HostResult

SECRET_DIR = ".runbooklib-cache"  # under the SSH user's home
PLACEHOLDER = "<secret:cache.password>"


def config_string(value: str) -> str:
    """A value as a Redis configuration file quotes it (a double-quoted string with escapes)."""
    if any(c in value for c in "\n\r\0"):
        raise SecretError("cache.password holds a line break or NUL; a Redis configuration line cannot carry it. Choose a "
                          "password of one line")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def secret_lines(password: str | None) -> str:
    """The two secret lines of the drop-in, with the password (on the host only) or the placeholder."""
    value = config_string(password) if password is not None else PLACEHOLDER
    return f"requirepass {value}\nmasterauth {value}\n"


def fill_secret(content: str, password: str) -> str:
    """A drop-in rendered with placeholders, with the password put in (only ever written to the host)."""
    return content.replace(f"requirepass {PLACEHOLDER}\nmasterauth {PLACEHOLDER}\n", secret_lines(password))


class RedisClient(privatefiles.ShellClient):
    """Shell commands with ``rcli`` (redis-cli, logged in) on one or many cache hosts."""

    def __init__(self, fleet, password: Secret, port: int = 6379):
        self.fleet = fleet
        self._password = password
        self.port = port

    @classmethod
    def for_run(cls, run) -> "RedisClient":
        """The client of a notebook run: its fleet, the password resolved (and so scrubbed from its record)."""
        port = run.params.cache.vms.port if run.params.cache.vms else 6379
        return cls(run.fleet(), run.secret("cache.password"), port)

    def host(self, name: str):
        return next(h for h in self.fleet.hosts if h.name == name)

    def shell(self, host, script: str, files: Mapping[str, str] | None = None, timeout: float | None = None) -> HostResult:
        """Run ``script`` with ``rcli`` defined and ``$FILE_<name>`` set; every file removed after."""
        password = self._password.reveal()
        cli = f"redis-cli --no-auth-warning -h {shlex.quote(str(host.address))} -p {int(self.port)}"
        rcli = f'rcli() {{ REDISCLI_AUTH="$(cat "$FILE_auth")" {cli} "$@"; }}'
        return privatefiles.run_with_files(self.fleet, host, SECRET_DIR,
                                           {"auth": password, "secret_lines": secret_lines(password), **(files or {})},
                                           script, lambda paths: [rcli], timeout)

    def cli(self, host, *args: str, timeout: float | None = None) -> HostResult:
        """One ``redis-cli`` command (its arguments quoted), logged in."""
        return self.shell(host, "rcli " + " ".join(shlex.quote(a) for a in args), timeout=timeout)

