"""DNS round-robin records, a real dnsmasq on loopback answering them to the runbook's own DNS query, the load's arithmetic, the settings' rules."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import yaml

from conftest import lab_data, set_path
from runbooklib.edge import dns, load
from runbooklib.edge.probe import Answer
from runbooklib.errors import ParamsError
from runbooklib.params import parse_params


def params(**changes):
    data = lab_data()
    data["edge"]["hostnames"] = ["app.lab.internal"]
    data["edge"]["dns"] = {"zone": "lab.internal", "ttl_seconds": 45, "resolvers": ["127.0.0.1"]}
    for path, value in changes.items():
        set_path(data, path.replace("__", "."), value)
    return parse_params(yaml.safe_dump(data, sort_keys=False), "lab")


def test_one_a_record_per_edge_node_for_every_name():
    p = params()
    got = [(r.name, r.ttl, r.address, r.host) for r in dns.records(p)]
    assert got == [("cdn.lab.internal", 45, "10.77.0.41", "edge1"), ("cdn.lab.internal", 45, "10.77.0.42", "edge2"),
                   ("app.lab.internal", 45, "10.77.0.41", "edge1"), ("app.lab.internal", 45, "10.77.0.42", "edge2")]
    snippet = dns.zone_snippet(p)
    assert "cdn.lab.internal." in snippet and "45 IN A 10.77.0.42" in snippet
    assert dns.parse_zone_snippet(snippet) == [(n, t, a) for n, t, a, _ in got]
    without = dns.parse_zone_snippet(dns.zone_snippet(p, without=("edge1",)))
    assert without == [("cdn.lab.internal", 45, "10.77.0.42"), ("app.lab.internal", 45, "10.77.0.42")]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("dnsmasq") and not os.path.exists("/usr/sbin/dnsmasq"), reason="needs dnsmasq")
def test_a_real_dnsmasq_answers_the_records_to_the_runbooks_query(tmp_path):
    p = params()
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{a} {n}\n" for n, _, a in dns.parse_zone_snippet(dns.zone_snippet(p))))
    port = _free_udp_port()
    pid_file = tmp_path / "dnsmasq.pid"
    subprocess.run(["/usr/sbin/dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                    "--listen-address=127.0.0.1", f"--port={port}", f"--pid-file={pid_file}", f"--addn-hosts={hosts}",
                    "--local-ttl=45", "--local=/lab.internal/", "--user=root"], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.05)
        addresses, ttl = dns.query_a("127.0.0.1", "app.lab.internal", port=port)
        assert sorted(addresses) == ["10.77.0.41", "10.77.0.42"] and ttl == 45
        with pytest.raises(dns.DnsError, match="NXDOMAIN"):
            dns.query_a("127.0.0.1", "nothing.lab.internal", port=port)
    finally:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)


def test_no_answer_is_an_error_naming_the_resolver():
    port = _free_udp_port()  # nothing listens there
    with pytest.raises(dns.DnsError, match="127.0.0.1"):
        dns.query_a("127.0.0.1", "app.lab.internal", timeout=0.3, port=port)


def test_percentiles_and_the_summary():
    assert load.percentile([], 50) is None
    values = [float(i) for i in range(1, 101)]
    assert (load.percentile(values, 50), load.percentile(values, 95), load.percentile(values, 99)) == (50.0, 95.0, 99.0)
    answers = [Answer("edge1", "http", True, 200, 0.010, started=0.0), Answer("edge1", "tls", True, 200, 0.030, started=0.1),
               Answer("edge2", "http", False, None, 0.001, error="ConnectionRefusedError", started=0.2)]
    rows = load.summary_rows([load.Sample("during", 0.0, answers, 1.0)])
    by_edge = {r["edge"]: r for r in rows}
    assert (by_edge["edge1"]["served"], by_edge["edge1"]["errors"], by_edge["edge1"]["p99 ms"]) == (2, 0, 30.0)
    assert (by_edge["edge2"]["served"], by_edge["edge2"]["error %"], by_edge["edge2"]["first error"]) == (0, 100.0, "ConnectionRefusedError")
    assert (by_edge["all"]["requests"], by_edge["all"]["error %"]) == (3, 33.3)


@pytest.mark.parametrize("change, field, words", [
    ({"edge__hostnames": ["cdn.lab.internal"]}, "edge.hostnames", "needs a name of its own"),
    ({"edge__https_port": 80}, "edge.https_port", "HTTP and TLS need their own ports"),
    ({"edge__dns__zone": "example.ru"}, "edge.dns.zone", "not in the zone"),
    ({"edge__failure": {"node": "w1"}}, "edge.failure.node", "does not have role edge"),
    ({"edge__ingress": {"hosts": ["db1"]}}, "edge.ingress.hosts[0]", "does not have role worker"),
    ({"edge__cdn_hostname": "CDN_lab"}, "edge.cdn_hostname", "not a DNS host name"),
    ({"edge__cdn_path": "cdn"}, "edge.cdn_path", "starts and ends with '/'"),
])
def test_bad_parameters_name_the_field(change, field, words):
    with pytest.raises(ParamsError) as e:
        params(**change)
    text = str(e.value)
    assert field in text and words in text, text
