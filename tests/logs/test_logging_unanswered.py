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


def kubeconfig(path, server: str):
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                    "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
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

    # a server that takes the connection and never answers: each request is bounded (REQUEST_TIMEOUT, here 1 s)
    monkeypatch.setattr(k8s_verify, "REQUEST_TIMEOUT", (1, 1))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = kubeconfig(tmp_path / "silent.yml", f"https://127.0.0.1:{silent.getsockname()[1]}")
        _, api = k8s_verify.api_client(config, p)
        t0 = time.monotonic()
        with pytest.raises(k8s_verify.ApiUnanswered, match=r"^the Kubernetes API on cp1 .* does not answer \((ReadTimeoutError|SSLError|TimeoutError)"):
            client.CoreV1Api(api).list_node()
        took = time.monotonic() - t0
    assert took < 15, f"{took:.1f} s: not bounded by REQUEST_TIMEOUT (urllib3 retries 3 times: at most 4 s here)"
