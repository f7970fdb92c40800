"""The lab's real etcd: members started over SSH on the etcd-role VMs, and a small v3 client.

Members run Debian's etcd (3.4) the way a distribution starts them: one member per etcd node,
peers on :2380 and clients on :2379 of the node's address (plain HTTP: the lab network is closed;
RKE uses TLS here). The client speaks etcd's v3 JSON gateway (``/v3/kv/...``) with the standard
library only, so it runs inside a VM from the project's interpreter without extra packages.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

from .. import daemon

DATA_DIR = "/var/lib/etcd-lab"
LOG = "/var/log/etcd-lab.log"


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return _b64(bytes(b))


class EtcdUnavailable(Exception):
    pass


class EtcdClient:
    """put/get/list/compare-and-swap over the v3 gateway, failing over between endpoints."""

    def __init__(self, endpoints: Iterable[str], timeout: float = 5.0):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout

    def _call(self, path: str, body: dict) -> dict:
        last = None
        for endpoint in list(self.endpoints):
            req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as e:
                last = f"{endpoint}: HTTP {e.code} {e.read()[:200]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = f"{endpoint}: {e}"
                # prefer a working member next time
                self.endpoints.remove(endpoint)
                self.endpoints.append(endpoint)
        raise EtcdUnavailable(f"no etcd member answered ({last})")

    def get(self, key: str) -> tuple[bytes, int] | None:
        r = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = r.get("kvs") or []
        return (_unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])) if kvs else None

    def range(self, prefix: str) -> tuple[list[tuple[str, bytes, int]], int]:
        """Every key under ``prefix`` with value and mod revision, and the store's revision."""
        r = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        items = [(_unb64(kv["key"]).decode(), _unb64(kv.get("value", "")), int(kv["mod_revision"]))
                 for kv in r.get("kvs") or []]
        return items, int(r["header"]["revision"])

    def create(self, key: str, value: bytes) -> int | None:
        """Put only if absent. Returns the new revision, or None if the key exists."""
        r = self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return int(r["header"]["revision"]) if r.get("succeeded") else None

    def update(self, key: str, value: bytes, expected_revision: int) -> int | None:
        """Put only if the key's mod revision is still ``expected_revision``. None on conflict."""
        r = self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(expected_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return int(r["header"]["revision"]) if r.get("succeeded") else None

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        if expected_revision is None:
            r = self._call("/v3/kv/deleterange", {"key": _b64(key)})
            return int(r.get("deleted", 0)) > 0
        r = self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(expected_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}]})
        return bool(r.get("succeeded"))

    def delete_prefix(self, prefix: str) -> int:
        r = self._call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return int(r.get("deleted", 0))

    def healthy(self) -> bool:
        try:
            self._call("/v3/maintenance/status", {})
            return True
        except EtcdUnavailable:
            return False


# -- members, over SSH --------------------------------------------------------------------------

def member_command(name: str, address: str, initial_cluster: str, state: str = "new", token: str = "lab") -> str:
    """The shell command that starts one member detached (it outlives the SSH session)."""
    args = [
        "etcd", "--name", name, "--data-dir", f"{DATA_DIR}/{name}.etcd",
        "--listen-client-urls", f"http://{address}:2379,http://127.0.0.1:2379",
        "--advertise-client-urls", f"http://{address}:2379",
        "--listen-peer-urls", f"http://{address}:2380",
        "--initial-advertise-peer-urls", f"http://{address}:2380",
        "--initial-cluster", initial_cluster, "--initial-cluster-state", state, "--initial-cluster-token", token,
    ]
    return (f"mkdir -p {DATA_DIR} && " + daemon.enable("lab-etcd", " ".join(shlex.quote(a) for a in args), LOG))


def start_cluster(fleet, hosts, timeout: float = 30.0) -> list[str]:
    """Start one member per host (idempotent: running members are left alone); wait for health."""
    initial = ",".join(f"{h.name}=http://{h.address}:2380" for h in hosts)
    results = fleet.run(lambda h: member_command(h.name, str(h.address), initial), hosts=hosts, desc="etcd members")
    failed = {h: r.error for h, r in results.items() if not r.ok}
    if failed:
        raise RuntimeError("etcd did not start on " + "; ".join(failed.values()))
    started = [h for h, r in results.items() if "started" in r.stdout]
    client = EtcdClient(endpoints(hosts))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.healthy():
            return started
        time.sleep(0.2)
    raise RuntimeError(f"etcd cluster of {', '.join(h.name for h in hosts)} is not healthy after {timeout:g} s "
                       f"(see {LOG} on the members)")


def endpoints(hosts) -> list[str]:
    return [f"http://{h.address}:2379" for h in hosts]
