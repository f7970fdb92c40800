"""The lab's SSH keys: the operator key, the pinned host keys, and rekeying a VM.

A part of :class:`runbooklab.site.Lab`, which combines them; the methods use its names, state and lock.
"""

from __future__ import annotations

import os
import signal
import time

from .common import run_command as _run


class Keys:
    """The lab's SSH keys: the operator key, the pinned host keys, and rekeying a VM."""

    def _ensure_keys(self, actions: list[str]) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ssh_dir, 0o700)
        if not self.key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name} lab operator", "-f", str(self.key))
            actions.append(f"generated the lab's SSH key {self.key}")
        # VMs get a folder holding only authorized_keys, never the private key
        self.authorized_dir.mkdir(parents=True, exist_ok=True)
        auth = self.authorized_dir / "authorized_keys"
        pub = (self.key.with_suffix(".pub")).read_text()
        if not auth.exists() or auth.read_text() != pub:
            auth.write_text(pub)

    def _write_known_hosts(self, vms: dict[str, dict], actions: list[str]) -> None:
        """Pin every VM's host key (the lab provisioned those keys itself, so it knows them)."""
        try:
            before = set(self.known_hosts.read_text().splitlines())
        except OSError:
            before = set()
        lines = []
        for vm, info in sorted(vms.items()):
            pub = (self.vm_dir(vm) / "state" / "ssh_host_ed25519_key.pub").read_text().split()
            line = f"{info['address']} {pub[0]} {pub[1]}"
            if before and line not in before:
                actions.append(f"{vm}: pinned its current host key")
            lines.append(line + "\n")
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.known_hosts)

    def rekey(self, vm: str) -> str:
        """Give the VM a new host key, as a man-in-the-middle would look. The pinned key is NOT updated.

        sshd reloads on SIGHUP, so the VM's other processes keep running. Returns the new fingerprint.
        """
        info = self._require_vm(vm)
        with self._locked():
            key = self.vm_dir(vm) / "state" / "ssh_host_ed25519_key"
            for f in (key, key.with_suffix(".pub")):
                f.unlink(missing_ok=True)
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{vm} (rekeyed)", "-f", str(key))
            pid = self._init_pid(vm)
            if pid is not None:
                os.kill(pid, signal.SIGHUP)  # sshd re-executes itself and loads the new key
                time.sleep(0.2)
                self._wait_ssh({vm: info["address"]})
            return _run("ssh-keygen", "-lf", str(key.with_suffix(".pub"))).stdout.split()[1]
