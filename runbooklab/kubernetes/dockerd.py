"""A Docker Engine API stand-in for lab VMs (LAB SIMULATION: no containers ever run).

No Docker engine can run on our machines, yet RKE1's prerequisite checks and the VM preflight ask
a node's Docker socket for its version. This answers the read-only calls they make (``/_ping``,
``/version``, ``/info``) on ``/var/run/docker.sock`` inside a VM, and says everywhere that it is a
simulation: the version is ``26.1.4-lab-simulation`` and the platform name says so.

    python -m runbooklab.kubernetes.dockerd [--socket /var/run/docker.sock]
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import socketserver
from http.server import BaseHTTPRequestHandler

VERSION = "26.1.4-lab-simulation"
API_VERSION = "1.45"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def address_string(self):  # unix sockets have no peer address
        return "docker.sock"

    def _send(self, code: int, body) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Server", f"Docker/{VERSION} (linux)")
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self._send(200, b"")

    def do_GET(self):
        path = self.path.split("?")[0]
        path = "/" + path.lstrip("/").split("/", 1)[1] if path.lstrip("/").startswith("v1.") else path
        uname = os.uname()
        if path == "/_ping":
            self._send(200, b"OK")
        elif path == "/version":
            self._send(200, {"Platform": {"Name": "Docker Engine - lab simulation (runbooklib; runs no containers)"},
                             "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": "1.24",
                             "Os": "linux", "Arch": "amd64", "KernelVersion": uname.release, "GitCommit": "lab-simulation",
                             "GoVersion": "lab-simulation", "Components": [{"Name": "Engine", "Version": VERSION}]})
        elif path == "/info":
            self._send(200, {"ServerVersion": VERSION, "OperatingSystem": "lab simulation", "OSType": "linux",
                             "KernelVersion": uname.release, "Name": uname.nodename, "Driver": "lab-simulation",
                             "CgroupDriver": "cgroupfs", "Containers": 0, "Images": 0, "Labels": ["runbook.lab/simulated=true"]})
        else:
            self._send(501, {"message": f"the lab Docker stand-in does not implement {path}: it runs no containers"})

    do_POST = do_DELETE = do_PUT = lambda self: self._send(  # noqa: E731
        501, {"message": "the lab Docker stand-in is read-only: it runs no containers"})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Docker Engine API stand-in (lab simulation)")
    parser.add_argument("--socket", default="/var/run/docker.sock")
    args = parser.parse_args(argv)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = Server(args.socket, Handler)
    try:  # like dockerd: root and the docker group may use the socket
        os.chown(args.socket, 0, grp.getgrnam("docker").gr_gid)
        os.chmod(args.socket, 0o660)
    except KeyError:
        os.chmod(args.socket, 0o600)
    server.serve_forever()


if __name__ == "__main__":
    main()
