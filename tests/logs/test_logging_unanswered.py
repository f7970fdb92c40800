"""12 and 13 when what they talk to stops answering: the message names the inventory host, not only an address.

Found by the hostile matrix (tests/hostile, stage ``logging``): with cp1 stopped mid-apply, 12's verification
crashed with the client's MaxRetryError naming only ``10.x.y.11:6443``; with elk1 stopped, 13's verdict said
``ConnectionError ... host='10.x.y.51'``. An operator at night needs the host's name to start it or heal its
link. Real clients against a real closed port and a real local HTTP server here; no lab needed.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest
import yaml

from conftest import resolvable_lab_data, set_path, write_params
from runbooklib.errors import RunbookError
from runbooklib.kubernetes import manifests
from runbooklib.kubernetes import verify as k8s_verify
from runbooklib.logging import fluentd, search
from runbooklib.params import load_params


def params(tmp_path, **changes):
    data = resolvable_lab_data(tmp_path)
    for path, value in changes.items():
        set_path(data, path, value)
    return load_params(write_params(tmp_path, data))


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig(path, server: str, insecure: bool = True):
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                    "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": insecure}}],
                                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                                    "users": [{"name": "u", "user": {"token": "not-a-secret"}}]}))
    return path


def test_the_api_is_named_by_the_inventory_host_at_the_kubeconfigs_server(tmp_path):
    p = params(tmp_path)
    assert k8s_verify.api_host(p, kubeconfig(tmp_path / "a.yml", "https://10.77.0.11:6443")) == "cp1 (https://10.77.0.11:6443)"
    # a load balancer no host is at: its URL; no kubeconfig: its path
    assert k8s_verify.api_host(p, kubeconfig(tmp_path / "b.yml", "https://10.77.0.99:6443")) == "https://10.77.0.99:6443"
    assert k8s_verify.api_host(p, tmp_path / "missing.yml") == str(tmp_path / "missing.yml")


def test_an_api_that_refuses_is_a_failing_row_naming_its_host_never_a_crash(tmp_path):
    config = kubeconfig(tmp_path / "kc.yml", f"https://127.0.0.1:{closed_port()}")
    _, api = k8s_verify.api_client(config)
    at = "cp1 (https://127.0.0.1)"
    with pytest.raises(RunbookError, match=r"the Kubernetes API on cp1 \(https://127.0.0.1\) does not answer .*start that host"):
        fluentd.nodes(api, at)
    t0 = time.monotonic()
    rows, status = fluentd.verify(api, "logging", settle=60, api_at=at)  # no waiting out the settle for an API that is gone
    assert time.monotonic() - t0 < 30
    assert status is None and len(rows) == 1 and rows[0]["status"] == "fail"
    assert rows[0]["detail"].startswith("the Kubernetes API on cp1 (https://127.0.0.1) does not answer (")


def test_a_failed_kubectl_apply_names_the_api_it_was_sent_to(tmp_path):
    tools = manifests.Tools("/bin/false", "helm", tmp_path / "kc.yml", "cp1 (https://10.77.0.11:6443)")
    step = manifests.ApplyStep(manifests.CLUSTER, "daemonset", "DaemonSet fluentd", "kubectl apply", argv=("/bin/false",))
    done, error = manifests.apply([step], tools, on_line=lambda _: None)
    assert done == [] and error.startswith("daemonset (DaemonSet fluentd) failed at the Kubernetes API on cp1 (https://10.77.0.11:6443)")


class _Engine(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        code, body = (404, {"error": {"reason": "index template matching [x] not found"}, "status": 404}) if "_index_template" in self.path \
            else (500, {"error": {"reason": "boom"}, "status": 500})
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_engine_that_does_not_answer_is_named_by_its_host_and_one_that_answers_an_error_by_its_status(tmp_path):
    p = params(tmp_path, **{"logging.endpoint": f"http://127.0.0.1:{closed_port()}"})
    engine = search.Engine.connect(p.logging, None, timeout=2, host="elk1")
    got = search.facts(engine)
    assert not got["reachable"] and got["error"].startswith(f"elk1 does not answer at {p.logging.api_url()}: ConnectionError"), got
    steps = search.plan(p, engine, got)
    assert all(s.blocked.startswith(f"elk1 does not answer at {p.logging.api_url()}: ConnectionError") for s in steps), steps
    assert all(s.blocked.count("does not answer") == 1 for s in steps), "the reason says it once"


    # a link cut under a connection: the engine's address takes the connection (a listening socket never read) and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = params(tmp_path, **{"logging.endpoint": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        engine = search.Engine.connect(p.logging, None, timeout=1, host="elk1")
        with pytest.raises(search.EngineError, match=r"^elk1 does not answer at http://127\.0\.0\.1:\d+: ConnectionTimeout"):
            engine.request("GET", "/")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        p = params(tmp_path, **{"logging.endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
        engine = search.Engine.connect(p.logging, None, timeout=2, host="elk1")
        assert search.stored_template(engine, "x") is None  # a 404 is an answer: absent, as before
        with pytest.raises(search.EngineError) as e:
            engine.request("GET", "/")
        assert str(e.value).startswith("500 boom")  # an engine that answers is not said to be silent
    finally:
        server.shutdown()
        server.server_close()


def test_every_runbooks_api_client_names_the_host_and_bounds_each_request(tmp_path, monkeypatch):
    """The client every runbook gets (``verify.api_client``, with the parameters): 10 read its first Node list through it
    and crashed on the client's MaxRetryError naming only an address when cp1 was stopped (the fold-in stage's row)."""
    import urllib3

    from runbooklib.kubernetes import capacity

    data = resolvable_lab_data(tmp_path)
    cp1 = next(h for h in data["inventory"]["hosts"] if h["name"] == "cp1")
    cp1["address"] = "127.0.0.1"
    p = load_params(write_params(tmp_path, data))
    port = closed_port()
    config = kubeconfig(tmp_path / "kc.yml", f"https://127.0.0.1:{port}")
    client, api = k8s_verify.api_client(config, p)
    with pytest.raises(k8s_verify.ApiUnanswered, match=rf"^the Kubernetes API on cp1 \(https://127.0.0.1:{port}\) does not answer "
                                                        r"\(NewConnectionError: .*refused.*\): start that host or heal its link") as refused:
        capacity.running_nodes(api, "rke2")
    # a RunbookError (a cell stops on it with its message), and an urllib3 HTTPError (the callers that make a row of it still do)
    assert isinstance(refused.value, RunbookError) and isinstance(refused.value, urllib3.exceptions.HTTPError)
    assert refused.value.api_at == f"cp1 (https://127.0.0.1:{port})"
    rows = k8s_verify.verify_api(p, config)
    assert rows == [{"check": "API answers", "target": f"cp1 (https://127.0.0.1:{port})", "status": "fail", "detail": str(refused.value)[:400]}]
    # without the parameters, the server's URL
    with pytest.raises(k8s_verify.ApiUnanswered, match=rf"^the Kubernetes API on https://127.0.0.1:{port} does not answer"):
        client.CoreV1Api(k8s_verify.api_client(config)[1]).list_node()

    # a server that takes the connection and never answers, and one that stalls mid-answer: each request is bounded
    # (REQUEST_TIMEOUT, here 1 s) and named, the body's read included
    monkeypatch.setattr(k8s_verify, "REQUEST_TIMEOUT", (1, 1))
    cert = tls_material(tmp_path)
    for server in (silent_server, lambda: stalling_server(cert)):
        with server() as port:
            _, api = k8s_verify.api_client(kubeconfig(tmp_path / "slow.yml", f"https://127.0.0.1:{port}"), p)
            err, took = bounded(lambda: client.CoreV1Api(api).list_node(), within=30)
            assert isinstance(err, k8s_verify.ApiUnanswered), err
            assert str(err).startswith(f"the Kubernetes API on cp1 (https://127.0.0.1:{port}) does not answer ("), err
            assert took < 15, f"{took:.1f} s: not bounded by REQUEST_TIMEOUT (urllib3 tries 4 times: about 4 s here)"


def test_an_api_whose_certificate_the_kubeconfig_does_not_trust_is_told_apart(tmp_path):
    """A certificate refused is an API that answered: the advice is the kubeconfig's, not to start the host."""
    data = resolvable_lab_data(tmp_path)
    next(h for h in data["inventory"]["hosts"] if h["name"] == "cp1")["address"] = "127.0.0.1"
    p = load_params(write_params(tmp_path, data))
    with stalling_server(tls_material(tmp_path)) as port:
        config = kubeconfig(tmp_path / "kc.yml", f"https://127.0.0.1:{port}", insecure=False)
        client, api = k8s_verify.api_client(config, p)
        with pytest.raises(k8s_verify.ApiUnanswered, match=rf"^the Kubernetes API on cp1 \(https://127.0.0.1:{port}\) answered with a "
                                                            r"certificate the kubeconfig does not trust \(SSLError: .*CERTIFICATE_VERIFY_FAILED"
                                                            r".*was the cluster rebuilt\? Use its current kubeconfig$"):
            client.CoreV1Api(api).list_node()


def bounded(call, within: float):
    """``call``'s exception and how long it took, in a thread (a missing bound fails the test instead of hanging it)."""
    got: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the caller checks which
            got["error"] = e
        got["took"] = time.monotonic() - t0
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert not t.is_alive(), f"the call did not end within {within} s: not bounded"
    return got.get("error"), got["took"]


def tls_material(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl), as a test API server's."""
    import subprocess

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


class _Serving:
    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.handle, self.held, self.stop = handle, [], threading.Event()

    def __enter__(self) -> int:
        threading.Thread(target=self._serve, daemon=True).start()
        return self.sock.getsockname()[1]

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)
            threading.Thread(target=self.handle, args=(conn, self.stop), daemon=True).start()

    def __exit__(self, *exc):
        self.stop.set()
        for c in self.held:
            c.close()
        self.sock.close()


def silent_server():
    """Takes each connection and says nothing (not even TLS's hello)."""
    return _Serving(lambda conn, stop: stop.wait())


def stalling_server(cert: tuple[str, str]):
    """TLS, then the head of a 200 answer and part of its body, then nothing."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)

    def handle(conn, stop):
        try:
            tls = context.wrap_socket(conn, server_side=True)
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"kind\": ")
        except (OSError, ssl.SSLError):
            return  # a client that refused our certificate
        stop.wait()
    return _Serving(handle)
