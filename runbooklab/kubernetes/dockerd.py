"""A Docker Engine API stand-in for lab VMs (LAB SIMULATION: no containers ever run).

No Docker engine can run on our machines, yet RKE1's prerequisite checks and the VM preflight ask
a node's Docker socket for its version, and operators reach RKE1's components with ``docker exec``
(``docker exec etcd etcdctl member list``). This answers, on ``/var/run/docker.sock`` inside a VM:
``/_ping``, ``/version``, ``/info``, ``docker ps`` (RKE's "containers" are the lab's units that
the ``rke`` stand-in started: ``rke-etcd`` is the container ``etcd``) and ``docker exec`` into them
(the command runs in the VM with the container's environment, which the ``rke`` stand-in writes to
``/etc/kubernetes/containers/<name>.env``). It says everywhere that it is a simulation: the version
is ``26.1.4-lab-simulation`` and the platform name says so.

    python -m runbooklab.kubernetes.dockerd [--socket /var/run/docker.sock]
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import socketserver
import struct
import subprocess
import time
import uuid
from http.server import BaseHTTPRequestHandler

VERSION = "26.1.4-lab-simulation"
API_VERSION = "1.45"
CONTAINER_ENV = "/etc/kubernetes/containers"
EXECS: dict[str, dict] = {}  # exec id -> {container, cmd, exit code}


def containers() -> list[str]:
    """RKE's containers on this node: the ones whose environment the rke stand-in wrote and whose unit runs."""
    try:
        names = sorted(f[:-4] for f in os.listdir(CONTAINER_ENV) if f.endswith(".env"))
    except OSError:
        return []
    return [n for n in names if subprocess.run(["systemctl", "is-active", "-q", f"rke-{n}"]).returncode == 0]


def container_env(name: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    with open(f"{CONTAINER_ENV}/{name}.env") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                env[key] = value
    return env


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
        elif path == "/containers/json":
            self._send(200, [{"Id": f"lab-{n}", "Names": [f"/{n}"], "Image": "runbook-lab (no image: a unit of the lab)",
                              "State": "running", "Status": "Up (lab simulation)", "Created": int(time.time()), "Labels": {"runbook.lab/simulated": "true"}}
                             for n in containers()])
        elif path.startswith("/containers/") and path.endswith("/json"):
            name = path.split("/")[2]
            if name not in containers():
                self._send(404, {"message": f"No such container: {name}"})
            else:
                self._send(200, {"Id": f"lab-{name}", "Name": f"/{name}", "Image": "runbook-lab (no image: a unit of the lab)",
                                 "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False},
                                 "Config": {"Tty": False, "Labels": {"runbook.lab/simulated": "true"}}})
        elif path.startswith("/exec/") and path.endswith("/json"):
            e = EXECS.get(path.split("/")[2])
            if e is None:
                self._send(404, {"message": "No such exec instance"})
            else:
                self._send(200, {"ID": path.split("/")[2], "Running": e["exit"] is None, "ExitCode": e["exit"]})
        elif path == "/info":
            self._send(200, {"ServerVersion": VERSION, "OperatingSystem": "lab simulation", "OSType": "linux",
                             "KernelVersion": uname.release, "Name": uname.nodename, "Driver": "lab-simulation",
                             "CgroupDriver": "cgroupfs", "Containers": 0, "Images": 0, "Labels": ["runbook.lab/simulated=true"]})
        else:
            self._send(501, {"message": f"the lab Docker stand-in does not implement {path}: it runs no containers"})

    def do_POST(self):
        path = self.path.split("?")[0]
        path = "/" + path.lstrip("/").split("/", 1)[1] if path.lstrip("/").startswith("v1.") else path
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "containers" and parts[2] == "exec":
            if parts[1] not in containers():
                self._send(404, {"message": f"No such container: {parts[1]} (lab simulation: the containers are the "
                                            "units the rke stand-in started)"})
                return
            exec_id = uuid.uuid4().hex
            EXECS[exec_id] = {"container": parts[1], "cmd": body.get("Cmd") or [], "exit": None}
            self._send(201, {"Id": exec_id})
        elif len(parts) == 3 and parts[0] == "exec" and parts[2] == "start":
            self._exec_start(parts[1])
        else:
            self._send(501, {"message": f"the lab Docker stand-in does not implement POST {path}: it runs no containers"})

    def _exec_start(self, exec_id: str) -> None:
        """Run the command with the container's environment; stream its output in Docker's multiplexed frames."""
        e = EXECS.get(exec_id)
        if e is None:
            self._send(404, {"message": "No such exec instance"})
            return
        try:
            done = subprocess.run(e["cmd"], env=container_env(e["container"]), capture_output=True, timeout=120, cwd="/")
            code, out, err = done.returncode, done.stdout, done.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, out, err = 126, b"", f"OCI runtime exec failed: {exc}\n".encode()
        e["exit"] = code
        upgrade = self.headers.get("Upgrade", "").lower() == "tcp"
        self.send_response(101 if upgrade else 200, "UPGRADED" if upgrade else None)
        self.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
        if upgrade:
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
        self.end_headers()
        for stream, data in ((1, out), (2, err)):
            if data:
                self.wfile.write(struct.pack(">BxxxL", stream, len(data)) + data)
        self.wfile.flush()
        self.close_connection = True

    do_DELETE = do_PUT = lambda self: self._send(  # noqa: E731
        501, {"message": "the lab Docker stand-in runs no containers"})


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
