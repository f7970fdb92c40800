"""RKE2's client-side load balancers: a TCP proxy in the rke2 process, on 127.0.0.1, over the servers.

An RKE2 agent runs two (``rke2-agent-load-balancer`` on 127.0.0.1:6444 over the servers' supervisor
port 9345, and ``rke2-api-server-agent-load-balancer`` on 127.0.0.1:6443 over their API servers), so
that its kubelet and its own requests survive the loss of any one server. Each connection goes to
the backend that answered last, else the next one that accepts within 2 s; a backend that refused
is skipped for 10 s. The backend list is refreshed from the servers and kept in
``/var/lib/rancher/rke2/agent/etc/<name>.json``, as RKE2 keeps it, for the next start.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from pathlib import Path

from . import AGENT_DIR


class LoadBalancer:
    def __init__(self, name: str, port: int, backends: list[str], log, host: str = "127.0.0.1"):
        self.name, self.port, self.log, self.host = name, port, log, host
        self.backends: list[str] = []
        self.failed: dict[str, float] = {}
        self.current = 0
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.set_backends(backends)

    @property
    def state_file(self) -> Path:
        return Path(AGENT_DIR) / "etc" / f"{self.name}.json"

    def set_backends(self, backends: list[str]) -> None:
        backends = list(dict.fromkeys(b for b in backends if b))
        with self.lock:
            if backends == self.backends:
                return
            self.backends = backends
            self.current = 0
        self.log.info(f"Updated load balancer {self.name} server addresses -> {backends}")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"ServerAddresses": backends}, indent=1) + "\n")

    @staticmethod
    def saved(name: str) -> list[str]:
        try:
            return list(json.loads((Path(AGENT_DIR) / "etc" / f"{name}.json").read_text()).get("ServerAddresses", []))
        except (OSError, ValueError):
            return []

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.sock = sock
        threading.Thread(target=self._accept, name=f"lb-{self.name}", daemon=True).start()
        self.log.info(f"Running load balancer {self.name} {self.host}:{self.port} -> {self.backends}")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        with self.lock:
            order = self.backends[self.current:] + self.backends[:self.current]
        now = time.monotonic()
        ranked = [b for b in order if self.failed.get(b, 0) <= now] + [b for b in order if self.failed.get(b, 0) > now]
        for backend in ranked:
            host, _, port = backend.rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                self.failed[backend] = time.monotonic() + 10
                continue
            upstream.settimeout(None)
            with self.lock:
                if backend in self.backends:
                    self.current = self.backends.index(backend)
            self.failed.pop(backend, None)
            return upstream
        return None

    def _serve(self, conn: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            conn.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, conn)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (conn, upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


def host_of(url: str) -> str:
    """The host of ``https://host:port`` (or of ``host:port``)."""
    from urllib.parse import urlsplit

    return urlsplit(url if "://" in url else f"//{url}").hostname or url
