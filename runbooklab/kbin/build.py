#!/usr/bin/env python3
"""Build the lab's real Kubernetes parts from their Go modules, into a cache outside the checkout.

Each component group has a tiny Go module of the project's own next to this script (go.mod and
go.sum only, no source; the binaries are listed as `tool` directives):

    kubernetes/  k8s.io/kubernetes        kube-apiserver kube-controller-manager kube-scheduler kubectl
    etcd/        go.etcd.io/etcd/*/v3     etcd etcdctl etcdutl
    kwok/        sigs.k8s.io/kwok         kwok
    helm/        helm.sh/helm/v3          helm

They are separate modules because one module graph would force one version of every shared
dependency on all of them (helm 3.22 requires k8s.io/client-go v0.37 while Kubernetes 1.36 must
use its own v0.36 staging modules; etcd 3.6.16 requires a newer gRPC than Kubernetes 1.36 was
released with), so no component would be built with the dependencies its release was tested with.

Binaries land in  $RUNBOOK_KBIN_CACHE  (default ${XDG_CACHE_HOME:-~/.cache}/runbooklab/kbin)
as  <component>-<version>/bin/<binary>; a directory there is complete or absent (built in a
temporary directory, then renamed).  Go's own GOMODCACHE and GOCACHE are used as they are.

    python3 build.py                      # build what is missing, one line per component
    python3 build.py --check              # exit 0 iff every binary is present
    python3 build.py --list               # "<binary> <path>" for each binary
    python3 build.py --kubernetes-version v1.34.7 kubernetes   # another release, on demand
    python3 build.py --pin-kubernetes v1.36.3  # rewrite kubernetes/go.mod (+ go mod tidy)

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMPONENTS: dict[str, dict] = {
    "kubernetes": {
        "module": "k8s.io/kubernetes",
        "binaries": {
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
    },
    "etcd": {
        "module": "go.etcd.io/etcd/server/v3",
        "binaries": {
            "etcd": "go.etcd.io/etcd/server/v3",  # etcd's main is the server module's root
            "etcdctl": "go.etcd.io/etcd/etcdctl/v3",
            "etcdutl": "go.etcd.io/etcd/etcdutl/v3",
        },
    },
    "kwok": {
        "module": "sigs.k8s.io/kwok",
        "binaries": {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        # KWOK run outside a cluster takes its Stages from --config: the release's own, saved beside
        # the binary (node: initialize and heartbeat with a lease; pod: ready, complete, delete)
        "stages": ("kustomize/stage/node/fast", "kustomize/stage/node/heartbeat-with-lease", "kustomize/stage/pod/fast"),
    },
    "helm": {
        "module": "helm.sh/helm/v3",
        "binaries": {"helm": "helm.sh/helm/v3/cmd/helm"},
    },
}


def log(msg: str) -> None:
    print(f"kbin: {msg}", flush=True)


def cache_root() -> Path:
    env = os.environ.get("RUNBOOK_KBIN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "runbooklab" / "kbin"


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"  # static binaries
    env.setdefault("GOTOOLCHAIN", "local")  # never fetch another Go toolchain
    flags = env.get("GOFLAGS", "").split()
    flags = [f for f in flags if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join(flags + ["-mod=readonly"])
    return env


def run_go(args: list[str], cwd: Path, capture: bool = True) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=go_env(), text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise SystemExit(f"kbin: `go {' '.join(args)}` in {cwd} failed:\n{proc.stderr}")
    return proc.stdout if capture else ""


def required_version(gomod: Path, module: str) -> str:
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod.read_text(), re.M)
    if not m:
        raise SystemExit(f"kbin: {gomod} does not require {module}")
    return m.group(1)


def module_info(moddir: Path, module: str) -> dict:
    """`go mod download -json` of the version moddir selects: Version, Time, Sum, GoMod, Dir."""
    out = run_go(["mod", "download", "-json", module], moddir)
    info = json.loads(out)
    if info.get("Error"):
        raise SystemExit(f"kbin: {module}: {info['Error']}")
    if "Time" not in info:  # only given on a fresh download; the .info file always has it
        info["Time"] = json.loads(Path(info["Info"]).read_text())["Time"]
    return info


def selected_version(moddir: Path, module: str) -> str:
    return run_go(["list", "-m", "-f", "{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}", module], moddir).strip()


# ---------------------------------------------------------------- the kubernetes module

def kubernetes_gomod_text(version: str, module_name: str) -> str:
    """go.mod for building k8s.io/kubernetes@version, derived from that release's own go.mod."""
    out = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                         cwd=tempfile.gettempdir(), env=go_env(), text=True, capture_output=True)
    info = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or info.get("Error"):
        raise SystemExit(f"kbin: cannot fetch k8s.io/kubernetes@{version}: {info.get('Error') or out.stderr}")
    upstream = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go\s+(\S+)\s*$", upstream, re.M).group(1)
    godebug = re.findall(r"^godebug\s+(\S.*?)\s*$", upstream, re.M)
    block = re.search(r"^godebug\s*\(\n(.*?)^\)", upstream, re.M | re.S)
    if block:
        godebug += [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("//")]
    staging = re.findall(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/src/\1\s*$", upstream, re.M)
    if not staging:
        raise SystemExit(f"kbin: no staging replace lines in k8s.io/kubernetes@{version}'s go.mod")
    staging_version = "v0" + version[2:]  # v1.36.3 -> v0.36.3
    lines = [
        f"// Generated by build.py from k8s.io/kubernetes@{version}'s own go.mod: do not edit,",
        f"// run `python3 build.py --pin-kubernetes vX.Y.Z` instead. {len(staging)} staging modules.",
        f"module {module_name}",
        "",
        f"go {go_line}",
        "",
    ]
    lines += [f"godebug {g}" for g in godebug] + ([""] if godebug else [])
    lines += ["tool ("] + [f"\t{p}" for p in COMPONENTS["kubernetes"]["binaries"].values()] + [")", ""]
    lines += [f"require k8s.io/kubernetes {version}", ""]
    lines += ["replace ("] + [f"\t{m} => {m} {staging_version}" for m in staging] + [")", ""]
    return "\n".join(lines)


def write_kubernetes_module(moddir: Path, version: str, module_name: str) -> None:
    moddir.mkdir(parents=True, exist_ok=True)
    (moddir / "go.mod").write_text(kubernetes_gomod_text(version, module_name))
    (moddir / "go.sum").unlink(missing_ok=True)
    env = go_env()
    env["GOFLAGS"] = env["GOFLAGS"].replace("-mod=readonly", "")
    proc = subprocess.run(["go", "mod", "tidy"], cwd=moddir, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"kbin: go mod tidy for k8s.io/kubernetes@{version} failed:\n{proc.stderr}")


def lab_kubernetes_versions() -> list[str]:
    """Further releases the lab's profiles run, each pinned in a committed ``kubernetes-<version>/`` module
    (the seed lab is an RKE1 site, and RKE1's last line ships Kubernetes up to 1.32): built by default too."""
    return sorted(d.name.removeprefix("kubernetes-") for d in HERE.glob("kubernetes-v*") if (d / "go.sum").exists())


def kubernetes_moddir(version: str | None) -> Path:
    pinned = HERE / "kubernetes"
    if version is None or version == required_version(pinned / "go.mod", "k8s.io/kubernetes"):
        return pinned
    if (HERE / f"kubernetes-{version}" / "go.sum").exists():
        return HERE / f"kubernetes-{version}"
    if not re.fullmatch(r"v1\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version):
        raise SystemExit(f"kbin: --kubernetes-version must look like v1.35.4, not {version!r}")
    # A release on demand (not one of the lab's): its module lives in the cache, not in the checkout.
    moddir = cache_root() / ".modules" / f"kubernetes-{version}"
    if not (moddir / "go.sum").exists():
        log(f"kubernetes {version}: writing its module in {moddir} (replace lines from its own go.mod)")
        moddir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-kubernetes-{version}-", dir=moddir.parent))
        try:
            write_kubernetes_module(tmp, version, "runbooklab/kbin/kubernetes")
            shutil.rmtree(moddir, ignore_errors=True)
            os.rename(tmp, moddir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return moddir


# ---------------------------------------------------------------- version stamping

def ldflags(component: str, moddir: Path) -> tuple[str, list[str], dict]:
    spec = COMPONENTS[component]
    info = module_info(moddir, spec["module"])
    version, date, source = info["Version"], info["Time"], info.get("Sum", "")
    # The module proxy gives no git commit; the go.sum hash of the module's source stands for it.
    flags = ["-s", "-w"]
    if component == "kubernetes":
        major, minor = re.match(r"v(\d+)\.(\d+)", version).groups()
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                      f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitCommit={source}",
                      f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate={date}"]
    elif component == "etcd":
        flags += [f"-X go.etcd.io/etcd/api/v3/version.GitSHA={source}"]
    elif component == "kwok":
        flags += [f"-X sigs.k8s.io/kwok/pkg/consts.Version={version.lstrip('v')}"]
    elif component == "helm":
        cg = selected_version(moddir, "k8s.io/client-go")  # as helm's Makefile does
        cmajor, cminor = re.match(r"v(\d+)\.(\d+)", cg).groups()
        flags += [f"-X helm.sh/helm/v3/internal/version.version={version}",
                  "-X helm.sh/helm/v3/internal/version.metadata=",
                  f"-X helm.sh/helm/v3/internal/version.gitCommit={source}",
                  "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor={int(cmajor) + 1}", f"-X {pkg}.k8sVersionMinor={cminor}"]
    return version, flags, info


# ---------------------------------------------------------------- build

def target_dir(component: str, version: str) -> Path:
    return cache_root() / f"{component}-{version}"


def present(component: str, version: str) -> bool:
    bindir = target_dir(component, version) / "bin"
    return all(os.access(bindir / b, os.X_OK) for b in COMPONENTS[component]["binaries"]) and has_stages(component, version)


def has_stages(component: str, version: str) -> bool:
    return not COMPONENTS[component].get("stages") or any((target_dir(component, version) / "stages").glob("*.yaml"))


def save_stages(component: str, moddir: Path, dest: Path) -> None:
    """Copy the release's Stage documents (not its tests) from the module's source into ``dest``/stages."""
    source = Path(module_info(moddir, COMPONENTS[component]["module"])["Dir"])
    tmp = Path(tempfile.mkdtemp(prefix=".stages-", dir=dest))
    for sub in COMPONENTS[component]["stages"]:
        for doc in sorted((source / sub).glob("*.yaml")):
            if doc.name != "kustomization.yaml":
                shutil.copyfile(doc, tmp / doc.name)
    os.chmod(tmp, 0o755)
    os.rename(tmp, dest / "stages")


def targets(components: list[str], kube_version: str | None) -> list[tuple[str, str]]:
    """(component, version) to build or check: each component's pinned version, and for Kubernetes the
    lab's further releases too (or just ``kube_version`` when one is asked for)."""
    out = []
    for c in components:
        if c == "kubernetes":
            versions = [kube_version] if kube_version else [
                required_version(HERE / c / "go.mod", COMPONENTS[c]["module"]), *lab_kubernetes_versions()]
            out += [(c, v) for v in versions]
        else:
            out.append((c, required_version(HERE / c / "go.mod", COMPONENTS[c]["module"])))
    return out


def build(component: str, version: str, moddir: Path) -> None:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = target_dir(component, version)
    with open(root / f".lock-{component}-{version}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make setup` waits instead of building twice
        if present(component, version):
            log(f"{component} {version}: present in {final}")
            return
        if final.is_dir() and not has_stages(component, version) and all(
                os.access(final / "bin" / b, os.X_OK) for b in COMPONENTS[component]["binaries"]):
            save_stages(component, moddir, final)  # a cache from before the stages were saved
            log(f"{component} {version}: saved its stages in {final / 'stages'}")
            return
        for stale in root.glob(f".tmp-{component}-{version}-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.monotonic()
        version_seen, flags, info = ldflags(component, moddir)
        assert version_seen == version, (version_seen, version)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{component}-{version}-", dir=root))
        try:
            (tmp / "bin").mkdir()
            pkgs = list(COMPONENTS[component]["binaries"].values())
            cmd = ["go", "build", "-trimpath", "-ldflags", " ".join(flags), "-o", str(tmp / "bin") + "/", *pkgs]
            log(f"{component} {version}: building {', '.join(COMPONENTS[component]['binaries'])} ...")
            proc = subprocess.Popen(cmd, cwd=moddir, env=go_env(), stderr=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of go and the compilers/linkers it ran
            stderr = proc.stderr.read()
            proc.stderr.close()
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"kbin: {component} {version}: build failed:\n{' '.join(cmd)}\n{stderr}")
            # etcd's binaries are named after their packages' last element (v3): rename to the binary names.
            for name, pkg in COMPONENTS[component]["binaries"].items():
                elems = pkg.split("/")
                built = elems[-2] if re.fullmatch(r"v\d+", elems[-1]) else elems[-1]
                if built != name:
                    (tmp / "bin" / built).rename(tmp / "bin" / name)
            elapsed = time.monotonic() - t0
            manifest = {
                "component": component, "version": version, "module": COMPONENTS[component]["module"],
                "module_sum": info.get("Sum"), "go": run_go(["env", "GOVERSION"], moddir).strip(),
                "go_mod": (moddir / "go.mod").read_text(), "command": cmd,
                "build_seconds": round(elapsed, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if COMPONENTS[component].get("stages"):
                save_stages(component, moddir, tmp)
            (tmp / "kbin.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.chmod(tmp, 0o755)
            if final.exists():  # an incomplete leftover from an older layout
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log(f"{component} {version}: built in {elapsed:.0f}s (peak RSS {usage.ru_maxrss / 1024:.0f} MiB, "
            f"cpu {usage.ru_utime + usage.ru_stime:.0f}s) -> {final / 'bin'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("components", nargs="*", metavar="COMPONENT",
                    help=f"any of {', '.join(COMPONENTS)} (default: all)")
    ap.add_argument("--kubernetes-version", metavar="vX.Y.Z",
                    help="build this k8s.io/kubernetes release instead of the pinned one")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print '<binary> <path>' lines")
    mode.add_argument("--check", action="store_true", help="exit 0 iff every binary is present")
    mode.add_argument("--pin-kubernetes", metavar="vX.Y.Z",
                      help="rewrite kubernetes/go.mod and go.sum for this release")
    ap.add_argument("--lab-release", action="store_true",
                    help="with --pin-kubernetes: pin a further release the lab runs (kubernetes-<version>/), built by default")
    ap.add_argument("--no-nice", action="store_true", help="do not lower the build's priority")
    args = ap.parse_args(argv)
    components = args.components or list(COMPONENTS)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        ap.error(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")

    if args.pin_kubernetes:
        target = HERE / ("kubernetes" if not args.lab_release else f"kubernetes-{args.pin_kubernetes}")
        write_kubernetes_module(target, args.pin_kubernetes, "runbooklab/kbin/kubernetes")
        log(f"{target.name}/go.mod pinned to {args.pin_kubernetes}")
        return 0

    if args.list or args.check:
        # Versions come from the go.mod files; nothing is downloaded.
        missing = 0
        for c, version in targets(components, args.kubernetes_version):
            for b in COMPONENTS[c]["binaries"]:
                path = target_dir(c, version) / "bin" / b
                ok = os.access(path, os.X_OK) and has_stages(c, version)
                missing += not ok
                if args.list:
                    print(f"{b} {path}" + ("" if ok else "  (missing)"))
        return (1 if missing else 0) if args.check else 0

    if not args.no_nice:
        os.nice(10)
    t0 = time.monotonic()
    for c, version in targets(components, args.kubernetes_version):
        build(c, version, kubernetes_moddir(version) if c == "kubernetes" else HERE / c)
    log(f"done in {time.monotonic() - t0:.0f}s; cache {cache_root()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
