"""Finding, entering and killing the processes of a VM (by its network namespace).

A part of :class:`runbooklab.site.Lab`, which combines them; the methods use its names, state and lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .common import LabError


class Processes:
    """Finding, entering and killing the processes of a VM (by its network namespace)."""

    def pids(self, vm: str) -> list[int]:
        """Every process inside the VM (found by its network namespace), sorted."""
        try:
            ino = os.stat(f"/run/netns/{self.netns(vm)}").st_ino
        except OSError:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                        out.append(int(entry))
                except OSError:
                    continue
        return sorted(out)

    def _init_pid(self, vm: str) -> int | None:
        """Host PID of the VM's PID 1 (its sshd)."""
        for pid in self.pids(vm):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if m and m.group(1).split()[-1] == "1" and len(m.group(1).split()) > 1:
                return pid
        return None

    def _comms(self, vm: str) -> list[str]:
        """Process names in the VM; the lab's own Python daemons by what they are (``lab-dockerd``)."""
        names = []
        for pid in self.pids(vm):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            module = next((a.decode() for a in argv if a.startswith(b"runbooklab.")), None)
            names.append(f"lab-{module.rsplit('.', 1)[1]}" if module else name)
        return names

    def _kill_vm(self, vm: str, timeout: float = 10.0) -> bool:
        """SIGKILL every process of the VM, by PID; True if any was running."""
        pids = self.pids(vm)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pids(vm) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pids(vm):
            raise LabError(f"{vm}: processes {self.pids(vm)} did not exit after SIGKILL")
        return bool(pids)

    def exec_in(self, vm: str, command: str) -> subprocess.CompletedProcess:
        """Run a shell command inside the VM (its namespaces and root), as on its console."""
        pid = self._booted_pid(vm)
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-p", "-n", "-r", "-w", "--", "/bin/sh", "-c", command],
                              capture_output=True, text=True, timeout=30)

    def _booted_pid(self, vm: str, timeout: float = 10.0) -> int:
        """PID 1 of the VM once it is sshd, i.e. the VM's root is mounted (never the host's root)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._init_pid(vm)
            if pid is not None:
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                        return pid
                except OSError:
                    pass
            time.sleep(0.05)
        raise LabError(f"{vm} is not running (or did not finish booting within {timeout:g} s)")
