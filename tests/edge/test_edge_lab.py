"""Runbook 09 and incident/edge-node-failure on a lab of two edge nodes and two workers, headless through the real runner.

Real: nginx 1.22 with the stream module on the edge nodes (Debian's packages, Debian's unit under the
lab's service manager), dnsmasq serving the round-robin records on the lab bridge, TLS handshakes and
PROXY protocol headers on the wire. The lab's stand-in: the ingress responders on the workers.

The CDN's content is real too: runbook 06 builds the GlusterFS volume first (bricks on the edge nodes,
mounted at /cdn-data on the edges and the workers), and the probe file is written through a worker's
mount, as an application pod would write it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT, manifest, require_lab, runbook, running_lab
from runbooklib.edge import dns, probe, render
from runbooklib.params import load_params
from runbooklib.ssh import Fleet

require_lab("/usr/sbin/nginx", "/usr/sbin/dnsmasq", render.STREAM_MODULE)
PROFILE = ROOT / "tests" / "data" / "edge" / "lab-edge.yaml"
CDN_TEXT = "cdn probe written by the edge lab test"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from runbooklab.edge import dnsmasq_pid

    with running_lab(tmp_path_factory.mktemp("edgelab"), "rbedge", "10.99.0.0/24", profile=str(PROFILE)) as lab:
        pid = dnsmasq_pid(lab)
        assert pid is not None, "lab up started no dnsmasq"
        # the CDN content: the Gluster volume (06), the probe file written through a worker's mount
        cdn = runbook("--archive", str(lab.root / "cdn-archive"), "run", "notebooks/06-cdn-storage.ipynb", "--params",
                      str(lab.params_file), "--apply", timeout=600)
        assert cdn.returncode == 0, cdn.stderr[-3000:]
        r = lab.exec_in("w1", f"echo '{CDN_TEXT}' > /cdn-data/probe.txt && chmod 644 /cdn-data/probe.txt")
        assert r.returncode == 0, r.stderr
        yield lab
    assert dnsmasq_pid(lab) is None and not (lab.root / "dns" / "dnsmasq.pid").exists(), "lab down left dnsmasq running"
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", f"dnsmasq {pid} still runs after lab down"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def fleet(lab):
    f = Fleet.from_params(load_params(lab.params_file), progress=None)
    yield f
    f.close()


def write_params(lab, name: str, **edge) -> Path:
    data = yaml.safe_load(lab.params_file.read_text())
    data["edge"].update(edge)
    path = lab.root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run09(archive, params, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/09-edge-load-balancing.ipynb", "--params", str(params), *extra, timeout=600)


def run_drill(archive, params, *extra):
    return runbook("--archive", str(archive), "run", "notebooks/incident/edge-node-failure.ipynb", "--params", str(params), *extra,
                   timeout=600)


def record(stdout: str) -> nbformat.NotebookNode:
    path = next(line.split("record:", 1)[1].strip() for line in stdout.splitlines() if "record:" in line)
    return nbformat.read(path, as_version=4)


def outputs_text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") if isinstance(o.get("text", ""), str) else "")
            out.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def images(nb) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


def test_09_plans_applies_verifies_then_has_nothing_to_do(lab, archive, fleet):
    p = lab.params_file
    plan = run09(archive, p)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and "PLAN mode: nothing was changed" in plan.stderr
    states = {n: r.stdout.strip() for n, r in fleet.run("systemctl is-active nginx", hosts=[fleet.hosts[2], fleet.hosts[3]]).items()}
    assert states == {"edge1": "inactive", "edge2": "inactive"}

    t0 = time.monotonic()
    up = run09(archive, p, "--apply")
    assert up.returncode == 0, up.stderr[-3000:]
    m = manifest(up.stdout)
    assert m["verdict"]["verdict"] == "applied", m["verdict"]
    changed = {(c["host"], c["operation"]) for c in m["changes"]}
    assert changed == {(h, op) for h in ("edge1", "edge2") for op in ("edge configuration", "service enabled", "service running")}
    print(f"09 --apply on a fresh edge lab: {time.monotonic() - t0:.1f} s")
    nb = record(up.stdout)
    text = outputs_text(nb)
    assert "IN A" in text and images(nb) == 1  # the zone snippet and the load figure are in the record
    assert "LAB STAND-IN ingress on w" in text

    again = run09(archive, p, "--apply")
    assert again.returncode == 0, again.stderr[-3000:]
    m2 = manifest(again.stdout)
    assert m2["verdict"]["verdict"] == "nothing to do" and m2["changes"] == []

    # as Debian runs it: enabled, the default site gone, the files in place, the previous state kept
    config = render.render(load_params(p))
    r = fleet.run(f"systemctl is-enabled nginx; test -e {render.DEFAULT_SITE} || echo no-default; "
                  f"sha256sum {render.HTTP_FILE} | cut -c1-8; ls /etc/nginx/runbooklib-previous/", hosts=[fleet.hosts[2]])["edge1"]
    assert r.stdout.split()[:2] == ["enabled", "no-default"], r.stdout
    assert "etc__nginx__sites-enabled__default" in r.stdout and "90-runbooklib-edge-stream.conf.absent" in r.stdout
    assert config.config_id in fleet.run(f"cat {render.STREAM_FILE}", hosts=[fleet.hosts[2]])["edge1"].stdout


def test_both_edges_serve_the_cdn_and_spread_tls_by_sni_to_the_ingress_responders(lab, fleet):
    p = load_params(lab.params_file)
    bridge = str(lab.subnet.network_address + 1)
    for edge, address in probe.targets(p):
        cdn = probe.probe(p, edge, address, "cdn")
        assert cdn.ok and cdn.first_line == CDN_TEXT, cdn
        assert "max-age=86400" in cdn.headers["cache-control"] and "public" in cdn.headers["cache-control"] and "expires" in cdn.headers
        # the CDN's name over TLS: routed by SNI to the edge's own TLS server, not passed through to the ingress
        cdn_tls = probe.probe(p, edge, address, "cdn-tls")
        assert cdn_tls.ok and cdn_tls.first_line == CDN_TEXT and "max-age=86400" in cdn_tls.headers["cache-control"], cdn_tls
        workers = set()
        for _ in range(12):
            tls = probe.probe(p, edge, address, "tls")
            assert tls.ok, tls
            m = re.match(r"LAB STAND-IN ingress on (w\d): host=app\.lab\.internal sni=app\.lab\.internal client=(\S+) \(proxy-protocol\) "
                         rf"peer={re.escape(address)}", tls.first_line)
            assert m, tls.first_line
            assert m.group(2) == bridge  # the client's address survived the edge: the PROXY header carried it
            workers.add(m.group(1))
        assert workers == {"w1", "w2"}, f"{edge} sent every TLS connection to {workers}"
        http = probe.probe(p, edge, address, "http")
        assert http.ok and f"client={bridge} (x-real-ip)" in http.first_line and f"xff={bridge}" in http.first_line
    # the name resolves to both edge nodes: at the lab's dnsmasq (as the parameters name it) and on every VM
    rows = dns.resolver_rows(p) + dns.vm_rows(p, fleet, p.hosts)
    assert len(rows) == 2 * (1 + len(p.hosts)) and all(r["result"] == "ok" for r in rows), rows
    addresses, ttl = dns.query_a(bridge, "app.lab.internal")
    assert sorted(addresses) == sorted(str(p.host(n).address) for n in ("edge1", "edge2")) and ttl == 30


def test_a_configuration_nginx_refuses_is_not_applied_and_the_running_one_is_kept(lab, archive, fleet):
    before = render.render(load_params(lab.params_file))
    edge1 = fleet.hosts[2]
    # a colleague's file in conf.d that nginx refuses: the new edge configuration must not go live on top of it
    fleet.run("echo 'this is not nginx configuration;' > /etc/nginx/conf.d/zz-hand-edit.conf", hosts=[edge1])["edge1"].check()
    changed = write_params(lab, "longer-cache.yaml", cdn_max_age_seconds=3600)
    try:
        bad = run09(archive, changed, "--apply")
        assert bad.returncode == 4, bad.stderr[-3000:]
        m = manifest(bad.stdout)
        assert m["verdict"]["verdict"] == "incomplete"
        text = " ".join(m["verdict"]["problems"])
        assert "nginx -t refused the new configuration" in text and "zz-hand-edit.conf" in text, text
        assert "edge2: not changed: edge1 failed first" in text
        assert m["changes"] == []
        for name, address in probe.targets(load_params(lab.params_file)):
            host = next(h for h in fleet.hosts if h.name == name)
            r = fleet.run(f"curl -s http://127.0.0.1{render.HEALTH_PATH}; grep -c 'expires 86400s' {render.HTTP_FILE}", hosts=[host])[name]
            assert r.stdout.split() == [before.config_id, "1"], f"{name}: {r.stdout}"  # the running and the on-disk config unchanged
            assert probe.probe(load_params(lab.params_file), name, address, "cdn").ok
    finally:
        fleet.run("rm -f /etc/nginx/conf.d/zz-hand-edit.conf", hosts=[edge1])["edge1"].check()
    fixed = run09(archive, changed, "--apply")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert manifest(fixed.stdout)["verdict"]["verdict"] == "applied"
    assert "max-age=3600" in probe.probe(load_params(changed), "edge1", str(edge1.address), "cdn").headers["cache-control"]
    back = run09(archive, lab.params_file, "--apply")
    assert back.returncode == 0 and manifest(back.stdout)["verdict"]["verdict"] == "applied"


def test_a_configuration_nginx_accepts_but_cannot_serve_is_rolled_back_after_the_reload(lab, archive, fleet):
    """TLS on port 22, where the VM's sshd listens: `nginx -t` passes (it binds nothing), the reload cannot take the port."""
    before = render.render(load_params(lab.params_file))
    taken = write_params(lab, "port-taken.yaml", https_port=22)
    bad = run09(archive, taken, "--apply")
    assert bad.returncode == 4, bad.stderr[-3000:]
    m = manifest(bad.stdout)
    text = " ".join(m["verdict"]["problems"])
    assert "edge1: service running" in text and "the previous configuration is back and running" in text, text
    assert "edge2: not changed: edge1 failed first" in text
    assert ("edge1", "edge configuration") in {(c["host"], c["operation"]) for c in m["changes"]}  # written, then undone
    edge1 = fleet.hosts[2]
    r = fleet.run(f"curl -s http://127.0.0.1{render.HEALTH_PATH}; grep -c 'listen 443;' {render.STREAM_FILE}", hosts=[edge1])["edge1"]
    assert r.stdout.split() == [before.config_id, "1"], r.stdout
    p = load_params(lab.params_file)
    assert all(probe.probe(p, n, a, "tls").ok for n, a in probe.targets(p))
    again = run09(archive, lab.params_file, "--apply")
    assert again.returncode == 0 and manifest(again.stdout)["verdict"]["verdict"] == "nothing to do", again.stderr[-2000:]


def test_the_edge_failure_drill_headless(lab, archive, fleet):
    drill = write_params(lab, "drill.yaml", failure={"node": "edge1", "mode": "drill"})
    plan = run_drill(archive, drill)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert manifest(plan.stdout)["verdict"]["verdict"] == "planned" and manifest(plan.stdout)["changes"] == []
    assert fleet.run("systemctl is-active nginx", hosts=[fleet.hosts[2]])["edge1"].stdout.strip() == "active"

    t0 = time.monotonic()
    done = run_drill(archive, drill, "--apply")
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "recovered", m["verdict"]
    # the drill is one plan: its way back was planned before the stop, with the steps the apply ran (an approval
    # of the plan run covers both parts)
    planned = manifest(plan.stdout)["plans"]
    assert [p["title"] for p in planned] == ["Drill: edge1 fails", "Bring edge1 back"]
    assert [p["digest"] for p in m["plans"]] == [p["digest"] for p in planned]
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [("edge1", "edge node failed (drill)"), ("edge1", "edge node back")]
    print(f"edge-failure drill --apply: {time.monotonic() - t0:.1f} s")
    nb = record(done.stdout)
    text = outputs_text(nb)
    during = re.search(r"edge1 down\s+edge1\s+(\d+)\s+0\s+(\d+)\s+100", text)
    assert during and during.group(1) == during.group(2), "every request to the stopped edge failed during the drill"
    assert re.search(r"edge1 down\s+edge2\s+(\d+)\s+\1\s+0\s", text), "the other edge served every request during the drill"
    retried = re.search(r"edge1 down, clients retry\s+all\s+(\d+)\s+(\d+)\s+0\s", text)
    assert retried and retried.group(1) == retried.group(2), "clients that try the next address were all served"
    assert "without edge1" in text and images(nb) == 1
    assert fleet.run("systemctl is-active nginx", hosts=[fleet.hosts[2]])["edge1"].stdout.strip() == "active"


def test_an_incident_with_the_vm_down_blocks_the_way_back_then_the_vm_boots_serving(lab, archive):
    incident = write_params(lab, "incident.yaml", failure={"node": "edge2", "mode": "incident"})
    lab.stop("edge2")
    try:
        r = run_drill(archive, incident, "--apply")
        assert r.returncode == 4, r.stderr[-3000:]
        m = manifest(r.stdout)
        assert m["verdict"]["verdict"] == "incomplete" and m["changes"] == []
        assert any("power the VM on" in x for x in m["verdict"]["problems"]), m["verdict"]
        assert not any(x.startswith("during the failure: edge1") for x in m["verdict"]["problems"]), m["verdict"]
    finally:
        lab.start("edge2")
    # nginx is enabled: the VM's boot starts it, with the edge configuration
    p = load_params(lab.params_file)
    for _ in range(40):
        if probe.probe(p, "edge2", str(p.host("edge2").address), "tls").ok:
            break
        time.sleep(0.25)
    after = run09(archive, lab.params_file, "--apply")
    assert after.returncode == 0, after.stderr[-3000:]
    assert manifest(after.stdout)["verdict"]["verdict"] == "nothing to do"


def test_no_address_outside_the_lab_was_dialled(lab):
    # the probes dial only the parameters' edge addresses: every one is in the lab's own subnet
    p = load_params(lab.params_file)
    assert all(os.path.commonprefix([a, str(lab.subnet.network_address)[:-1]]) for _, a in probe.targets(p))
    assert all(__import__("ipaddress").ip_address(a) in lab.subnet for _, a in probe.targets(p))
