"""Benchmark: gather the same facts from the 16-VM seed lab with runbooklib, Ansible and pyinfra.

Same VMs, same key, same pinned known-hosts file, same run, each tool repeated and alternated;
prints medians and our ratio to each peer, then our time for 4, 8 and 16 hosts.

- runbooklib: `runbook facts --params <lab params> --json` (all its facts, one round trip per host)
- Ansible:    `ansible all -m setup -a gather_subset=!all,min,hardware` (forks = host count,
              pipelining on, strict host keys), the subsets that match ours
- pyinfra:    `pyinfra -y inventory.py fact <the matching facts> --json`

Targets: at most 0.5 x Ansible's time, and no slower than pyinfra. Needs root (it builds its own lab
instance, prefix rbfact, subnet 10.83.0.0/24, and removes it) and `pip install -e .[bench]`.

    python bench/facts_vs_peers.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import BIN, timed  # noqa: E402
from runbooklab import Lab  # noqa: E402
from runbooklib.params import load_params  # noqa: E402

PYINFRA_FACTS = ["server.OsRelease", "server.KernelVersion", "hardware.Cpus", "hardware.Memory", "server.Mounts",
                 "server.Sysctl", "server.KernelModules", "server.User", "server.Groups", "server.Hostname",
                 "server.EtcHosts", "server.Ports", "server.Processes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("ansible", "pyinfra"):
        if not (BIN / tool).exists():
            sys.exit(f"{tool} is not installed in this environment: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="runbook-bench-facts-") as tmp:
        work = Path(tmp)
        lab = Lab(work / "lab", name="rbfact", subnet="10.83.0.0/24")
        try:
            lab.up(profile="seed")
            params = load_params(lab.params_file)
            hosts = params.hosts
            key, known = lab.key, lab.known_hosts

            inventory = work / "hosts.ini"
            inventory.write_text("[lab]\n" + "".join(
                f"{h.name} ansible_host={h.address} ansible_user=root ansible_ssh_private_key_file={key} "
                f"ansible_python_interpreter=/usr/bin/python3 ansible_remote_tmp=/tmp/.ansible-{h.name}\n" for h in hosts))
            ansible_env = dict(os.environ, ANSIBLE_PIPELINING="True", ANSIBLE_HOST_KEY_CHECKING="True",
                               ANSIBLE_SSH_ARGS=f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes "
                                                "-o ControlMaster=no", ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"),
                               ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(len(hosts)))
            ansible = [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "setup", "-a", "gather_subset=!all,min,hardware",
                       "-f", str(len(hosts))]

            (work / "inventory.py").write_text("lab = [\n" + "".join(
                f"    ({str(h.address)!r}, {{'ssh_user': 'root', 'ssh_key': {str(key)!r}, "
                f"'ssh_known_hosts_file': {str(known)!r}, 'ssh_strict_host_key_checking': 'yes'}}),\n" for h in hosts) + "]\n")
            pyinfra = [str(BIN / "pyinfra"), "-y", "--parallel", str(len(hosts)), "inventory.py", "fact", *PYINFRA_FACTS, "--json"]

            ours = [str(BIN / "runbook"), "facts", "--params", str(lab.params_file), "--json"]
            env = dict(os.environ)
            runs = {"runbooklib": [], "ansible": [], "pyinfra": []}
            for cmd, e in ((ours, env), (ansible, ansible_env), (pyinfra, env)):
                timed(cmd, e, work)  # warm-up: caches, first connections
            for _ in range(args.rounds):
                runs["runbooklib"].append(timed(ours, env, work))
                runs["ansible"].append(timed(ansible, ansible_env, work))
                runs["pyinfra"].append(timed(pyinfra, env, work))
            med = {k: statistics.median(v) for k, v in runs.items()}
            print(f"facts from {len(hosts)} lab VMs, median of {args.rounds} (whole commands, fresh connections):")
            for name, values in runs.items():
                print(f"  {name:<11} {med[name]:6.2f} s   ({', '.join(f'{x:.2f}' for x in values)})")
            ra, rp = med["runbooklib"] / med["ansible"], med["runbooklib"] / med["pyinfra"]
            print(f"  ratio to Ansible: {ra:.2f} (target <= 0.50: {'met' if ra <= 0.5 else 'NOT met'})")
            print(f"  ratio to pyinfra: {rp:.2f} (target <= 1.00: {'met' if rp <= 1.0 else 'NOT met'})")
            print("scaling (runbooklib):")
            for n in (4, 8, 16):
                names = ",".join(h.name for h in hosts[:n])
                times = [timed([*ours, "--hosts", names], env, work) for _ in range(args.rounds)]
                print(f"  {n:>2} hosts  median {statistics.median(times):.2f} s")
        finally:
            lab.down()


if __name__ == "__main__":
    main()
