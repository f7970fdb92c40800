"""Bringing the cluster up, RKE2: an air-gapped install over SSH, in order, each node waited for.

The order is RKE2's: the first server alone; then the other servers, one at a time (each joins
etcd); then the agents, in parallel. On each node, only what differs is done (from one SSH round
trip of facts):

1. ``rke2 artifacts``: the artifact folder (``kubernetes.artifacts``: the tarball, its checksum file
   and ``install.sh``) is checked here first (every checksum), then copied to :data:`REMOTE_ARTIFACTS`;
2. ``rke2 install``: ``INSTALL_RKE2_ARTIFACT_PATH=... [INSTALL_RKE2_TYPE=agent] sh install.sh``
   (the installer checks the checksums again before it extracts anything);
3. ``rke2 config``: ``/etc/rancher/rke2/config.yaml`` rendered from the parameters, with its diff;
4. ``join token``: every node but the first server gets the first server's token in
   ``/etc/rancher/rke2/join-token`` (0600). The token is a secret: read into memory from the first
   server, written over SFTP, registered with the run's redactor, never printed or archived;
5. ``rke2 service``: ``systemctl enable --now rke2-server`` (or ``rke2-agent``), restarted when
   its config changed; then the node is waited for (Ready through the API) with a clear timeout.

The first server's kubeconfig (``/etc/rancher/rke2/rke2.yaml``) is fetched into the protected state
folder, its server rewritten from 127.0.0.1 to the first server's address.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import HostError, RunbookError
from ..phase import steps as phase_steps
from ..phase.steps import Step, file_diff
from ..ssh import HostResult
from . import rke2, state
from .spec import spec_from_params

REMOTE_ARTIFACTS = "/root/rke2-artifacts"
CONFIG = "/etc/rancher/rke2/config.yaml"
JOIN_TOKEN = "/etc/rancher/rke2/join-token"
NODE_TOKEN = "/var/lib/rancher/rke2/server/node-token"
REMOTE_KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"
INSTALLED = "/var/lib/rancher/rke2/runbook-artifact.sha256"  # which tarball this node was installed from
TARBALL = "rke2.linux-amd64.tar.gz"
SUMS = "sha256sum-amd64.txt"
INSTALLER = "install.sh"


@dataclass(frozen=True)
class Artifacts:
    folder: Path
    tarball_sha256: str
    files: tuple[str, ...]  # what is copied to every node

    @property
    def staged_sum(self) -> str:
        """What :data:`STAGED` reads on a node that holds exactly these files in :data:`REMOTE_ARTIFACTS`."""
        lines = "".join(f"{hashlib.sha256((self.folder / n).read_bytes()).hexdigest()}  {n}\n" for n in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()


def load_artifacts(params, given: str | None = None, field: str = "kubernetes.artifacts") -> Artifacts:
    """The artifact folder, every file its checksum file lists verified here, before any node sees it.

    ``given`` and ``field``: another release's folder and the parameter naming it (an upgrade's
    intermediate release, ``kubernetes.upgrade_path[i].artifacts``); default ``kubernetes.artifacts``.
    """
    if given is None and field == "kubernetes.artifacts":
        given = params.kubernetes.artifacts
    if not given:
        raise RunbookError(f"{params.source}: {field} is not set; RKE2 is installed air-gapped from a folder "
                           f"holding {TARBALL}, {SUMS} and {INSTALLER} (from RKE2's release page, copied in-country)")
    folder = Path(given).expanduser()
    folder = folder if folder.is_absolute() else (params.source_dir / folder).resolve()
    missing = [n for n in (TARBALL, SUMS, INSTALLER) if not (folder / n).is_file()]
    if missing:
        raise RunbookError(f"{params.source}: {field} {folder} lacks {', '.join(missing)}; copy RKE2's release "
                           "files for this version there")
    sums = {}
    for line in (folder / SUMS).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    if TARBALL not in sums:
        raise RunbookError(f"{folder / SUMS} does not list {TARBALL}; use the checksum file of the same release")
    for name, want in sums.items():
        if (folder / name).is_file():
            have = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if have != want:
                raise RunbookError(f"{folder / name}: its SHA-256 is {have}, but {SUMS} says {want}: the file is damaged "
                                   "or not from this release; copy it again, nothing was installed")
    files = tuple(n for n in (TARBALL, SUMS, INSTALLER))
    return Artifacts(folder, sums[TARBALL], files)


def _token_sum(path: str) -> str:
    """The SHA-256 of a token file's token (its newlines dropped), or nothing when there is none: a token never leaves the node."""
    return f"test -s {path} && tr -d '\\n' < {path} | sha256sum | cut -d' ' -f1"


# the files already copied to the node (a run that stopped between the copy and the install): one checksum of their checksums
STAGED = f"cd {REMOTE_ARTIFACTS} 2>/dev/null && sha256sum {TARBALL} {SUMS} {INSTALLER} 2>/dev/null | sha256sum | cut -d' ' -f1"
FACTS = (f"printf 'artifact=%s\\n' \"$(cat {INSTALLED} 2>/dev/null)\"; "
         f"printf 'staged=%s\\n' \"$({STAGED})\"; "
         f"printf 'config=%s\\n' \"$(sha256sum {CONFIG} 2>/dev/null | cut -d' ' -f1)\"; "
         f"printf 'config_b64=%s\\n' \"$(base64 -w0 {CONFIG} 2>/dev/null)\"; "  # it holds no secret: the token is in a file of its own
         f"printf 'token=%s\\n' \"$({_token_sum(JOIN_TOKEN)})\"; "
         f"printf 'node_token=%s\\n' \"$({_token_sum(NODE_TOKEN)})\"; "
         "printf 'server=%s\\n' \"$(systemctl is-active rke2-server 2>/dev/null)\"; "
         "printf 'agent=%s\\n' \"$(systemctl is-active rke2-agent 2>/dev/null)\"")


def _decoded(b64: str | None) -> str | None:
    import base64

    return base64.b64decode(b64).decode(errors="replace") if b64 else None


def gather(params, fleet) -> tuple[dict[str, dict], dict[str, str]]:
    """Per cluster node: installed artifact, config checksum, the checksums of the join token and (servers) of the
    token they serve (never a token itself), services; and the unreachable hosts."""
    from ..phase.facts import gather_key_values

    return gather_key_values(fleet, FACTS, [h for h in params.hosts if h.in_cluster], "rke2 facts")


def plan_rke2(params, facts: dict[str, dict], errors: dict[str, str], artifacts: Artifacts) -> list[Step]:
    """Steps per node in install order; a node whose facts could not be read gets one blocked step."""
    spec = spec_from_params(params)
    configs = rke2.render_rke2_configs(spec)
    first = rke2.install_order(spec)[0][0]
    out = []
    for name in [n for group in rke2.install_order(spec) for n in group]:
        if name in errors:
            out.append(Step(name, "rke2", "nothing planned: the node did not answer", None, blocked=f"unreachable: {errors[name]}"))
            continue
        f = facts.get(name, {})
        kind = rke2.node_kind(spec, spec.node(name))
        text = configs[name]
        installed = f.get("artifact") == artifacts.tarball_sha256
        if not installed:
            env = f"INSTALL_RKE2_ARTIFACT_PATH={REMOTE_ARTIFACTS}" + (" INSTALL_RKE2_TYPE=agent" if kind == "agent" else "")
            if f.get("staged") != artifacts.staged_sum:  # a run that stopped after the copy copied them already
                out.append(Step(name, "rke2 artifacts", f"copy {', '.join(artifacts.files)} to {REMOTE_ARTIFACTS}", "upload",
                                undo=f"rm -rf {REMOTE_ARTIFACTS}"))
            out.append(Step(name, "rke2 install", f"install RKE2 ({kind}) from the artifacts, checksums verified",
                            f"{env} sh {REMOTE_ARTIFACTS}/{INSTALLER} && mkdir -p {INSTALLED.rsplit('/', 1)[0]} && "
                            f"echo {artifacts.tarball_sha256} > {INSTALLED}",
                            undo_note="/usr/local/bin/rke2-uninstall.sh removes RKE2 and its data (a real install ships it)"))
        config_changed = f.get("config") != hashlib.sha256(text.encode()).hexdigest()
        if config_changed:
            out.append(Step(name, "rke2 config", f"write {CONFIG}", "config", undo_note="the previous file is kept as config.yaml.runbook-bak",
                            diff=file_diff(CONFIG, _decoded(f.get("config_b64")), text)))
        serving = facts.get(first, {}).get("node_token", "")  # the first server's token, as a checksum
        token_changed = name != first and (not serving or f.get("token") != serving)
        if token_changed:
            out.append(Step(name, "join token", f"write {first}'s join token to {JOIN_TOKEN} (0600; the token is never shown)",
                            "token", undo=f"rm -f {JOIN_TOKEN}"))
        service = f"rke2-{kind}"
        if not installed or config_changed or token_changed or f.get(kind) != "active":
            verb = "restart" if f.get(kind) == "active" else "enable --now"
            out.append(Step(name, "rke2 service", f"systemctl {verb} {service}, then wait for the node",
                            f"systemctl {verb} {service}", undo=f"systemctl disable --now {service}"))
    return out


@dataclass
class Rke2Apply:
    results: dict[str, phase_steps.HostApply]
    kubeconfig: Path | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(r.ok for r in self.results.values())


def apply_rke2(params, fleet, steps: list[Step], artifacts: Artifacts, on_change=None,
               on_secret: Callable[[str, str], None] = lambda value, label: None, wait: float = 300.0) -> Rke2Apply:
    """Carry out the plan group by group (first server; other servers one by one; agents together).

    A node that fails stops only itself, except the first server: without it nothing can join.
    """
    spec = spec_from_params(params)
    configs = rke2.render_rke2_configs(spec)
    hosts = {h.name: h for h in params.hosts}
    order = rke2.install_order(spec)
    first = order[0][0]
    token: dict[str, str] = {}
    results: dict[str, phase_steps.HostApply] = {}
    out = Rke2Apply(results)

    def execute(host, step: Step) -> HostResult:
        try:
            if step.command == "upload":
                fleet.run_on(host, f"mkdir -p {REMOTE_ARTIFACTS} && chmod 700 {REMOTE_ARTIFACTS}").check()
                for name in artifacts.files:
                    fleet.put(host, artifacts.folder / name, f"{REMOTE_ARTIFACTS}/{name}", 0o600)
                return HostResult(host.name, True, exit_code=0)
            if step.command == "config":
                fleet.run_on(host, f"mkdir -p /etc/rancher/rke2 && (test -f {CONFIG} && cp -p {CONFIG} {CONFIG}.runbook-bak || true)").check()
                write_remote(fleet, host, CONFIG, configs[host.name].encode(), 0o600)
                state.keep_rke2_config(params, host.name, configs[host.name])  # what lint compares a later change with
                return HostResult(host.name, True, exit_code=0)
            if step.command == "token":
                if "value" not in token:
                    return HostResult(host.name, False, exit_code=1, error=f"no join token: {first} did not come up")
                fleet.run_on(host, "mkdir -p /etc/rancher/rke2").check()
                write_remote(fleet, host, JOIN_TOKEN, token["value"].encode() + b"\n", 0o600)
                return HostResult(host.name, True, exit_code=0)
            r = fleet.run_on(host, step.command)
            if r.ok and step.operation == "rke2 service":
                return wait_for_node(fleet, host, first == host.name, wait)
            return r
        except Exception as e:  # an SFTP or SSH failure is this node's, said with its name
            return HostResult(host.name, False, exit_code=1, error=f"{type(e).__name__}: {e}")

    for i, group in enumerate(order):
        for batch in ([[n] for n in group] if i == 1 else [group]):  # other servers join one at a time
            mine = [s for s in steps if s.host in batch]
            results.update(phase_steps.apply(fleet, mine, on_change=on_change, execute=execute, desc="rke2"))
            if i == 0 and results.get(first, phase_steps.HostApply(first)).ok and out.kubeconfig is None:
                try:
                    out.kubeconfig = fetch_kubeconfig(params, fleet, hosts[first])
                except (OSError, HostError, yaml.YAMLError, KeyError, TypeError) as e:
                    said = str(e) if isinstance(e, HostError) else f"{first}: cannot read {REMOTE_KUBECONFIG} ({type(e).__name__}: {e})"
                    out.error = f"{said}; see `systemctl status rke2-server` there; nothing else was started"
                    return out
            if out.kubeconfig is not None:
                for name, why in wait_ready(out.kubeconfig, [n for n in batch if results.get(n, phase_steps.HostApply(n)).ok], wait).items():
                    results.setdefault(name, phase_steps.HostApply(name)).error = why
            if i == 0:
                if first in results and not results[first].ok:
                    out.error = f"the first server {first} did not come up: {results[first].error}; nothing else was started"
                    return out
                value = read_token(fleet, hosts[first])
                if value is None:
                    out.error = f"{first}: no join token in {NODE_TOKEN} after start; see `journalctl -u rke2-server` there"
                    return out
                on_secret(value, "rke2 join token")
                token["value"] = value
    return out


def wait_ready(kubeconfig: Path, names: list[str], timeout: float) -> dict[str, str]:
    """Wait until each named Node is Ready through the API; the ones that are not by ``timeout``, with why."""
    from . import verify

    pending = set(names)
    why: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        try:
            client, api = verify.api_client(kubeconfig)
            nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
        except Exception as e:  # the API is still starting: keep waiting, remember why
            why = {n: f"the API did not answer ({type(e).__name__})" for n in pending}
            time.sleep(2)
            continue
        for name in list(pending):
            ready = {c.type: c.status for c in (nodes[name].status.conditions or [])}.get("Ready") if name in nodes else None
            if ready == "True":
                pending.discard(name)
            else:
                why[name] = "not registered" if name not in nodes else f"Ready={ready}"
        if pending:
            time.sleep(2)
    return {n: f"{n}: not Ready within {timeout:g} s ({why.get(n, 'no answer')}); see `systemctl status rke2-*` on {n}" for n in pending}


def write_remote(fleet, host, path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.runbook-tmp"
    with fleet.sftp(host, f"cannot write {path}") as sftp:
        with sftp.open(tmp, "wb") as f:
            f.chmod(mode)  # before a byte is written: the join token is never readable by others, not even briefly
            f.write(data)
        sftp.posix_rename(tmp, path)


def read_token(fleet, host) -> str | None:
    """The first server's join token, into memory only (a failure message never carries it)."""
    r = fleet.run_on(host, f"cat {NODE_TOKEN}")
    value = r.stdout.strip() if r.ok else ""
    return value or None


def wait_for_node(fleet, host, first: bool, timeout: float) -> HostResult:
    """Until the node's service is active and (servers) its API answers; a clear timeout naming the node."""
    check = (f"test -s {NODE_TOKEN} && test -s {REMOTE_KUBECONFIG}" if first else "true")
    service = "rke2-server" if first or "controlplane" in host.roles or "etcd" in host.roles else "rke2-agent"
    deadline = time.monotonic() + timeout
    last = ""
    lost = 0  # exchanges in a row that got no answer from the host at all (no exit code: unreachable, cut, timed out)
    while time.monotonic() < deadline:
        r = fleet.run_on(host, f"systemctl is-active -q {service} && {check}")
        if r.ok:
            return r
        last = r.error or r.stderr.strip()
        lost = lost + 1 if r.exit_code is None else 0
        if lost >= 2:  # a service still starting answers "inactive"; a host that stopped answering is not waited on for minutes
            return HostResult(host.name, False, error=f"{host.name} stopped answering while waiting for {service} ({last}); "
                                                      "check the host and its link, then run again")
        time.sleep(2)
    return HostResult(host.name, False, exit_code=1, error=f"{service} on {host.name} not up within {timeout:g} s ({last}); "
                                                           f"see `systemctl status {service}` there")


def fetch_kubeconfig(params, fleet, host) -> Path:
    """``rke2.yaml`` from the first server into the state folder (0600), pointed at that server's address."""
    with fleet.sftp(host, f"cannot read {REMOTE_KUBECONFIG}") as sftp, sftp.open(REMOTE_KUBECONFIG, "rb") as f:
        data = yaml.safe_load(f.read())
    for c in data.get("clusters", []):
        c["cluster"]["server"] = f"https://{host.address}:6443"
    path = state.state_dir(params, create=True) / "rke2.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
