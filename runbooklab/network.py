"""The lab's network: a bridge, a namespace and a veth pair per VM; cutting and healing links.

A part of :class:`runbooklab.site.Lab`, which combines them; the methods use its names, state and lock.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .common import run_command as _run


class Network:
    """The lab's network: a bridge, a namespace and a veth pair per VM; cutting and healing links."""

    def _namespaces(self) -> list[str]:
        done = _run("ip", "netns", "list", check=False)
        names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.name + "-")]

    def _ensure_bridge(self, actions: list[str]) -> None:
        gateway = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            actions.append(f"created bridge {self.bridge}")
        addrs = _run("ip", "-o", "-4", "addr", "show", "dev", self.bridge).stdout
        if gateway not in addrs:
            _run("ip", "addr", "add", gateway, "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        # the lab is a closed room: nothing arriving on the bridge is forwarded anywhere
        for knob, value in ((f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "0"),
                            (f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "1")):
            with contextlib.suppress(OSError):
                Path(knob).write_text(value)

    def _ensure_netns(self, vm: str, address: str, actions: list[str]) -> None:
        ns, veth = self.netns(vm), self.veth(vm)
        if ns not in self._namespaces():
            _run("ip", "netns", "add", ns)
            actions.append(f"{vm}: created network namespace {ns}")
        if _run("ip", "-n", ns, "link", "show", "eth0", check=False).returncode != 0:
            _run("ip", "link", "del", veth, check=False)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self.bridge)
        if "state DOWN" in _run("ip", "link", "show", veth).stdout and not self._state().get("cut", {}).get(vm):
            _run("ip", "link", "set", veth, "up")
        cidr = f"{address}/{self.subnet.prefixlen}"
        if cidr not in _run("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0").stdout:
            _run("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, vm: str) -> None:
        """Take the VM's network link down (its processes keep running)."""
        self._require_vm(vm)
        with self._locked():
            _run("ip", "link", "set", self.veth(vm), "down")
            state = self._state()
            state.setdefault("cut", {})[vm] = True
            self._save_state(state)

    def heal(self, vm: str) -> None:
        self._require_vm(vm)
        with self._locked():
            _run("ip", "link", "set", self.veth(vm), "up")
            state = self._state()
            state.setdefault("cut", {}).pop(vm, None)
            self._save_state(state)
