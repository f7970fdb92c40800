#!/usr/bin/python3
"""systemctl for lab VMs: the lab's service manager, a stand-in for systemd (LAB SIMULATION).

A Debian VM's services are managed with ``systemctl``; the runbooks do exactly that. The lab's VMs
share one kernel inside namespaces, where systemd cannot be PID 1 (it refuses to run in a chroot
and needs a cgroup tree of its own), so each VM gets this small manager as
``/usr/local/sbin/systemctl`` instead. It reads the real unit files Debian's packages install
(``/lib/systemd/system``, ``/etc/systemd/system``, ``/usr/local/lib/systemd/system``) and honours what the project's services use:
``Type`` (simple, exec, notify, forking, oneshot), ``ExecStartPre``, ``ExecStart``,
``ExecStartPost``, ``ExecReload`` (with ``$MAINPID``), ``ExecStop``, ``EnvironmentFile``,
``Environment``, ``PIDFile``, ``RuntimeDirectory`` (with ``RuntimeDirectoryMode``), ``Alias``,
``User``/``Group`` and ``UMask`` (the main process and every Exec line not prefixed ``!`` or ``+``
run as that user, as under systemd), and ``Restart`` (``always``,
``on-failure``, ``on-abnormal``, ``on-abort``) with ``RestartSec`` for simple services: a small
supervisor process restarts the main process, as systemd would, and gives up after 5 starts in 10 s
(``StartLimitBurst``'s default). At boot it creates the ``/run`` directories of ``tmpfiles.d`` (what
systemd-tmpfiles-setup does: a VM's /run is a fresh tmpfs). ``Type=notify`` runs as simple: ``start``
returns 0.3 s after the main process started, not when it says ``READY=1`` (the lab's RKE2 stand-in
does not notify). Sandboxing, cgroups, dependencies and timers are not emulated. "Enabled" is the usual ``*.wants`` symlink on the VM's
disk, so it survives ``lab stop``/``lab start``; the lab starts enabled units at boot
(``systemctl lab-boot``). ``systemctl --version`` says what it is.

Standard library only: it runs under the VM's /usr/bin/python3.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

VERSION = "systemd 252 (runbook lab service manager: a LAB SIMULATION stand-in, not systemd)"
# where systemd looks, in its order: local units (/usr/local/lib, where RKE2's tarball install puts its
# units) come before the distribution's
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"), Path("/usr/local/lib/systemd/system"),
             Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
WANTS = Path("/etc/systemd/system/multi-user.target.wants")
STATE = Path("/run/lab-systemd")  # a tmpfs per boot: nothing runs after a reboot unless enabled
LOGS = Path("/var/log/lab-systemd")
TMPFILES_DIRS = (Path("/usr/lib/tmpfiles.d"), Path("/run/tmpfiles.d"), Path("/etc/tmpfiles.d"))
RESTART_POLICIES = ("no", "always", "on-failure", "on-abnormal", "on-abort")


class Fail(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# -- units ---------------------------------------------------------------------------------------

def unit_name(name: str) -> str:
    return name if "." in name else name + ".service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat); continuation lines joined; empty value resets."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            section[key] = []
        else:
            section.setdefault(key, []).append(value)
    return out


def find_unit(name: str) -> tuple[str, Path, dict]:
    """The unit file for ``name`` (following ``Alias=``): (canonical name, path, parsed)."""
    wanted = unit_name(name)
    for d in UNIT_DIRS:
        p = d / wanted
        if p.is_file():
            real = p.resolve()
            return real.name, real, parse_unit(real.read_text())
    for d in UNIT_DIRS:  # an alias such as chronyd.service -> chrony.service
        if d.is_dir():
            for p in sorted(d.glob("*.service")):
                try:
                    unit = parse_unit(p.read_text())
                except OSError:
                    continue
                aliases = " ".join(unit.get("Install", {}).get("Alias", [])).split()
                if wanted in aliases:
                    return p.name, p, unit
    raise Fail(f"Unit {wanted} not found.", 5)


def environment(unit: dict) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    service = unit.get("Service", {})
    for spec in service.get("EnvironmentFile", []):
        optional = spec.startswith("-")
        path = Path(spec.lstrip("-"))
        try:
            text = path.read_text()
        except OSError:
            if optional:
                continue
            raise Fail(f"EnvironmentFile {path} is missing") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, _, v = line.partition("=")
                env[k.strip()] = " ".join(shlex.split(v)) if v.strip() else ""
    for spec in service.get("Environment", []):
        for pair in shlex.split(spec):
            k, _, v = pair.partition("=")
            env[k] = v
    return env


def credentials(name: str, unit: dict) -> dict:
    """``User=``, ``Group=`` and ``UMask=`` as keyword arguments for ``subprocess`` (empty: run as root)."""
    service = unit.get("Service", {})
    out: dict = {}
    user, group = service.get("User", [""])[-1], service.get("Group", [""])[-1]
    if user:
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise Fail(f"Job for {name} failed: User={user}: failed to determine user credentials: no such user") from None
        gid = entry.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
            except KeyError:
                raise Fail(f"Job for {name} failed: Group={group}: failed to determine group credentials: no such group") from None
        out.update(user=entry.pw_uid, group=gid, extra_groups=os.getgrouplist(entry.pw_name, gid))
    umask = service.get("UMask", [""])[-1]
    if re.fullmatch(r"[0-7]{1,4}", umask):
        out["umask"] = int(umask, 8)
    return out


def privileged(spec: str) -> bool:
    """An Exec line prefixed ``!`` or ``+`` runs with full privileges whatever ``User=`` says."""
    prefix = re.match(r"[-@!+:]*", spec).group(0)
    return "!" in prefix or "+" in prefix


def command_line(spec: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """An Exec line as argv (prefixes stripped, $VAR split into words, ${VAR} kept whole); ignore-failure flag."""
    ignore = False
    while spec and spec[0] in "-@!+:":
        ignore = ignore or spec[0] == "-"
        spec = spec[1:]
    argv: list[str] = []
    for word in shlex.split(spec):
        if re.fullmatch(r"\$\w+", word):
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, ignore


# -- state ---------------------------------------------------------------------------------------

def pid_file(name: str) -> Path:
    return STATE / f"{name}.pid"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def main_pid(name: str) -> int | None:
    try:
        pid = int(pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def state(name: str, unit: dict) -> str:
    if unit.get("Service", {}).get("Type", ["simple"])[-1] == "oneshot":
        return "active" if (STATE / f"{name}.done").exists() else "inactive"
    if main_pid(name):
        return "active"
    if supervisor_pid(name):
        return "activating"  # between a crash and its restart
    return "failed" if (STATE / f"{name}.failed").exists() else "inactive"


def is_enabled(name: str) -> bool:
    return (WANTS / name).exists() or (WANTS / name).is_symlink()


# -- actions -------------------------------------------------------------------------------------

def run_exec(specs: list[str], env: dict[str, str], name: str, what: str, extra: dict | None = None,
             creds: dict | None = None) -> None:
    for spec in specs:
        try:
            argv, ignore = command_line(spec, {**env, **(extra or {})})
        except ValueError as e:
            raise Fail(f"{name}: cannot parse {what} {spec!r}: {e}") from None
        if not argv:
            continue
        try:
            r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90,
                               **({} if privileged(spec) else (creds or {})))
        except subprocess.TimeoutExpired:
            raise Fail(f"Job for {name} failed: {what} {' '.join(argv)} did not finish within 90 s") from None
        except OSError as e:
            if ignore:
                continue
            raise Fail(f"Job for {name} failed: {what} {argv[0]}: {e.strerror or e}") from None
        if r.returncode != 0 and not ignore:
            log(name, f"{what} {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
            raise Fail(f"Job for {name} failed because the control process exited with error code "
                       f"({what}: {' '.join(argv)}: {r.stderr.strip()[-300:]}).")


def log(name: str, text: str) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


def start(name: str, unit: dict) -> None:
    if state(name, unit) in ("active", "activating"):
        return
    service = unit.get("Service", {})
    kind = service.get("Type", ["simple"])[-1]
    env = environment(unit)
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.failed").unlink(missing_ok=True)
    try:
        creds = credentials(name, unit)
        mode = service.get("RuntimeDirectoryMode", ["0755"])[-1]
        for rel in " ".join(service.get("RuntimeDirectory", [])).split():
            runtime = Path("/run", rel)
            runtime.mkdir(parents=True, exist_ok=True)
            runtime.chmod(int(mode, 8) if re.fullmatch(r"[0-7]{3,4}", mode) else 0o755)
            if creds.get("user") is not None:
                os.chown(runtime, creds["user"], creds["group"])
        run_exec(service.get("ExecStartPre", []), env, name, "ExecStartPre", creds=creds)
        if kind in ("forking", "oneshot"):
            run_exec(service.get("ExecStart", []), env, name, "ExecStart", creds=creds)
            if kind == "oneshot":
                (STATE / f"{name}.done").touch()
            else:
                pid = wait_pid_file(service, name)
                pid_file(name).write_text(f"{pid}\n")
        else:
            try:
                argv, _ = command_line(service.get("ExecStart", [""])[-1], env)
            except ValueError as e:
                raise Fail(f"{name}: cannot parse ExecStart: {e}") from None
            if not argv:
                raise Fail(f"{name} has no ExecStart")
            proc = spawn(name, argv, env, creds)
            pid_file(name).write_text(f"{proc.pid}\n")
            time.sleep(0.3)  # a daemon that dies at once (bad config) is a failed start, as under systemd
            if proc.poll() is not None:
                raise Fail(f"Job for {name} failed: the main process exited with code {proc.returncode}; "
                           f"see {LOGS / (name + '.log')}")
            if restart_policy(unit) != "no":
                supervise(name, proc)
        run_exec(service.get("ExecStartPost", []), env, name, "ExecStartPost", creds=creds)
    except Fail:
        stop_supervisor(name)  # a failed start is not restarted behind the failure
        (STATE / f"{name}.failed").touch()
        raise


def spawn(name: str, argv: list[str], env: dict[str, str], creds: dict | None = None) -> subprocess.Popen:
    """The main process, in a session of its own, its output appended to the unit's log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    out = open(LOGS / f"{name}.log", "ab")
    try:
        return subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": ""}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True, cwd="/", **(creds or {}))
    except OSError as e:
        raise Fail(f"Job for {name} failed: ExecStart {argv[0]}: {e.strerror or e}") from None
    finally:
        out.close()


def restart_policy(unit: dict) -> str:
    service = unit.get("Service", {})
    if service.get("Type", ["simple"])[-1] not in ("simple", "exec", "notify"):
        return "no"
    policy = service.get("Restart", ["no"])[-1]
    if policy not in RESTART_POLICIES:
        raise Fail(f"Restart={policy} is not supported by the lab's service manager (it knows {', '.join(RESTART_POLICIES)})")
    return policy


def supervisor_file(name: str) -> Path:
    return STATE / f"{name}.supervisor"


def supervise(name: str, first: subprocess.Popen) -> None:
    """Start a supervisor that waits for the main process and starts it again under the unit's Restart=.

    The supervisor (``systemctl lab-supervise NAME PID``) leads a session of its own and outlives this
    command; ``stop`` kills it before the main process, so a stopped unit is not restarted. The first
    process is not its child: it watches that one by polling, and the ones it starts by waiting.
    """
    sup = subprocess.Popen([sys.executable, os.path.abspath(__file__), "lab-supervise", name, str(first.pid)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True, cwd="/")
    supervisor_file(name).write_text(f"{sup.pid}\n")


def _supervise(name: str, pid: int) -> None:
    # SIGTERM (from stop) ends the supervisor; it is held off while a restart starts a process and notes its
    # pid, so that stop never misses a main process the supervisor had just started
    def stopped(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)
    starts: list[float] = [time.monotonic()]
    while True:
        while alive(pid):
            time.sleep(0.2)
        code = _exit_code(pid)
        try:
            _, _, unit = find_unit(name)
            policy = restart_policy(unit)
        except Fail:
            return
        # on-abnormal and on-abort: only a death by a signal (an exit code of its own is a decision, not a crash)
        abnormal = code is not None and code < 0
        if policy == "no" or (policy == "on-failure" and code == 0) or (policy in ("on-abnormal", "on-abort") and not abnormal):
            log(name, f"main process exited ({code}); Restart={policy}: not restarted")
            return
        delay = _seconds(unit.get("Service", {}).get("RestartSec", ["0.1"])[-1])
        time.sleep(delay)
        now = time.monotonic()
        starts = [t for t in starts if now - t < 10] + [now]
        if len(starts) > 5:
            log(name, "start request repeated too quickly (5 starts within 10 s): the unit failed")
            (STATE / f"{name}.failed").touch()
            supervisor_file(name).unlink(missing_ok=True)
            return
        log(name, f"main process exited ({code}); scheduled restart (Restart={policy})")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            argv, _ = command_line(unit["Service"].get("ExecStart", [""])[-1], environment(unit))
            proc = spawn(name, argv, environment(unit), credentials(name, unit))
            pid_file(name).write_text(f"{proc.pid}\n")
            pid = proc.pid
        except (Fail, ValueError) as e:
            log(name, f"restart failed: {e}")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _exit_code(pid: int) -> int | None:
    """The exit status of a child (reaped here); None for a process that was not ours to reap."""
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        return None


def _seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|min)?\s*", text)
    if not m:
        return 0.1
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "ms" else value * 60 if m.group(2) == "min" else value


def wait_pid_file(service: dict, name: str, timeout: float = 10.0) -> int:
    path = Path(service.get("PIDFile", [""])[-1] or f"/run/{name}.pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().split()[0])
            if alive(pid):
                return pid
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    raise Fail(f"Job for {name} failed: no live process in its PIDFile {path} after {timeout:g} s")


def stop(name: str, unit: dict) -> None:
    service = unit.get("Service", {})
    (STATE / f"{name}.done").unlink(missing_ok=True)
    stop_supervisor(name)
    pid = main_pid(name)
    if pid is None:
        return
    try:
        if service.get("ExecStop"):
            run_exec(service["ExecStop"], environment(unit), name, "ExecStop", {"MAINPID": str(pid)})
    finally:  # a failing ExecStop does not leave the unit running
        if pid != 1 and alive(pid):
            signal_unit(pid, signal.SIGTERM)
            if not wait_gone(pid, _seconds(service.get("TimeoutStopSec", ["10"])[-1])):
                log(name, "State 'stop-sigterm' timed out. Killing.")
                signal_unit(pid, signal.SIGKILL)
                wait_gone(pid, 5.0)  # its ports are free only once it is gone
        pid_file(name).unlink(missing_ok=True)


def supervisor_pid(name: str) -> int | None:
    try:
        pid = int(supervisor_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_supervisor(name: str) -> None:
    """Kill the unit's supervisor first, so that it does not start the main process again."""
    pid = supervisor_pid(name)
    if pid:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGTERM waits for a restart in progress to note its pid
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if wait_gone(pid, 2.0):
                break
    supervisor_file(name).unlink(missing_ok=True)


def signal_unit(pid: int, sig: int) -> None:
    """Signal the unit's process group when it leads one (units this manager started), else its main process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reload(name: str, unit: dict) -> None:
    service = unit.get("Service", {})
    if not service.get("ExecReload"):
        raise Fail(f"Failed to reload {name}: Job type reload is not applicable for unit {name}.")
    pid = main_pid(name)
    if pid is None:
        raise Fail(f"Failed to reload {name}: Unit {name} is not active.")
    run_exec(service["ExecReload"], environment(unit), name, "ExecReload", {"MAINPID": str(pid)})


def enable(name: str, path: Path) -> None:
    WANTS.mkdir(parents=True, exist_ok=True)
    link = WANTS / name
    if not link.is_symlink():
        link.symlink_to(path)
        print(f"Created symlink {link} \u2192 {path}.")


def disable(name: str) -> None:
    link = WANTS / name
    if link.is_symlink() or link.exists():
        link.unlink()
        print(f"Removed \"{link}\".")


def runtime_dirs() -> None:
    """The ``d`` and ``D`` lines of tmpfiles.d under /run (systemd-tmpfiles-setup at boot: /run is a fresh tmpfs)."""
    files: dict[str, str] = {}
    for folder in TMPFILES_DIRS:  # a file in /etc replaces the package's file of the same name
        for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
            try:
                files[conf.name] = conf.read_text(errors="replace")
            except OSError as e:  # one unreadable file must not keep the units from starting
                print(f"tmpfiles: {conf}: {e}", file=sys.stderr)
    for text in files.values():
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] not in ("d", "D") or "%" in parts[1]:
                continue
            path = Path(parts[1].replace("/var/run/", "/run/", 1))
            if not str(path).startswith("/run/") or path.exists():
                continue
            try:
                path.mkdir(parents=True)
                mode = parts[2] if len(parts) > 2 else "-"
                path.chmod(int(mode, 8) if re.fullmatch(r"[0-7]{3,4}", mode) else 0o755)
                user = parts[3] if len(parts) > 3 and parts[3] != "-" else "root"
                group = parts[4] if len(parts) > 4 and parts[4] != "-" else None
                entry = pwd.getpwnam(user)
                os.chown(path, entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid)
            except (OSError, KeyError) as e:
                print(f"tmpfiles: {path}: {e}", file=sys.stderr)


def boot() -> int:
    """Create /run's directories, then start every enabled unit (what systemd does on the way to multi-user.target)."""
    runtime_dirs()
    failed = 0
    for link in sorted(WANTS.glob("*.service")) if WANTS.is_dir() else []:
        try:
            name, _, unit = find_unit(link.name)
            start(name, unit)
        except Fail as e:
            print(e, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = {a for a in argv if a.startswith("-")}
    if "--version" in flags:
        print(VERSION)
        return 0
    if not args:
        print("usage: systemctl [--now] COMMAND UNIT... (the lab's service manager; see --version)", file=sys.stderr)
        return 1
    command, names = args[0], args[1:]
    if command == "daemon-reload":
        return 0
    if command == "lab-boot":
        return boot()
    if command == "lab-supervise":  # internal: the supervisor of a unit with Restart= (see supervise)
        _supervise(names[0], int(names[1]))
        return 0
    if not names:
        print(f"Too few arguments for {command}.", file=sys.stderr)
        return 1
    code = 0
    for given in names:
        try:
            name, path, unit = find_unit(given)
            if command == "start":
                start(name, unit)
            elif command == "stop":
                stop(name, unit)
            elif command == "restart":
                stop(name, unit)
                start(name, unit)
            elif command == "reload":
                reload(name, unit)
            elif command in ("reload-or-restart", "try-reload-or-restart"):
                if unit.get("Service", {}).get("ExecReload") and main_pid(name):
                    reload(name, unit)
                elif command == "reload-or-restart" or main_pid(name):
                    stop(name, unit)
                    start(name, unit)
            elif command == "enable":
                enable(name, path)
                if "--now" in flags:
                    start(name, unit)
            elif command == "disable":
                disable(name)
                if "--now" in flags:
                    stop(name, unit)
            elif command == "is-active":
                current = state(name, unit)
                if "--quiet" not in flags and "-q" not in flags:
                    print(current)
                code = code or (0 if current == "active" else 3)
            elif command == "is-enabled":
                on = is_enabled(name)
                if "--quiet" not in flags and "-q" not in flags:
                    print("enabled" if on else "disabled")
                code = code or (0 if on else 1)
            elif command == "status":
                current = state(name, unit)
                print(f"* {name} - {' '.join(unit.get('Unit', {}).get('Description', [name]))}")
                print(f"     Loaded: loaded ({path}; {'enabled' if is_enabled(name) else 'disabled'})")
                print(f"     Active: {current}" + (f" (Main PID: {main_pid(name)})" if main_pid(name) else ""))
                print("       Note: the runbook lab's service manager (LAB SIMULATION), not systemd")
                code = code or (0 if current == "active" else 3)
            else:
                print(f"Unknown command verb {command} (the lab's service manager knows start, stop, restart, "
                      "reload, enable, disable, is-active, is-enabled, status).", file=sys.stderr)
                return 1
        except Fail as e:
            print(e, file=sys.stderr)
            code = e.code if command in ("is-active", "status") else 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
