"""etcd on an RKE2 server: RKE2's certificate paths, the real etcdctl, joining as a learner, snapshots.

A server's etcd serves clients on 127.0.0.1 and the node's address (port 2379) with
``tls/etcd/server-client.crt`` (a certificate for both server and client use, signed by
``tls/etcd/server-ca.crt``: the one operators give etcdctl), and its peers on 2380 with
``tls/etcd/peer-server-client.crt`` (``tls/etcd/peer-ca.crt``). A joining server adds itself to the
cluster with ``etcdctl member add --learner`` and, once its member has caught up, promotes it
(``etcdctl member promote``), as RKE2 does: the cluster keeps its quorum while the new member syncs.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from .. import parts
from . import ETCD_DIR, SNAPSHOT_DIR, TLS_DIR, Fatal

ETCD_TLS = f"{TLS_DIR}/etcd"
SERVER_CA = f"{ETCD_TLS}/server-ca.crt"
CLIENT_CERT = f"{ETCD_TLS}/server-client.crt"
CLIENT_KEY = f"{ETCD_TLS}/server-client.key"
LOCAL = "https://127.0.0.1:2379"
NAME_FILE = f"{ETCD_DIR}/name"


def etcdctl(args: list[str], endpoints: str = LOCAL, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real etcdctl with the server's etcd client certificate."""
    argv = [parts.vm_path("etcd", "etcdctl"), f"--endpoints={endpoints}", f"--cacert={SERVER_CA}", f"--cert={CLIENT_CERT}",
            f"--key={CLIENT_KEY}", "--command-timeout=10s", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"etcdctl {' '.join(args)} did not finish within {timeout:g} s")


def member_name(node: str) -> str:
    """This server's etcd member name, ``<node>-<8 hex>`` as RKE2 names them, kept in the data folder."""
    path = Path(NAME_FILE)
    if path.exists():
        return path.read_text().strip()
    import secrets

    name = f"{node}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.write_text(name + "\n")
    return name


def has_data() -> bool:
    return Path(ETCD_DIR, "member").is_dir()


def members(endpoints: str = LOCAL) -> list[dict]:
    r = etcdctl(["member", "list", "-w", "json"], endpoints)
    if r.returncode != 0:
        raise Fatal(f"etcdctl member list at {endpoints} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return json.loads(r.stdout).get("members", [])


def healthy(timeout: float = 2.0) -> bool:
    """The local member answers /health with health true (with the client certificate, as etcdctl would)."""
    ctx = ssl.create_default_context(cafile=SERVER_CA)
    ctx.load_cert_chain(CLIENT_CERT, CLIENT_KEY)
    try:
        with urllib.request.urlopen(f"{LOCAL}/health", context=ctx, timeout=timeout) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def add_learner(name: str, peer_url: str, endpoints: str, log, stopping) -> str:
    """Add this server as a learner (kept if a former attempt added it); the ``--initial-cluster`` it starts with."""
    deadline = time.monotonic() + 600
    while not stopping.is_set():
        current = members(endpoints)
        mine = [m for m in current if peer_url in m.get("peerURLs", [])]
        if mine:
            log.info(f"etcd member for {peer_url} already in the cluster (id {mine[0]['ID']:x}); not adding it again")
            # what etcdctl member add prints: every member's peer URLs, this one under its own name
            return ",".join(f"{name if m in mine else m.get('name', '')}={u}" for m in current for u in m.get("peerURLs", []))
        log.info(f"Adding member {name}={peer_url} to etcd cluster as a learner")
        r = etcdctl(["member", "add", name, f"--peer-urls={peer_url}", "--learner"], endpoints)
        if r.returncode == 0:
            m = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', r.stdout)
            if not m:
                raise Fatal(f"etcdctl member add did not print ETCD_INITIAL_CLUSTER: {r.stdout.strip()[-300:]}")
            return m.group(1)
        if time.monotonic() > deadline:
            raise Fatal(f"could not add {name} to etcd: {(r.stderr or r.stdout).strip()[-300:]}")
        log.info(f"Waiting to add etcd member: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['']}"[:400])
        stopping.wait(5)
    raise Fatal("stopped while joining etcd")


def promote(peer_url: str, endpoints: str, log, stopping) -> None:
    """Promote this server's learner once it has caught up with the leader (etcd refuses until then)."""
    while not stopping.is_set():
        try:
            mine = [m for m in members(endpoints) if peer_url in m.get("peerURLs", [])]
        except Fatal as e:
            log.info(f"Waiting to promote etcd learner: {e}")
            stopping.wait(2)
            continue
        if not mine:
            raise Fatal(f"the etcd member for {peer_url} is gone from the cluster: it was removed; clear {ETCD_DIR} to join again")
        if not mine[0].get("isLearner"):
            return
        r = etcdctl(["member", "promote", f"{mine[0]['ID']:x}"], endpoints)
        if r.returncode == 0:
            log.info(f"Promoted etcd learner {mine[0].get('name') or peer_url} to voting member")
            return
        stopping.wait(2)


def snapshot_save(path: str) -> subprocess.CompletedProcess:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return etcdctl(["snapshot", "save", path], timeout=120)


def snapshots(directory: str = SNAPSHOT_DIR) -> list[Path]:
    d = Path(directory)
    return sorted((p for p in d.iterdir() if p.is_file() and not p.name.endswith(".part")), key=lambda p: p.stat().st_mtime) \
        if d.is_dir() else []


def restore(snapshot: str, name: str, peer_url: str, log) -> None:
    """The snapshot into a new data folder, as this server's only member (the real etcdutl; it checks etcd's integrity hash)."""
    argv = [parts.vm_path("etcd", "etcdutl"), "snapshot", "restore", snapshot, f"--name={name}", f"--initial-cluster={name}={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}", f"--data-dir={ETCD_DIR}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise Fatal(f"failed to restore etcd snapshot {snapshot}: {(r.stderr or r.stdout).strip()[-400:]}")
    Path(ETCD_DIR).chmod(0o700)
    Path(NAME_FILE).write_text(name + "\n")
    log.info(f"Restored etcd snapshot {snapshot} into {ETCD_DIR} as member {name}")
