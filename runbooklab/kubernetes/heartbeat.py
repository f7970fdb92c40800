"""A node's heartbeat for the lab's simulated cluster (LAB SIMULATION: there is no kubelet here).

Runs inside a node VM and renews the node's Lease in ``kube-node-lease`` every two seconds, as a
kubelet does; the API stand-in's control loop marks the node NotReady when renewals stop (the VM
was stopped or cut off).

    python -m runbooklab.kubernetes.heartbeat --server https://10.77.0.11:6443 --node w1 --tls-dir /etc/kubernetes/ssl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import time
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="comma-separated API server URLs")
    parser.add_argument("--node", required=True)
    parser.add_argument("--tls-dir", required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    ctx = ssl.create_default_context(cafile=f"{args.tls_dir}/ca.pem")
    ctx.load_cert_chain(f"{args.tls_dir}/node.pem", f"{args.tls_dir}/node-key.pem")
    servers = args.server.split(",")
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{args.node}"
    while True:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": args.node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": args.node, "leaseDurationSeconds": 40, "renewTime": now}}
        for server in servers:
            req = urllib.request.Request(server + path + "?fieldManager=lab-heartbeat&force=true",
                                         data=json.dumps(body).encode(), method="PATCH",
                                         headers={"Content-Type": "application/apply-patch+yaml"})
            try:
                urllib.request.urlopen(req, context=ctx, timeout=3).read()
                break
            except (urllib.error.URLError, OSError):
                continue  # try the next control-plane node
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
