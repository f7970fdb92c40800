"""Joining an RKE2 cluster: the token, the supervisor on port 9345 (servers) and its client (joiners).

The token is RKE2's: ``K10<sha256 of the server CA>::server:<secret>``, or the bare secret (then the
CA is not checked). A joiner first fetches ``/cacerts`` (the only unauthenticated answer besides
``/ping``) and refuses a CA whose hash is not the token's; every other request goes over TLS checked
against that CA, with HTTP basic authentication ``server:<secret>`` (servers) or ``node:<secret>``
(agents). A wrong secret gets ``401 Unauthorized`` and stops the joining ``rke2``.

What a server answers (RKE2's paths, and one of the lab's):

- ``/v1-rke2/server-bootstrap`` (servers): the CAs with their keys and the service-account key;
- ``/db/info`` (servers): the etcd members (their client and peer URLs), for ``etcdctl member add``;
- ``/v1-rke2/config``: the settings every server must share, to check a joiner against;
- ``/v1-rke2/apiservers``: the API servers' ``address:6443``, for the agents' load balancer;
- ``/v1-rke2/server-ca.crt``, ``/v1-rke2/client-ca.crt``;
- ``/v1-rke2/client-kubelet.crt`` (header ``RKE2-Node-Name``): the node's certificate and key;
- ``/v1-rke2/client-kwok.crt`` (the lab's): the KWOK certificate of the node, which stands in for its kubelet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import Fatal


def ca_hash(ca_pem: bytes) -> str:
    return hashlib.sha256(ca_pem).hexdigest()


def full_token(ca_pem: bytes, secret: str, user: str = "server") -> str:
    return f"K10{ca_hash(ca_pem)}::{user}:{secret}"


@dataclass(frozen=True)
class Token:
    ca_hash: str | None
    user: str
    secret: str


def parse_token(text: str) -> Token:
    """RKE2's full token (``K10<hash>::<user>:<secret>``) or a bare secret."""
    text = text.strip()
    if text.startswith("K10"):
        m = re.fullmatch(r"K10([0-9a-f]{64})::([A-Za-z0-9_-]+):(.+)", text)
        if not m:
            raise Fatal("failed to parse the token: it starts with K10 but is not K10<CA hash>::<user>:<secret>")
        return Token(m.group(1), m.group(2), m.group(3))
    if not text:
        raise Fatal("the token is empty")
    return Token(None, "server", text)


class Refused(Fatal):
    """The server refused the token (401)."""


class Unreachable(Exception):
    """The server did not answer (yet)."""


class Client:
    """A joiner's view of a server's port 9345."""

    def __init__(self, url: str, token: Token, user: str = "server"):
        self.url = url.rstrip("/")
        self.token = token
        self.user = user
        self.ca: bytes | None = None
        self.ctx: ssl.SSLContext | None = None

    def cacerts(self) -> bytes:
        """The server's CA, checked against the token's hash; every later request is checked against it."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        ca = self._fetch("/cacerts", insecure, auth=False)
        if self.token.ca_hash and not hmac.compare_digest(ca_hash(ca), self.token.ca_hash):
            raise Refused(f"token CA hash does not match the Cluster CA certificate hash: {ca_hash(ca)} != {self.token.ca_hash} "
                          f"(the CA that {self.url} serves is not the one the token names: the token is from another cluster)")
        self.ca = ca
        self.ctx = ssl.create_default_context(cadata=ca.decode())
        return ca

    def get(self, path: str, headers: dict | None = None) -> bytes:
        if self.ctx is None:
            self.cacerts()
        return self._fetch(path, self.ctx, headers=headers)

    def json(self, path: str, headers: dict | None = None):
        return json.loads(self.get(path, headers))

    def _fetch(self, path: str, ctx: ssl.SSLContext, auth: bool = True, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        if auth:
            basic = base64.b64encode(f"{self.user}:{self.token.secret}".encode()).decode()
            req.add_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace").strip()[:200]
            if e.code == 401:
                raise Refused(f"{self.url}{path}: 401 Unauthorized: the server refused the token (the secret after "
                              "'::server:' is not this cluster's); check the token given in config.yaml (token or token-file)") from None
            raise Unreachable(f"{self.url}{path}: {e.code} {body}") from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(f"{self.url}{path}: {getattr(e, 'reason', None) or e}") from None


# -- the server side ---------------------------------------------------------------------------------

Answer = tuple[int, str, bytes]  # status, content type, body


@dataclass
class Route:
    users: tuple[str, ...]  # who may ask: () for anyone
    answer: Callable[..., Answer]  # request headers (case-insensitive) -> answer


class Supervisor:
    """Port 9345 of a server: the routes, checked against the token's secrets (``server`` and ``node`` users,
    each with the secrets it may present: an agent may use the agent token or the server's)."""

    def __init__(self, secrets: dict[str, tuple[str, ...]], routes: dict[str, Route], log):
        self.secrets, self.routes, self.log = secrets, routes, log
        self.httpd: ThreadingHTTPServer | None = None

    def authorized(self, route: Route, header: str | None) -> bool:
        if not route.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user in route.users and any(hmac.compare_digest(password, s) for s in self.secrets.get(user, ()))

    def handle(self, path: str, headers, peer: str) -> Answer:
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            return 404, "text/plain", b"404 page not found\n"
        if not self.authorized(route, headers.get("Authorization")):
            self.log.warn(f"Refused {path} from {peer}: 401 Unauthorized (wrong or missing token)")
            return 401, "text/plain", b"Unauthorized\n"
        try:
            return route.answer(headers)
        except Fatal as e:
            return 503, "text/plain", f"{e}\n".encode()

    def start(self, port: int, cert: str, key: str) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                code, ctype, body = supervisor.handle(self.path, self.headers, self.client_address[0])
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        httpd = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        httpd.daemon_threads = True
        # the TLS handshake happens in each request's thread, not in the one that accepts
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="supervisor", daemon=True).start()
        self.log.info(f"Running the supervisor on port {port} (join with the token)")

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def text(body: str | bytes, ctype: str = "text/plain") -> Answer:
    return 200, ctype, body.encode() if isinstance(body, str) else body


def as_json(value) -> Answer:
    return 200, "application/json", json.dumps(value).encode()
