"""What every lab server shares: its error, free ports, binaries, child processes.

Every server is a child process of the caller, bound to loopback ports chosen here,
with its data and logs under a caller-supplied base directory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

from taskman.errors import TaskmanError

INSTALL_HINT = "run scripts/install-deps --servers"

# /usr/sbin is often not on a non-root PATH, but that is where Debian puts mariadbd.
_EXTRA_BIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")

_POLL = 0.05
_KILL_WAIT = 10.0  # after SIGKILL a process may still be in an uninterruptible wait


class LabError(TaskmanError):
    """A lab server could not be set up, started or reached."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    Ports are drawn below the kernel's ephemeral range: a server that is killed and
    restarted must get its port back, and a port in the ephemeral range may meanwhile
    have become the local end of some client's outgoing connection.
    """
    low, _ = _ephemeral_range()
    top = min(low, 65536) - 1
    if top > 20000:
        for _ in range(200):
            port = random.randint(15000, top)
            if _port_is_free(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        assert isinstance(port, int)
        return port


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str) -> list[int]:
    """``count`` distinct free ports on ``host``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _require_binary(name: str) -> str:
    path = _find_binary(name)
    if path is None:
        raise LabError(
            f"{name} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}: {INSTALL_HINT}"
        )
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the log fd; closing ours avoids leaking it.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # Own session: a Ctrl-C in the test terminal must not reach the servers
            # before our own cleanup does.
            start_new_session=True,
        )


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Popen.send_signal refuses once the child was reaped, so a recycled PID is safe.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Return once every thread of ``pid`` is stopped (SIGSTOP is asynchronous: a JVM
    thread already running answered a request after the signal was sent, seen in CI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [
                (
                    Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
                    or ["?"]
                )[0]
                for tid in os.listdir(f"/proc/{pid}/task")
            ]
        except OSError:
            return  # gone, or no /proc: nothing to wait for
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    _signal(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_KILL_WAIT)


def _terminate_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process, then SIGKILL whatever is still alive at the deadline."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        _signal(proc, signal.SIGCONT)  # a SIGSTOPped process would never act on SIGTERM
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in live:
        _kill(proc)


class _Stoppable(Protocol):
    def stop(self, timeout: float = ...) -> None: ...


# Servers still running at interpreter exit are stopped, so an aborted test run does
# not leave orphans holding ports and disk.
_LIVE: set[_Stoppable] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


_free_ports = free_ports  # the name the lab's modules import
