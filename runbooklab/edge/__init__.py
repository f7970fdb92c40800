"""What the edge phase needs of the lab: the site's DNS (a real dnsmasq) and the ingress behind the edge (a stand-in).

Registered in :data:`runbooklab.site.PROVISIONERS`; ``runbook lab up`` calls :func:`provision`
after the VMs are up, ``runbook lab down`` calls :func:`teardown`.

- **DNS (real: Debian's dnsmasq).** The lab plays the site's DNS team: it takes the zone snippet the
  product renders (:func:`runbooklib.edge.dns.zone_snippet`), loads its A records into a dnsmasq of
  its own on the lab bridge's address (its own pid file, hosts file and log under ``<lab>/dns/``,
  nothing from the machine's configuration: ``--conf-file=/dev/null --no-resolv --no-hosts``), and
  points every VM's ``/etc/resolv.conf`` at it. Stopped by its PID at ``lab down``.
- **The CDN's certificate (LAB STAND-IN for the site's PKI).** When ``edge.cdn_tls`` is set, a
  self-signed certificate for the CDN's name where it says, on each edge node.
- **The ingress (LAB STAND-IN).** Each ingress worker runs :mod:`runbooklab.edge.ingress` on the
  ingress ports, with a self-signed certificate made in the VM at ``lab up``, so that the edge's
  traffic reaches a real TLS handshake and an answer naming the worker.

The edge nodes themselves get nothing: nginx and its stream module are the Debian packages
installed on the machine (the VMs' root), and runbook 09 configures them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from runbooklib.edge.dns import parse_zone_snippet, zone_snippet
from runbooklib.edge.settings import ingress_hosts

from ..common import PROJECT, LabError

DAEMON = "lab-ingress"
CERT_DIR = "/etc/runbook-lab/ingress"


def dns_dir(lab) -> Path:
    return lab.root / "dns"


def bridge_address(lab) -> str:
    return str(lab.subnet.network_address + 1)


def dnsmasq_args(lab, ttl: int, zone: str) -> list[str]:
    d = dns_dir(lab)
    return ["/usr/sbin/dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={bridge_address(lab)}", "--port=53", f"--pid-file={d / 'dnsmasq.pid'}",
            f"--addn-hosts={d / 'hosts'}", f"--local-ttl={ttl}", f"--local=/{zone}/", "--user=root",
            f"--log-facility={d / 'dnsmasq.log'}", "--log-queries"]


def dnsmasq_pid(lab) -> int | None:
    """The lab's dnsmasq, by its pid file, if that PID is a dnsmasq still running."""
    try:
        pid = int((dns_dir(lab) / "dnsmasq.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == "dnsmasq" and state != "Z" else None  # an exited one waits for its reaper as a zombie


def stop_dns(lab, actions: list[str]) -> None:
    pid = dnsmasq_pid(lab)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while dnsmasq_pid(lab) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    (dns_dir(lab) / "dnsmasq.pid").unlink(missing_ok=True)
    actions.append(f"stopped the lab's dnsmasq (pid {pid})")


def ensure_dns(lab, params, actions: list[str]) -> None:
    """dnsmasq serving the product's round-robin records on the bridge address; restarted when its options change."""
    e = params.edge
    d = dns_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    records = parse_zone_snippet(zone_snippet(params))  # what the site's DNS team would be handed
    # every VM's own name first, as a site's DNS has it: dnsmasq answers a reverse lookup (PTR) with the first name
    # listed for an address, and a peer that reverse-resolves to a round-robin name (glusterd does) would take
    # both edge nodes for one host
    own = "".join(f"{h.address} {h.name}.{e.dns.zone} {h.name}\n" for h in params.hosts)
    hosts = own + "".join(f"{address} {name}\n" for name, _, address in records)
    ttl = min((t for _, t, _ in records), default=e.dns.ttl_seconds)
    args = dnsmasq_args(lab, ttl, e.dns.zone)
    hosts_file, args_file = d / "hosts", d / "args"
    hosts_changed = not hosts_file.exists() or hosts_file.read_text() != hosts
    if hosts_changed:
        hosts_file.write_text(hosts)
    pid = dnsmasq_pid(lab)
    if pid is not None and args_file.exists() and args_file.read_text() == "\n".join(args):
        if hosts_changed:
            os.kill(pid, signal.SIGHUP)  # dnsmasq re-reads its hosts files
            actions.append(f"dnsmasq reloaded {len(records)} records")
        return
    stop_dns(lab, actions)
    args_file.write_text("\n".join(args))
    with open(d / "start.log", "w") as log:  # dnsmasq forks into the background: no pipe for it to hold open
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise LabError(f"the lab's dnsmasq did not start: {(d / 'start.log').read_text().strip()}")
    actions.append(f"dnsmasq on {bridge_address(lab)}:53 serving {len(records)} A records of {e.dns.zone} (TTL {ttl} s)")


def point_resolvers(lab, params, actions: list[str]) -> None:
    """Every VM resolves through the lab's DNS (its own /etc/resolv.conf, on its own disk)."""
    text = f"# written by the runbooklib lab: the lab's DNS (dnsmasq on the bridge)\nnameserver {bridge_address(lab)}\n"
    quoted = shlex.quote(text)
    for host in params.hosts:
        r = lab.exec_in(host.name, f"if [ \"$(cat /etc/resolv.conf 2>/dev/null)\" != {shlex.quote(text.rstrip())} ]; then "
                                   f"rm -f /etc/resolv.conf && printf %s {quoted} > /etc/resolv.conf && echo changed; fi")
        if r.returncode != 0:
            raise LabError(f"{host.name}: could not point /etc/resolv.conf at the lab's DNS: {r.stderr.strip()}")
        if "changed" in r.stdout:
            actions.append(f"{host.name}: resolves through the lab's DNS")


def self_signed(certificate: str, key: str, subject: str, names: str) -> str:
    """A shell command making a self-signed certificate (key 0600) unless one is there; prints ``made`` when it made it."""
    return (f"if [ ! -s {certificate} ]; then mkdir -p $(dirname {certificate}) $(dirname {key}) && "
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj '/CN={subject}' -addext 'subjectAltName={names}' "
            f"-keyout {key} -out {certificate} >/dev/null 2>&1 && chmod 600 {key} && echo made; fi; test -s {certificate}")


def start_ingress(lab, params, actions: list[str]) -> None:
    """The ingress stand-in on each ingress worker, with a self-signed certificate made there."""
    e = params.edge
    names = ",".join(f"DNS:{n}" for n in (e.hostnames or ["ingress.lab.invalid"]))
    for host in ingress_hosts(params):
        r = lab.exec_in(host.name, self_signed(f"{CERT_DIR}/tls.crt", f"{CERT_DIR}/tls.key", f"{host.name} LAB STAND-IN ingress", names))
        if r.returncode != 0:
            raise LabError(f"{host.name}: could not make the ingress stand-in's certificate: {r.stderr.strip()}")
        command = (f"env PYTHONPATH={shlex.quote(str(PROJECT))} {shlex.quote(sys.executable)} -m runbooklab.edge.ingress "
                   f"--http-port {e.ingress.http_port} --https-port {e.ingress.https_port} "
                   f"--cert {CERT_DIR}/tls.crt --key {CERT_DIR}/tls.key")
        if lab.enable_daemon(host.name, DAEMON, command):
            actions.append(f"{host.name}: started the ingress stand-in (LAB STAND-IN) on ports "
                           f"{e.ingress.http_port} and {e.ingress.https_port}")


def cdn_certificates(lab, params, actions: list[str]) -> None:
    """The lab plays the site's PKI: a self-signed certificate for the CDN's name where edge.cdn_tls expects it."""
    e = params.edge
    t = e.cdn_tls
    for name in e.hosts:
        r = lab.exec_in(name, self_signed(t.certificate, t.key, f"{e.cdn_hostname} LAB STAND-IN certificate", f"DNS:{e.cdn_hostname}"))
        if r.returncode != 0:
            raise LabError(f"{name}: could not make the CDN's lab certificate: {r.stderr.strip()}")
        if "made" in r.stdout:
            actions.append(f"{name}: a self-signed certificate for {e.cdn_hostname} at {t.certificate} (the lab's stand-in for the site's)")


def provision(lab, params, actions: list[str]) -> None:
    if params.edge is None:
        return
    start_ingress(lab, params, actions)
    if params.edge.cdn_tls is not None:
        cdn_certificates(lab, params, actions)
    if params.edge.dns is not None:
        ensure_dns(lab, params, actions)
        point_resolvers(lab, params, actions)


def teardown(lab, actions: list[str]) -> None:
    """What the edge provisioner started outside the VMs: the lab's dnsmasq, stopped by its PID."""
    stop_dns(lab, actions)
