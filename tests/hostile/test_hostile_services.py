"""Services under hostile conditions: a database primary stopped, an edge node stopped, an etcd member and
then a control-plane node stopped. A lab per test, the real CLI in a child process, the promises checked
from the archived records and from the services themselves:

- **database primary stopped** (its VM): ``05-database`` names it unreachable (a verdict, not a crash);
  the planned switchover refuses and says how to fail over; the failover (``switchover.failover``)
  promotes the real-time replica with no committed row lost, the delayed replica keeps its delay; once
  the VM is back (it boots writable) a run fences it, counts its own transactions past the promotion
  (0 here: the writes were replicated before the stop) and rejoins it; a further run changes nothing;
  no password reaches the archive;
- **edge node stopped** (its VM, not only nginx): HTTP and TLS keep flowing through the other edge
  (the probe and load code of the edge runbooks), and the runbooks name the stopped node;
- **etcd member stopped**, then **control-plane node stopped** (RKE1, three members): ``03`` plan
  names what is down, the API answers and takes a write with the remaining quorum; restored, it converges.

The database case runs by default; the others are ``slow`` (``RUNBOOK_SLOW=1``).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, manifest, require_lab, runbook, running_lab, wait_for

require_lab("/usr/sbin/mariadbd")
DB_PROFILE = ROOT / "tests" / "data" / "database" / "lab-db.yaml"
DELAY = 600


def _dblab():
    sys.path.insert(0, str(ROOT / "tests" / "database"))
    import dblab

    return dblab


def _run(archive: Path, notebook: str, params: Path, *extra: str):
    return runbook("--archive", str(archive), "run", notebook, "--params", str(params), *extra, timeout=600)


def _problems(r) -> list[str]:
    return manifest(r.stdout)["verdict"]["problems"]


class Timer:
    """How long each step of a drill took, printed at the end (the figures of the report)."""

    def __init__(self):
        self.t0 = self.last = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        self.steps.append((what, now - self.last))
        self.last = now

    def show(self, title: str) -> None:
        print(f"{title}: {time.monotonic() - self.t0:.0f} s in all; " + ", ".join(f"{w} {s:.1f} s" for w, s in self.steps))


@contextlib.contextmanager
def _db_site(tmp_path: Path, timer: Timer):
    """A database lab built by 05 (primary, real-time replica, delayed replica 600 s); afterwards no password in the archive."""
    dblab = _dblab()
    archive = tmp_path / "archive"
    with running_lab(tmp_path / "lab", "rbsvdb", "10.93.0.0/24", profile=str(DB_PROFILE)) as lab:
        timer("lab up")
        params = dblab.write_db_params(lab, "db.yaml", delay_seconds=DELAY)
        up = _run(archive, "notebooks/05-database.ipynb", params, "--apply")
        assert up.returncode == 0, up.stderr[-3000:]
        timer("05 --apply")
        sql = dblab.Sql(params)
        try:
            yield lab, sql, dblab, archive, params
        finally:
            sql.close()
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert len(files) > 10
    for value in dblab.CANARIES.values():
        for needle in (value.encode(), base64.b64encode(value.encode()).rstrip(b"=")):
            assert not [p for p in files if needle in p.read_bytes()], "a database password reached the archive"


def _written_then_stopped(lab, sql) -> list[str]:
    """An application commits rows on db1 (it knows which); once they reached the real-time replica, db1's VM stops."""
    app_password = "app-" + secrets.token_hex(6)
    sql.run("db1", "CREATE DATABASE IF NOT EXISTS drill",
            "CREATE TABLE IF NOT EXISTS drill.writes (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL)",
            f"CREATE USER IF NOT EXISTS 'app'@'localhost' IDENTIFIED BY '{app_password}'", "GRANT SELECT, INSERT ON drill.* TO 'app'@'localhost'")
    committed: list[str] = []
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            r = sql.fleet.run_on(sql.host("db1"), f"mariadb -u app -p{app_password} -N -e "
                                 "\"INSERT INTO drill.writes (at) VALUES (NOW(6)); SELECT LAST_INSERT_ID()\"")
            if r.ok and r.stdout.strip().isdigit():
                committed.append(r.stdout.strip())
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(committed) >= 20, 60, "the application writing")
    finally:
        stop.set()
        thread.join(30)
    wait_for(lambda: set(committed) <= {r["id"] for r in sql.rows("db2", "SELECT id FROM drill.writes")}, 30,
             "the committed rows on the real-time replica")
    assert lab.stop("db1")
    sql.fleet.close()
    return committed


def _fail_over(lab, sql, dblab, archive: Path, committed: list[str]) -> Path:
    """The failover with --apply: db2 promoted, no committed row lost, it takes writes, db3 follows it with its delay."""
    failover = dblab.write_db_params(lab, "db-failover.yaml", delay_seconds=DELAY, switchover={"failover": True})
    done = _run(archive, "notebooks/incident/db-switchover.ipynb", failover, "--apply")
    assert done.returncode == 0, done.stderr[-5000:]
    m = manifest(done.stdout)
    assert m["verdict"]["verdict"] == "failed over", m["verdict"]
    assert [(c["host"], c["operation"]) for c in m["changes"]] == [("db2", "stop receiving"), ("db2", "apply received"), ("db2", "mark promotion"),
                                                                   ("db2", "promote"), ("db3", "re-point"), ("db2", "drop-in")]
    assert "transactions lost at promotion (received elsewhere, not by db2): 0" in done.stderr
    assert "PENDING: db1 is down" in done.stderr

    ids = {r["id"] for r in sql.rows("db2", "SELECT id FROM drill.writes")}
    assert set(committed) <= ids, f"committed rows missing on the new primary: {sorted(set(committed) - ids)[:10]}"
    assert sql.rows("db2", "SHOW SLAVE STATUS") == [] and sql.value("db2", "SELECT @@read_only") == "0"
    sql.run("db2", "INSERT INTO drill.writes (at) VALUES (NOW(6))")
    delayed = sql.rows("db3", "SHOW SLAVE STATUS")[0]
    assert delayed["Master_Host"] == str(sql.host("db2").address) and delayed["SQL_Delay"] == str(DELAY), delayed
    wait_for(lambda: sql.rows("db3", "SHOW SLAVE STATUS")[0]["Slave_IO_Running"] == "Yes", 30, "the delayed replica receiving from db2")
    return failover


@pytest.mark.hostile("database primary stopped", ["05-database", "db-switchover"])
def test_database_primary_stopped_status_names_it_and_the_failover_loses_no_committed_row(tmp_path):
    timer = Timer()
    with _db_site(tmp_path, timer) as (lab, sql, dblab, archive, params):
        committed = _written_then_stopped(lab, sql)
        timer("writes, stop")
        # the status names the stopped primary: a verdict, not a crash
        status = _run(archive, "notebooks/05-database.ipynb", params)
        assert status.returncode == 4 and "Traceback" not in status.stderr, status.stderr[-3000:]
        m = manifest(status.stdout)
        assert m["verdict"]["verdict"] == "incomplete" and m["changes"] == []
        assert any(p.startswith("db1: unreachable") for p in m["verdict"]["problems"]), m["verdict"]
        timer("05 status")
        _fail_over(lab, sql, dblab, archive, committed)
        timer("failover --apply")
    timer.show("database primary stopped")


@pytest.mark.slow
@pytest.mark.hostile("database primary stopped", ["db-switchover", "05-database"])
def test_database_primary_stopped_then_back_is_fenced_counted_and_rejoined(tmp_path):
    timer = Timer()
    with _db_site(tmp_path, timer) as (lab, sql, dblab, archive, params):
        committed = _written_then_stopped(lab, sql)
        # a planned switchover cannot freeze it: refused, saying how to fail over
        planned = _run(archive, "notebooks/incident/db-switchover.ipynb", dblab.write_db_params(lab, "db-switch.yaml", delay_seconds=DELAY,
                                                                                                 switchover={}), "--apply")
        assert planned.returncode == 4 and manifest(planned.stdout)["changes"] == [], planned.stderr[-3000:]
        assert any("database.switchover.failover: true" in p for p in _problems(planned)), _problems(planned)
        timer("switchover refused")
        failover = _fail_over(lab, sql, dblab, archive, committed)
        timer("failover --apply")

        # while db1 is down, a run has nothing to do and says what is pending
        waiting = _run(archive, "notebooks/incident/db-switchover.ipynb", failover, "--apply")
        assert waiting.returncode == 0 and manifest(waiting.stdout)["changes"] == [], waiting.stderr[-3000:]
        assert manifest(waiting.stdout)["verdict"]["verdict"] == "failed over" and "PENDING: db1 is down" in waiting.stderr
        timer("run while down")

        # the VM comes back: its server boots writable (the drop-in it had); the run fences, counts and rejoins it
        assert lab.start("db1")
        wait_for(lambda: sql.shell("db1", "systemctl is-active mariadb").stdout.strip() == "active", 60, "mariadb on db1 after boot")
        wait_for(lambda: sql.value("db1", "SELECT 1") == "1", 60, "db1 answering")
        assert sql.value("db1", "SELECT @@read_only") == "0"  # what the fence is for
        # 05 with the roles swapped will not point a former primary at the new one
        early = _run(archive, "notebooks/05-database.ipynb", dblab.write_db_params(lab, "db-after.yaml", delay_seconds=DELAY, primary="db2",
                                                                                  replica="db1"))
        assert "it was a primary" in early.stderr and "db1 replicates from nothing" in early.stderr, early.stderr[-3000:]
        timer("boot, 05 refuses")
        rejoin = _run(archive, "notebooks/incident/db-switchover.ipynb", failover, "--apply")
        assert rejoin.returncode == 0, rejoin.stderr[-5000:]
        m = manifest(rejoin.stdout)
        assert m["verdict"]["verdict"] == "rejoined", m["verdict"]
        assert [(c["host"], c["operation"]) for c in m["changes"]] == [("db1", "fence"), ("db1", "count"), ("db1", "rejoin"), ("db1", "drop-in")]
        assert "db1's own transactions past the promotion: 0 with data (0 rows)" in rejoin.stderr, rejoin.stderr[-3000:]
        print(next(line.strip(" |") for line in rejoin.stderr.splitlines() if "own transactions past the promotion" in line))
        assert sql.value("db1", "SELECT @@read_only") == "1"
        wait_for(lambda: (sql.rows("db1", "SHOW SLAVE STATUS") or [{}])[0].get("Slave_SQL_Running") == "Yes", 30, "db1 replicating from db2")
        assert sql.rows("db1", "SHOW SLAVE STATUS")[0]["Master_Host"] == str(sql.host("db2").address)
        mark = sql.value("db2", "SELECT MAX(id) FROM drill.writes")
        wait_for(lambda: sql.value("db1", f"SELECT COUNT(*) FROM drill.writes WHERE id = {mark}") == "1", 30, "the new primary's write on db1")
        ids = {r["id"] for r in sql.rows("db1", "SELECT id FROM drill.writes")}
        assert set(committed) <= ids
        timer("fence, count, rejoin")

        again = _run(archive, "notebooks/incident/db-switchover.ipynb", failover, "--apply")
        assert again.returncode == 0, again.stderr[-3000:]
        assert manifest(again.stdout)["changes"] == [] and manifest(again.stdout)["verdict"]["verdict"] == "nothing to do"
        timer("second run")
        after = _run(archive, "notebooks/05-database.ipynb", dblab.write_db_params(lab, "db-after.yaml", delay_seconds=DELAY, primary="db2",
                                                                                  replica="db1"), "--apply")
        assert after.returncode == 0, after.stderr[-3000:]
        assert manifest(after.stdout)["changes"] == [] and manifest(after.stdout)["verdict"]["verdict"] == "nothing to do"
        timer("05 agrees")
    timer.show("database primary stopped, then back")


# -- an edge node stopped -----------------------------------------------------------------------------

EDGE_PROFILE = ROOT / "tests" / "data" / "edge" / "lab-edge.yaml"


def _outputs(stdout: str) -> str:
    import nbformat

    path = next(line.split("record:", 1)[1].strip() for line in stdout.splitlines() if "record:" in line)
    nb = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "" for c in nb.cells for o in c.get("outputs", [])) + \
        "\n".join(o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
@pytest.mark.hostile("edge node stopped", ["09-edge-load-balancing", "edge-node-failure"])
def test_edge_node_stopped_traffic_flows_through_the_other_and_the_runbooks_name_it(tmp_path):
    import re

    import yaml

    from runbooklib.edge import probe, render
    from runbooklib.params import load_params

    require_lab("/usr/sbin/nginx", "/usr/sbin/dnsmasq", render.STREAM_MODULE)
    t_start = time.monotonic()
    archive = tmp_path / "archive"
    with running_lab(tmp_path / "lab", "rbsved", "10.92.0.0/24", profile=str(EDGE_PROFILE)) as lab:
        # the CDN's content (06), the probe file written through a worker's mount; then the edge (09)
        cdn = _run(archive, "notebooks/06-cdn-storage.ipynb", lab.params_file, "--apply")
        assert cdn.returncode == 0, cdn.stderr[-3000:]
        assert lab.exec_in("w1", "echo 'cdn probe' > /cdn-data/probe.txt && chmod 644 /cdn-data/probe.txt").returncode == 0
        up = _run(archive, "notebooks/09-edge-load-balancing.ipynb", lab.params_file, "--apply")
        assert up.returncode == 0, up.stderr[-3000:]
        p = load_params(lab.params_file)
        survivor = str(p.host("edge2").address)

        assert lab.stop("edge1")  # the VM: nginx, its brick, its sshd, all gone
        for kind in ("http", "tls"):
            a = probe.probe(p, "edge2", survivor, kind)
            assert a.ok, f"{kind} through edge2 with edge1 stopped: {a.error}"

        # 09 names the stopped node; the survivor serves every request of its load
        status = _run(archive, "notebooks/09-edge-load-balancing.ipynb", lab.params_file, "--apply")
        assert status.returncode == 4 and "Traceback" not in status.stderr, status.stderr[-3000:]
        m = manifest(status.stdout)
        assert m["changes"] == [] and m["verdict"]["verdict"] == "incomplete", m["verdict"]
        problems = m["verdict"]["problems"]
        assert any(x.startswith("edge1") and "unreachable" in x for x in problems), problems
        assert not [x for x in problems if "edge2" in x], problems
        text = _outputs(status.stdout)
        assert re.search(r"edge2\s+\S+\s+HTTP :80\s+\S+\s+[\d.]+\s+.*ok", text) and re.search(r"edge2\s+\S+\s+TLS :443 \(SNI\)\s+.*ok", text), text[-3000:]

        # the incident runbook measures it: every request through edge2 served, clients that retry all served
        data = yaml.safe_load(lab.params_file.read_text())
        data["edge"]["failure"] = {"node": "edge1", "mode": "incident"}
        incident = lab.root / "incident.yaml"
        incident.write_text(yaml.safe_dump(data, sort_keys=False))
        r = _run(archive, "notebooks/incident/edge-node-failure.ipynb", incident, "--apply")
        assert r.returncode == 4, r.stderr[-3000:]
        m = manifest(r.stdout)
        assert m["changes"] == [] and m["verdict"]["verdict"] == "incomplete"
        assert any("edge1" in x and "power the VM on" in x for x in m["verdict"]["problems"]), m["verdict"]
        assert not any(x.startswith("during the failure") for x in m["verdict"]["problems"]), m["verdict"]
        text = _outputs(r.stdout)
        survived = re.search(r"edge1 down\s+edge2\s+(\d+)\s+(\d+)\s+0\s", text)
        assert survived and survived.group(1) == survived.group(2) and int(survived.group(1)) > 0, "edge2 served every request"
        retried = re.search(r"edge1 down, clients retry\s+all\s+(\d+)\s+(\d+)\s+0\s", text)
        assert retried and retried.group(1) == retried.group(2), "clients that try the next address were all served"
        print(f"edge1 stopped: edge2 served {survived.group(1)} of {survived.group(1)} requests; retrying clients "
              f"{retried.group(2)} of {retried.group(1)}")

        # back: the VM boots serving (nginx enabled), 09 converges with nothing to do
        assert lab.start("edge1")
        wait_for(lambda: probe.probe(p, "edge1", str(p.host("edge1").address), "tls").ok, 30, "edge1 serving after boot", every=0.5)
        after = _run(archive, "notebooks/09-edge-load-balancing.ipynb", lab.params_file, "--apply")
        assert after.returncode == 0, after.stderr[-3000:]
        assert manifest(after.stdout)["verdict"]["verdict"] == "nothing to do"
    print(f"edge node stopped: {time.monotonic() - t_start:.0f} s in all")


# -- an etcd member stopped, then a control-plane node -----------------------------------------------


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    """The seed lab's RKE1 cluster (three etcd members), brought up as on a site (02, 03)."""
    import yaml

    from conftest import LAB_PARAMS
    from runbooklab.kubernetes import parts

    version = yaml.safe_load(LAB_PARAMS.read_text())["kubernetes"]["version"]
    kubectl = str(parts.host_path("kubernetes", "kubectl", version))
    require_lab(kubectl, str(parts.host_path("kubernetes", "kube-apiserver", version)))
    with running_lab(tmp_path_factory.mktemp("svk8s"), "rbsvk", "10.91.0.0/24", profile="seed") as lab:
        archive = lab.root / "archive"
        for nb in ("02-vm-baseline", "03-kubernetes-cluster"):
            done = _run(archive, f"notebooks/{nb}.ipynb", lab.params_file, "--apply")
            assert done.returncode == 0, done.stderr[-3000:]
        lab.kubectl = lambda *args: __import__("subprocess").run(
            [kubectl, "--kubeconfig", str(lab.root / "kubernetes" / "kube_config_cluster.yml"), "--request-timeout=20s", *args],
            capture_output=True, text=True, timeout=60)
        lab.archive = archive
        yield lab


def _api_available(lab, name: str) -> None:
    """The API answers with the remaining quorum: nodes listed, and a write accepted and read back."""
    nodes = lab.kubectl("get", "nodes", "--no-headers")
    assert nodes.returncode == 0 and len(nodes.stdout.splitlines()) == 8, nodes.stdout + nodes.stderr
    made = lab.kubectl("create", "configmap", name, "--from-literal=at=" + str(time.time()))
    assert made.returncode == 0, made.stderr
    assert lab.kubectl("get", "configmap", name, "-o", "name").stdout.strip() == f"configmap/{name}"


def _plan03(lab):
    t0 = time.monotonic()
    r = _run(lab.archive, "notebooks/03-kubernetes-cluster.ipynb", lab.params_file)
    return r, time.monotonic() - t0


def _converges(lab, what: str, timeout: float = 300) -> float:
    """03 (plan) passes every check again; how long it took."""
    t0 = time.monotonic()
    last = None

    def ok():
        nonlocal last
        last, _ = _plan03(lab)
        return last.returncode == 0 and manifest(last.stdout)["verdict"]["problems"] == []

    try:
        wait_for(ok, timeout, f"the cluster converging after {what}", every=5)
    except BaseException:
        print(last.stderr[-3000:] if last else "")
        raise
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.hostile("etcd member stopped", ["03-kubernetes-cluster"])
def test_etcd_member_stopped_is_named_and_the_api_keeps_its_quorum(k8s):
    lab = k8s
    assert lab.exec_in("cp2", "systemctl stop rke-etcd").returncode == 0
    try:
        r, took = _plan03(lab)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr[-3000:]
        m = manifest(r.stdout)
        assert m["changes"] == [] and m["verdict"]["verdict"] == "incomplete", m["verdict"]
        problems = m["verdict"]["problems"]
        assert any(x.startswith("etcd member healthy cp2") for x in problems), problems
        assert not [x for x in problems if "cp1" in x or "cp3" in x], problems
        _api_available(lab, "written-without-cp2-etcd")
        print(f"03 plan with cp2's etcd stopped: {took:.1f} s; its problems: {problems}")
    finally:
        lab.exec_in("cp2", "systemctl start rke-etcd")
    print(f"converged after cp2's etcd started again: {_converges(lab, 'cp2 etcd back'):.0f} s")


@pytest.mark.slow
@pytest.mark.hostile("control-plane node stopped", ["03-kubernetes-cluster"])
def test_control_plane_node_stopped_is_named_and_the_api_keeps_its_quorum(k8s):
    lab = k8s
    assert lab.stop("cp3")
    try:
        r, took = _plan03(lab)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr[-3000:]
        m = manifest(r.stdout)
        assert m["changes"] == [] and m["verdict"]["verdict"] in ("not ready", "incomplete"), m["verdict"]
        problems = m["verdict"]["problems"]
        assert any("cp3" in x for x in problems), problems
        assert not [x for x in problems if "cp1" in x or "cp2" in x], problems
        _api_available(lab, "written-without-cp3")
        print(f"03 plan with cp3 stopped: {took:.1f} s; verdict {m['verdict']['verdict']}, problems: {problems}")
    finally:
        lab.start("cp3")
    print(f"converged after cp3 booted: {_converges(lab, 'cp3 back'):.0f} s")
