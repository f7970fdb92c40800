"""What every part of the lab shares: its error, where the project is, running a command, SSH's greeting."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from runbooklib.errors import RunbookError

PROJECT = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
REQUIRED = ("ip", "unshare", "chroot", "setsid", "ssh-keygen", SSHD)


class LabError(RunbookError):
    """The lab cannot do what was asked; the message says what to do."""


def run_command(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def ssh_answers(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when an SSH server greets on address:port (reads the banner; sends nothing)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False
