"""The lab's ingress stand-in on a worker: HTTP and TLS responders on the ingress ports (LAB STAND-IN).

No ingress controller runs in the lab's VMs, yet the edge nodes' traffic must reach something real
behind them. This answers on the worker's ingress ports like an ingress would at the network level:
a real TCP connection on the HTTP port, a real TLS handshake (a self-signed certificate made at
``lab up``) on the TLS port, with a PROXY protocol v1 header read first when one arrives (what the
edge sends with ``proxy_protocol on``). Every answer says it is the lab's stand-in, on which
worker, which host name and SNI it was asked for, and the client address it saw (from the PROXY
header, else X-Real-IP/X-Forwarded-For, else the connection's peer)::

    LAB STAND-IN ingress on w1: host=app.lab.internal sni=app.lab.internal client=10.77.0.1 (proxy-protocol) peer=10.77.0.41

    python -m runbooklab.edge.ingress --http-port 80 --https-port 443 --cert C --key K
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import ssl
import threading

BANNER = "LAB STAND-IN ingress"


def read_proxy_header(sock: socket.socket) -> tuple[str, str] | None:
    """A PROXY protocol v1 line at the start of the connection, consumed: (client address, how); None when absent."""
    head = sock.recv(6, socket.MSG_PEEK)
    if head != b"PROXY ":
        return None
    line = b""
    while not line.endswith(b"\r\n") and len(line) < 108:  # the v1 header is at most 107 bytes
        c = sock.recv(1)
        if not c:
            break
        line += c
    parts = line.decode(errors="replace").split()
    return (parts[2], "proxy-protocol") if len(parts) >= 6 and parts[1] in ("TCP4", "TCP6") else ("unknown", "proxy-protocol")


def read_request(f) -> tuple[str, dict[str, str]]:
    request_line = f.readline(8192).decode(errors="replace").strip()
    headers = {}
    while True:
        line = f.readline(8192)
        if not line or line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode(errors="replace").partition(":")
        headers[k.strip().lower()] = v.strip()
    return request_line, headers


def answer(sock, peer: str, proxied: tuple[str, str] | None, sni: str) -> None:
    f = sock.makefile("rb")
    request_line, headers = read_request(f)
    if proxied:
        client, how = proxied
    elif headers.get("x-real-ip"):
        client, how = headers["x-real-ip"], "x-real-ip"
    elif headers.get("x-forwarded-for"):
        client, how = headers["x-forwarded-for"].split(",")[0].strip(), "x-forwarded-for"
    else:
        client, how = peer, "peer"
    body = (f"{BANNER} on {socket.gethostname()}: host={headers.get('host', '-')} sni={sni or '-'} client={client} ({how}) "
            f"peer={peer} xff={headers.get('x-forwarded-for', '-')} request={request_line[:100]!r}\n").encode()
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: lab-stand-in-ingress\r\n"
                 + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


class Plain(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        try:
            answer(self.request, self.client_address[0], read_proxy_header(self.request), "")
        except OSError:
            pass


def tls_handler(context: ssl.SSLContext):
    class Tls(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(10)
            try:
                proxied = read_proxy_header(self.request)
                with context.wrap_socket(self.request, server_side=True) as s:
                    answer(s, self.client_address[0], proxied, getattr(s, "lab_sni", ""))
            except (OSError, ssl.SSLError):
                pass
    return Tls


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--http-port", type=int, default=80)
    ap.add_argument("--https-port", type=int, default=443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args(argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    def on_sni(sock, name, _ctx):  # the name the client asked for, kept on its connection
        sock.lab_sni = name or ""
    ctx.sni_callback = on_sni
    servers = [Server(("0.0.0.0", args.http_port), Plain), Server(("0.0.0.0", args.https_port), tls_handler(ctx))]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"{BANNER}: HTTP on {args.http_port}, TLS on {args.https_port}", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
