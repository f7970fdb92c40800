"""One `runbook facts --json`, stage by stage, in one process: prints the seconds of each stage as JSON.

Run by bench/facts_vs_peers.py as `python bench/facts_stages.py PARAMS SPAWNED_AT` (the wall-clock time at
which the parent started it, so that the interpreter's start is a stage too). The stages are the command's
own, done one after the other: imports, parameters, connect and authenticate (every host), the remote
command (every host, on the open connections), parse, output.
"""

import time

T0 = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    params_file, spawned = Path(sys.argv[1]), float(sys.argv[2])
    t = time.time()
    import runbooklib.cli  # noqa: F401  what the command imports, as it imports it
    from runbooklib.params import load_params
    from runbooklib.phase.facts import host_script, parse_host_output
    from runbooklib.ssh import Fleet
    from runbooklib.vm import facts as vm_facts

    stages = {"interpreter start": T0 - spawned, "imports": time.time() - t}
    t = time.time()
    params = load_params(params_file)
    fs = vm_facts.fact_set(params)
    stages["parameters"] = time.time() - t
    with Fleet.from_params(params, progress=None) as fleet:
        t, cpu = time.time(), time.process_time()
        fleet.each(fleet.connection)
        stages["connect + authenticate"] = time.time() - t
        cpu_per_handshake = (time.process_time() - cpu) / len(params.hosts)  # every thread of this process
        t = time.time()
        results = fleet.run(lambda h: host_script(fs.facts, fs.context(h)))
        stages["remote command"] = time.time() - t
        if not results.ok:
            sys.exit(f"facts failed: {results.failed}")
        t = time.time()
        facts = {name: parse_host_output(fs.facts, r.stdout)[0] for name, r in results.items()}
        stages["parse"] = time.time() - t
        t = time.time()
        with open(os.devnull, "w") as out:
            out.write(json.dumps({"facts": facts, "errors": {}}, indent=2, default=str))
        stages["output"] = time.time() - t
    stages["whole"] = time.time() - spawned
    print(json.dumps({"stages": stages, "cpu_per_handshake": cpu_per_handshake}))


if __name__ == "__main__":
    main()
