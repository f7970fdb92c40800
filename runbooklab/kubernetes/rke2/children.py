"""RKE2's "static pods": the real binaries as child processes of ``rke2``, restarted when they exit.

RKE2 has the kubelet run etcd and the control plane as static pods, restarted with a back-off when
they exit. The stand-in runs them as its own children (each dies with it: ``PR_SET_PDEATHSIG``), writes
each one's output where RKE2 keeps pod logs (``/var/log/pods/kube-system_<component>-<node>_lab/...``),
restarts an exited one after a back-off (2 s, doubling to 30 s, reset after a minute running), and on
stop sends SIGTERM to all, then SIGKILL to what is left after 10 s.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import POD_LOGS

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


try:  # loaded here, never between fork and exec (no dlopen in a child of a threaded process)
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def set_process_name(name: str) -> None:
    """What ``ps`` and ``pgrep -x`` call this process (the kernel's comm, 15 characters)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_NAME, name.encode()[:15])


def pod_log(component: str, node: str) -> str:
    """Where RKE2's kubelet would keep the static pod's container log (the lab's pod has no UID: ``lab``)."""
    return f"{POD_LOGS}/kube-system_{component}-{node}_lab/{component}/0.log"


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 2.0
    next_start: float = 0.0
    restarts: int = 0
    env: dict = field(default_factory=dict)

    def start(self) -> None:
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                         env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **self.env},
                                         preexec_fn=_die_with_parent)
        self.started = time.monotonic()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Children:
    """The children of one rke2 process, by name, in the order they were started."""

    def __init__(self, log):
        self.log = log
        self.children: dict[str, Child] = {}

    def start(self, name: str, argv: list[str], log_path: str, env: dict | None = None) -> None:
        """Start ``name`` (stopping a former one of that name first)."""
        if name in self.children:
            self.stop(name)
        child = Child(name, argv, log_path, env=env or {})
        child.start()
        self.children[name] = child
        self.log.info(f"Started {name} (pid {child.proc.pid}; log {log_path})")

    def check(self) -> None:
        """Restart the children that exited, each after its back-off."""
        now = time.monotonic()
        for child in self.children.values():
            if child.running() or child.proc is None:
                if child.running() and now - child.started > 60:
                    child.backoff = 2.0
                continue
            if child.next_start == 0.0:
                code = child.proc.returncode
                child.next_start = now + child.backoff
                self.log.warn(f"{child.name} exited with {code}; restarting in {child.backoff:g} s (see {child.log_path})")
                child.backoff = min(child.backoff * 2, 30.0)
            elif now >= child.next_start:
                child.next_start = 0.0
                child.restarts += 1
                child.start()
                self.log.info(f"Restarted {child.name} (pid {child.proc.pid}, restart {child.restarts})")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            _stop([child], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM to every child (the last started first), SIGKILL to any left after ``timeout``."""
        _stop(list(reversed(self.children.values())), timeout)
        self.children.clear()


def _stop(children: list[Child], timeout: float) -> None:
    for child in children:
        if child.running():
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(5)
