"""Traffic through the edge, from the runbook host, as a client would send it: the CDN, HTTP and TLS passthrough.

Only the edge nodes' addresses from the parameters are ever dialled. A TLS probe connects to an
edge node's address with the application's host name as SNI, completes the handshake with what
answers behind the edge (the ingress: its certificate is not judged here, the path is) and sends
one request. Each probe returns what came back: the status, the first line of the body, the cache
headers, the time it took, or the error.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    edge: str
    kind: str  # cdn | cdn-tls | http | tls
    ok: bool
    status: int | None = None
    seconds: float = 0.0
    first_line: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    started: float = 0.0  # time.monotonic() at the start


def _exchange(sock, host: str, path: str) -> tuple[int, dict[str, str], str]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: runbooklib-edge-probe\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while len(data) < 65536:
        chunk = sock.recv(16384)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise OSError(f"not an HTTP answer: {lines[0][:80] if lines else 'nothing'}")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        key = k.strip().lower()
        headers[key] = f"{headers[key]}, {v.strip()}" if key in headers else v.strip()
    return status, headers, body.decode(errors="replace").strip().splitlines()[0][:200] if body.strip() else ""


def request(edge: str, address: str, port: int, host: str, path: str, kind: str, tls: bool, timeout: float) -> Answer:
    t0 = time.monotonic()
    answer = Answer(edge, kind, False, started=t0)
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # the path is measured here, not the ingress's certificate
                with ctx.wrap_socket(raw, server_hostname=host) as s:
                    answer.status, answer.headers, answer.first_line = _exchange(s, host, path)
            else:
                answer.status, answer.headers, answer.first_line = _exchange(raw, host, path)
        answer.ok = answer.status is not None and answer.status < 500
        if not answer.ok:
            answer.error = f"HTTP {answer.status}"
    except (OSError, ssl.SSLError, ValueError) as e:
        answer.error = f"{type(e).__name__}: {e}"[:200]
    answer.seconds = time.monotonic() - t0
    return answer


def targets(p) -> list[tuple[str, str]]:
    """(edge node, address) for every edge node of the parameters: the only addresses a probe dials."""
    return [(n, str(p.host(n).address)) for n in p.edge.hosts]


def probe(p, edge: str, address: str, kind: str, timeout: float | None = None) -> Answer:
    """One request of ``kind`` through one edge node: ``cdn`` (the probe file), ``http`` or ``tls`` (an application name)."""
    e = p.edge
    timeout = timeout or e.load.timeout_seconds
    app = e.hostnames[0] if e.hostnames else "ingress.invalid"
    if kind == "cdn":
        a = request(edge, address, e.http_port, e.cdn_hostname, e.cdn_path + e.cdn_probe_file, kind, False, timeout)
        if a.status is not None and a.status != 200:  # the CDN answers its file, nothing else counts as served
            a.ok, a.error = False, f"HTTP {a.status} for {e.cdn_path}{e.cdn_probe_file} (is {e.cdn_probe_file} on the CDN volume?)"
        return a
    if kind == "cdn-tls":  # the CDN's name as SNI: the edge's own TLS server answers, not the ingress
        a = request(edge, address, e.https_port, e.cdn_hostname, e.cdn_path + e.cdn_probe_file, kind, True, timeout)
        if a.status is not None and a.status != 200:
            a.ok, a.error = False, f"HTTP {a.status} for {e.cdn_path}{e.cdn_probe_file} over TLS"
        return a
    if kind == "http":
        return request(edge, address, e.http_port, app, "/", kind, False, timeout)
    return request(edge, address, e.https_port, app, "/", kind, True, timeout)


KINDS = ("cdn", "http", "tls")


def kinds(p) -> tuple[str, ...]:
    """The kinds of traffic the edge carries with these parameters (the CDN over TLS when the edge has its certificate)."""
    return KINDS[:1] + (("cdn-tls",) if p.edge.cdn_tls is not None else ()) + KINDS[1:]


def serving_rows(p, nodes: list[str] | None = None, tries: int = 1) -> list[dict]:
    """Every kind of traffic through every edge node (``tries`` requests each): what answered, or why not."""
    rows = []
    for edge, address in targets(p):
        if nodes is not None and edge not in nodes:
            continue
        for kind in kinds(p):
            for _ in range(tries):
                a = probe(p, edge, address, kind)
                rows.append({"edge": edge, "address": address, "traffic": {"cdn": f"CDN {p.edge.cdn_hostname}",
                                                                            "cdn-tls": f"CDN over TLS :{p.edge.https_port}",
                                                                            "http": f"HTTP :{p.edge.http_port}",
                                                                            "tls": f"TLS :{p.edge.https_port} (SNI)"}[kind],
                             "status": a.status or "", "ms": round(a.seconds * 1000, 1),
                             "answer": a.first_line if a.ok else a.error,
                             "cache-control": a.headers.get("cache-control", "") if kind.startswith("cdn") else "",
                             "result": "ok" if a.ok else "fail"})
    return rows


def problems(rows: list[dict], expect_down: tuple[str, ...] = ()) -> list[str]:
    """A problem per failed row of a node that should serve, and per answering row of a node that should not."""
    out = []
    for r in rows:
        if r["edge"] in expect_down:
            if r["result"] == "ok":
                out.append(f"{r['edge']}: {r['traffic']} still answers although the node should be down")
        elif r["result"] != "ok":
            out.append(f"{r['edge']}: {r['traffic']} failed: {r['status'] or ''} {r['answer']}".replace("  ", " "))
    return out
