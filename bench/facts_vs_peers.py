"""Benchmark: facts and the baseline's changes on the 16-VM seed lab, against the SSH floor, Ansible and pyinfra.

Same VMs, same key, same pinned known-hosts file (strict host keys everywhere), same run; candidates are
alternated round by round, so a machine that is busy slows them alike: read the per-round ratios and
their spread, not one absolute figure.

1. Facts (whole commands, fresh connections each time):
   - floor:        OpenSSH's `ssh`, one process per host in parallel, pinned key, running `true`
   - floor+facts:  the same, each running our facts command line for its host (what OpenSSH as our
                   transport would cost)
   - runbooklib:   `runbook facts --params <lab params> --json` (paramiko, one round trip per host)
   - Ansible:      `ansible all -m setup -a gather_subset=!all,min,hardware` (forks = hosts, pipelining,
                   strict host keys, no ControlMaster: fresh connections as ours)
   - pyinfra:      `pyinfra -y inventory.py fact <the matching facts> --json`
   then where our time goes: interpreter start, imports, parameters, connect and authenticate, remote
   command, parse, output (bench/facts_stages.py: the command's stages one after the other in one
   process, once a round).
2. Connections: whole runbooks 01 (plan) and 02 (--apply) through `runbook run`, counting the logins
   each VM's sshd logged: one per host means a runbook pays the handshake once per host.
3. Apply: the baseline (02's operations) on fresh VMs: connect, facts, plan, apply on one fleet, with
   its step count, batched (one round trip per host) and step by step; against Ansible's time for the
   same number of tasks, estimated from its per-task cost measured here (playbooks of 1 and K tasks).
4. Scale: `--hosts N` (default 50) generated VMs: the floor and our facts at ssh.parallelism 16 and N.

Targets: facts at most 1.15 x the floor; a runbook logs in once per host; the baseline at most Ansible's
estimate. Needs root (it builds its own lab instance, prefix rbfact, subnet 10.83.0.0/24 unless told
otherwise, and removes it) and Ansible and pyinfra (`pip install -e .[bench]`, or --peers-bin DIR for a
virtualenv of their own).

    python bench/facts_vs_peers.py [--rounds 5] [--apply-rounds 3] [--scale 50] [--peers-bin DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import BIN, ROOT, timed  # noqa: E402
from runbooklab import Lab  # noqa: E402
from runbooklib.params import load_params  # noqa: E402

PYINFRA_FACTS = ["server.OsRelease", "server.KernelVersion", "hardware.Cpus", "hardware.Memory", "server.Mounts",
                 "server.Sysctl", "server.KernelModules", "server.User", "server.Groups", "server.Hostname",
                 "server.EtcHosts", "server.Ports", "server.Processes"]
PY = str(BIN / "python")


def ssh_options(lab: Lab) -> list[str]:
    return ["-F", "/dev/null", "-i", str(lab.key), "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none"]


def floor_script(work: Path, lab: Lab, hosts, commands: dict[str, str], name: str) -> list[str]:
    """A shell script starting one `ssh` per host in parallel, each running its host's command; exits non-zero
    if any did."""
    opts = " ".join(ssh_options(lab))
    lines = ["#!/bin/bash", "pids=()"]
    for h in hosts:
        cmd_file = work / f"{name}-{h.name}.sh"
        cmd_file.write_text(commands[h.name])
        lines.append(f"ssh {opts} root@{h.address} \"$(<{cmd_file})\" >/dev/null & pids+=($!)")
    lines.append('rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc')
    script = work / f"{name}.sh"
    script.write_text("\n".join(lines) + "\n")
    return ["bash", str(script)]


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f}  [{min(values):.2f} .. {max(values):.2f}]"


def alternate(candidates: dict[str, tuple[list[str], dict]], rounds: int, cwd: Path, extra=None) -> dict[str, list[float]]:
    """Each candidate once per round, in turn (after one warm-up each); ``extra()``, when given, once per round too."""
    for cmd, env in candidates.values():
        timed(cmd, env, cwd)
    runs: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, (cmd, env) in candidates.items():
            runs[name].append(timed(cmd, env, cwd))
        if extra:
            extra()
    return runs


def ratios(runs: dict[str, list[float]], a: str, b: str) -> list[float]:
    return [x / y for x, y in zip(runs[a], runs[b])]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def logins(lab: Lab) -> dict[str, int]:
    """Logins each VM's sshd logged so far (its console is sshd's log)."""
    return {vm: (lab.vm_dir(vm) / "console.log").read_text(errors="replace").count("Accepted publickey") for vm in lab.vms()}


def stages_once(params_file: Path) -> dict:
    """Our facts command's stages in one process (bench/facts_stages.py), the interpreter's start included."""
    done = subprocess.run([PY, str(Path(__file__).with_name("facts_stages.py")), str(params_file), repr(time.time())],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"bench/facts_stages.py failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout)


def facts_section(args, work: Path, lab: Lab, ansible_env: dict, peers: Path | None) -> None:
    from runbooklib.vm import facts as vm_facts

    params = load_params(lab.params_file)
    hosts = params.hosts
    key, known = lab.key, lab.known_hosts
    fs = vm_facts.fact_set(params)
    from runbooklib.phase.facts import host_script

    env = dict(os.environ)
    cands = {
        "floor (ssh true)": (floor_script(work, lab, hosts, {h.name: "true" for h in hosts}, "floor"), env),
        "floor + our facts": (floor_script(work, lab, hosts, {h.name: host_script(fs.facts, fs.context(h)) for h in hosts}, "floorfacts"), env),
        "runbooklib": ([str(BIN / "runbook"), "facts", "--params", str(lab.params_file), "--json"], env),
    }
    if peers:
        inventory = write_inventory(work, lab)
        cands["ansible"] = ([str(peers / "ansible"), "all", "-i", str(inventory), "-m", "setup", "-a", "gather_subset=!all,min,hardware",
                             "-f", str(len(hosts))], ansible_env)
        (work / "inventory.py").write_text("lab = [\n" + "".join(
            f"    ({str(h.address)!r}, {{'ssh_user': 'root', 'ssh_key': {str(key)!r}, "
            f"'ssh_known_hosts_file': {str(known)!r}, 'ssh_strict_host_key_checking': 'yes'}}),\n" for h in hosts) + "]\n")
        cands["pyinfra"] = ([str(peers / "pyinfra"), "-y", "--parallel", str(len(hosts)), "inventory.py", "fact", *PYINFRA_FACTS, "--json"], env)
    stage_runs: list[dict[str, float]] = []
    runs = alternate(cands, args.rounds, work, extra=lambda: stage_runs.append(stages_once(lab.params_file)))
    print(f"\n1. facts from {len(hosts)} lab VMs, {args.rounds} alternated rounds (whole commands, fresh connections), seconds:")
    for name, values in runs.items():
        print(f"  {name:<20} {spread(values)}")
    floor = ratios(runs, "runbooklib", "floor (ssh true)")
    print(f"  ours / floor:          {spread(floor)}   target <= 1.15: {verdict(statistics.median(floor) <= 1.15)}")
    ff = ratios(runs, "runbooklib", "floor + our facts")
    print(f"  ours / floor + facts:  {spread(ff)}   (< 1: paramiko in one process beats one OpenSSH client per host)")
    if peers:
        ra, rp = ratios(runs, "runbooklib", "ansible"), ratios(runs, "runbooklib", "pyinfra")
        print(f"  ours / Ansible:        {spread(ra)}   target <= 0.50: {verdict(statistics.median(ra) <= 0.5)}")
        print(f"  ours / pyinfra:        {spread(rp)}   target <= 1.00: {verdict(statistics.median(rp) <= 1.0)}")
        print(f"  floor / Ansible:       {spread(ratios(runs, 'floor (ssh true)', 'ansible'))}")
    print("  where our time goes (the command's stages one after the other in one process, once a round; "
          "share of that run's whole, median [min .. max]):")
    stage_times = [r["stages"] for r in stage_runs]
    for name in stage_times[0]:
        if name == "whole":
            continue
        shares = [100 * r[name] / r["whole"] for r in stage_times]
        print(f"    {name:<24} {statistics.median(r[name] for r in stage_times):6.3f} s   {statistics.median(shares):4.1f} % "
              f"[{min(shares):.1f} .. {max(shares):.1f}]")
    print(f"    {'whole (stage by stage)':<24} {statistics.median(r['whole'] for r in stage_times):6.3f} s")
    cpu = [1000 * r["cpu_per_handshake"] for r in stage_runs]
    print(f"  client CPU per handshake (paramiko: key exchange, host key check, authentication): median {statistics.median(cpu):.1f} ms "
          f"[{min(cpu):.1f} .. {max(cpu):.1f}]")


def runbooks_section(work: Path, lab: Lab) -> None:
    print("\n2. connections paid by whole runbooks (logins in the VMs' sshd logs):")
    env = dict(os.environ, RUNBOOK_ARCHIVE=str(work / "archive"))
    hosts = len(lab.vms())
    for label, nb, extra in (("01 preflight (plan)", "notebooks/01-vm-preflight.ipynb", ["--allow-not-ready"]),
                             ("02 baseline --apply", "notebooks/02-vm-baseline.ipynb", ["--apply"])):
        before = logins(lab)
        t0 = time.perf_counter()
        done = subprocess.run([str(BIN / "runbook"), "run", nb, "--params", str(lab.params_file), *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        took = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"{nb} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        after = logins(lab)
        per_host = {vm: after[vm] - before[vm] for vm in after}
        summary = next((line.strip() for line in reversed(done.stderr.splitlines()) if " succeeded in " in line), "")
        print(f"  {label:<22} {took:6.2f} s  logins {sum(per_host.values())} for {hosts} hosts "
              f"(per host {min(per_host.values())}..{max(per_host.values())}); "
              f"target one per host: {verdict(set(per_host.values()) == {1})}\n      {summary}")


def write_inventory(work: Path, lab: Lab) -> Path:
    inventory = work / "hosts.ini"
    inventory.write_text("[lab]\n" + "".join(
        f"{h.name} ansible_host={h.address} ansible_user=root ansible_ssh_private_key_file={lab.key} "
        f"ansible_python_interpreter=/usr/bin/python3 ansible_remote_tmp=/tmp/.ansible-{h.name}\n" for h in load_params(lab.params_file).hosts))
    return inventory


def ansible_playbook(work: Path, tasks: int) -> Path:
    path = work / f"play-{tasks}.yml"
    path.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": f"task {i}", "ansible.builtin.command": "/bin/true"} for i in range(tasks)]}], sort_keys=False))
    return path


def apply_section(args, work: Path, lab: Lab, ansible_env: dict, peers: Path | None) -> None:
    from runbooklib.phase import steps as phase_steps
    from runbooklib.ssh import Fleet
    from runbooklib.vm import facts as vm_facts
    from runbooklib.vm import operations

    def baseline(batched: bool) -> dict:
        lab.down()
        lab.up(profile="seed")
        params = load_params(lab.params_file)
        t0 = time.perf_counter()
        with Fleet.from_params(params, progress=None) as fleet:
            gathered = vm_facts.gather(params, fleet)
            steps = phase_steps.plan(operations.OPERATIONS, params, gathered.facts, gathered.fact_errors)
            t1 = time.perf_counter()
            results = phase_steps.apply(fleet, steps, on_step=None if batched else (lambda s: None))
            t2 = time.perf_counter()
            handshakes = fleet.handshakes
        if not all(r.ok for r in results.values()):
            sys.exit(f"baseline apply failed: {phase_steps.problems(results, {})}")
        per_host = max(sum(1 for s in steps if s.host == h.name) for h in params.hosts)
        return {"total": t2 - t0, "apply": t2 - t1, "steps": len(steps), "per_host": per_host, "handshakes": handshakes}

    rows: dict[str, list[dict]] = {"batched": [], "step by step": []}
    play: dict[int, list[float]] = {}
    k = 8
    if peers:
        inventory = write_inventory(work, lab)
        plays = {n: [str(peers / "ansible-playbook"), "-i", str(inventory), "-f", str(len(lab.vms())), str(ansible_playbook(work, n))]
                 for n in (1, k)}
        for n, cmd in plays.items():
            timed(cmd, ansible_env, work)
            play[n] = []
    for _ in range(args.apply_rounds):
        for mode in rows:
            rows[mode].append(baseline(mode == "batched"))
        if peers:
            write_inventory(work, lab)  # the same addresses; written again as the lab was rebuilt
            for n, cmd in plays.items():
                play[n].append(timed(cmd, ansible_env, work))
    b = rows["batched"]
    print(f"\n3. the baseline on {len(lab.vms())} fresh VMs, {args.apply_rounds} rounds: {b[0]['steps']} steps, at most "
          f"{b[0]['per_host']} on one host; {b[0]['handshakes']} handshakes for facts, plan and apply:")
    for mode, values in rows.items():
        print(f"  {mode:<13} apply {spread([v['apply'] for v in values])}   connect+facts+plan+apply {spread([v['total'] for v in values])}")
    ours = [v["total"] for v in b]
    if peers:
        per_task = [(tk - t1) / (k - 1) for t1, tk in zip(play[1], play[k])]
        n = b[0]["per_host"]
        estimate = [t1 + (n - 1) * pt for t1, pt in zip(play[1], per_task)]
        print(f"  Ansible playbook of 1 task {spread(play[1])};  of {k} tasks {spread(play[k])}")
        print(f"  Ansible per task (all hosts) {spread(per_task)};  estimate for {n} tasks {spread(estimate)}")
        r = [o / e for o, e in zip(ours, estimate)]
        print(f"  ours (connect+facts+plan+apply) / Ansible estimate: {spread(r)}   target <= 1.00: {verdict(statistics.median(r) <= 1.0)}")


def scale_section(args, work: Path, lab: Lab) -> None:
    n = args.scale
    lab.down()
    lab.up(hosts=n)
    params = load_params(lab.params_file)
    data = yaml.safe_load(lab.params_file.read_text())
    data["ssh"]["parallelism"] = n
    wide = lab.params_file.with_name(f"params-parallel-{n}.yaml")
    wide.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ)
    cands = {
        "floor (ssh true)": (floor_script(work, lab, params.hosts, {h.name: "true" for h in params.hosts}, f"floor{n}"), env),
        "runbooklib p=16": ([str(BIN / "runbook"), "facts", "--params", str(lab.params_file), "--json"], env),
        f"runbooklib p={n}": ([str(BIN / "runbook"), "facts", "--params", str(wide), "--json"], env),
    }
    runs = alternate(cands, args.rounds, work)
    print(f"\n4. scale: facts from {n} generated VMs (--hosts {n}), {args.rounds} alternated rounds, seconds:")
    for name, values in runs.items():
        print(f"  {name:<20} {spread(values)}   ({1000 * statistics.median(values) / n:.0f} ms per host)")
    print(f"  ours p={n} / floor:    {spread(ratios(runs, f'runbooklib p={n}', 'floor (ssh true)'))}")
    print(f"  ours p=16 / floor:    {spread(ratios(runs, 'runbooklib p=16', 'floor (ssh true)'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--apply-rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=50, help="generated hosts for the scaling figure (0: skip)")
    parser.add_argument("--peers-bin", type=Path, default=BIN, help="folder with ansible, ansible-playbook and pyinfra")
    parser.add_argument("--no-peers", action="store_true", help="only the floor and ours")
    parser.add_argument("--lab-name", default="rbfact")
    parser.add_argument("--subnet", default="10.83.0.0/24")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: facts,runbooks,apply,scale")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    peers = None if args.no_peers else args.peers_bin
    if peers:
        for tool in ("ansible", "ansible-playbook", "pyinfra"):
            if not (peers / tool).exists():
                sys.exit(f"{tool} is not in {peers}: pip install -e '.[bench]', or --peers-bin DIR, or --no-peers")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="runbook-bench-facts-") as tmp:
        work = Path(tmp)
        lab = Lab(work / "lab", name=args.lab_name, subnet=args.subnet)
        try:
            lab.up(profile="seed")
            ansible_env = dict(os.environ, ANSIBLE_PIPELINING="True", ANSIBLE_HOST_KEY_CHECKING="True",
                               ANSIBLE_SSH_ARGS=f"-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes "
                                                "-o ControlMaster=no", ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"),
                               ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS="64")
            if "facts" not in skip:
                facts_section(args, work, lab, ansible_env, peers)
            if "runbooks" not in skip:
                runbooks_section(work, lab)
            if "apply" not in skip:
                apply_section(args, work, lab, ansible_env, peers)
            if args.scale and "scale" not in skip:
                scale_section(args, work, lab)
        finally:
            lab.down()
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
