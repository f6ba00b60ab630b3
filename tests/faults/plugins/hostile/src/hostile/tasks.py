"""Task code that tries to break its node (guarantee 9 of the design's invariants).

Every task that starts processes appends their pids, one a line, to ``pid_file``,
so the test can check /proc after the attempt has ended.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

from taskman import runtime

# Strings no database column accepts: lone surrogates, NUL, control bytes.
BAD = "bad \udcff name\x00 with \x01\x07\x1b[2J bytes \ud800 end"
PYTHON_IGNORING_TERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n"
)


def record(pid_file: str, *pids: int) -> None:
    with open(pid_file, "a", encoding="utf-8") as fh:
        fh.writelines(f"{pid}\n" for pid in pids)


def ok(value: Any = "fine") -> Any:
    return value


def pid() -> int:
    """The process that ran this attempt (a pooled runner runs many)."""
    return os.getpid()


_held: list[bytearray] = []


def hold_memory(megabytes: int) -> int:
    """Leave memory behind in the process: a pooled runner's memory ceiling recycles it."""
    _held.extend(bytearray(b"x" * (1024 * 1024)) for _ in range(megabytes))
    return len(_held)


def fork_and_raise(pid_file: str) -> None:
    """os.fork() a child that sleeps (holding the runner's socket), then fail."""
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    record(pid_file, pid)
    raise RuntimeError("forked a child, then failed")


def fork_and_return_twice(pid_file: str) -> int:
    """os.fork() without exec or exit: both processes return into the runner's code."""
    record(pid_file, os.getpid())
    if os.fork() != 0:
        time.sleep(0.3)  # the copy returns first
    return os.getpid()


def mp_fork_and_raise(pid_file: str) -> None:
    """The same through multiprocessing's fork start method."""
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
    process.start()
    assert process.pid is not None
    record(pid_file, process.pid)
    raise RuntimeError("started a multiprocessing child, then failed")


def daemonise(pid_file: str) -> str:
    """Double fork + setsid, keeping every inherited descriptor, as a careless library does."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, f"{os.getpid()}\n".encode())
            time.sleep(300)
        os._exit(0)
    os.waitpid(pid, 0)
    grandchild = int(os.read(r, 64))
    record(pid_file, grandchild)
    return "daemonised"


def spawn_and_return(pid_file: str) -> str:
    child = subprocess.Popen(["sleep", "300"])
    record(pid_file, child.pid)
    return "spawned"


def setsid_escape(pid_file: str) -> str:
    """A child in a session of its own, holding none of the runner's descriptors."""
    child = subprocess.Popen(
        ["sleep", "300"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record(pid_file, child.pid)
    return "escaped"


def spawn_and_exit(pid_file: str) -> None:
    """Leave a child in the runner's session and one in its own, then end the runner abruptly."""
    near = subprocess.Popen(["sleep", "300"])
    far = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record(pid_file, near.pid, far.pid)
    time.sleep(0.5)  # the node gets to see them at least once
    os._exit(0)


def spawn_on_cue_and_exit(pid_file: str, cue: str) -> None:
    """Wait for the file ``cue`` (the test freezes the node first), then leave a child in
    the runner's session and one in its own and end the runner abruptly: all before
    the node can look at them."""
    with open(f"{cue}.waiting", "w", encoding="utf-8"):
        pass
    while not os.path.exists(cue):
        time.sleep(0.01)
    near = subprocess.Popen(["sleep", "300"])
    far = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record(pid_file, near.pid, far.pid)
    time.sleep(0.05)
    os._exit(0)


def spawn_and_sleep(pid_file: str) -> None:
    """Children in and out of the runner's session, then wait (for the node to die)."""
    near = subprocess.Popen(["sleep", "300"])
    far = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record(pid_file, near.pid, far.pid)
    time.sleep(300)


def ignore_sigterm(pid_file: str) -> None:
    """Ignore SIGTERM, and start a child in its own session that ignores it too."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", PYTHON_IGNORING_TERM], start_new_session=True)
    record(pid_file, child.pid)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.05)


def close_all_fds(pid_file: str) -> str:
    """Start a child, then close every descriptor, the runner's socket and output included."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record(pid_file, child.pid)
    os.closerange(0, 1 << 16)
    time.sleep(1.0)
    return "closed everything"


def loud(megabytes: int) -> str:
    """Megabytes on stdout and stderr, with NUL, invalid UTF-8 and escape sequences."""
    line = b"\x00\xff\xfe\x1b[2J noise \xc3\x28 " * 64 + b"\n"
    for _ in range(megabytes * 1024 * 1024 // len(line)):
        os.write(1, line)
        os.write(2, line)
    return "loud"


def return_bad_strings() -> dict[str, Any]:
    return {"value": BAD, BAD: [BAD, 1]}


class BadError(Exception):
    pass


# Class names refuse surrogates and NUL; a module name takes anything, and the
# runner reports an error's type as "<module>.<qualname>".
BadError.__module__ = "bad\udcff\x00module"


def raise_bad_strings() -> None:
    raise BadError(BAD)


def progress_bad_strings() -> str:
    runtime.progress(0.5, BAD)
    time.sleep(1.5)  # several heartbeats: the node writes the progress message
    return "progressed"


def raw_messages() -> str:
    """Bypass the runtime and write straight to the runner's socket."""
    sock = runtime._ctx.send.__self__.sock  # type: ignore[union-attr]
    sock.sendall(
        b'{"t":"progress","fraction":NaN,"message":"nan"}\n'
        b'{"t":"progress","fraction":"half","message":{"a":[1]}}\n'
        b"\xff\xfe not json\n"
        b"[1, 2, 3]\n"
        b'{"t":["odd"]}\n'
        b'{"t":"ready","pid":"\\udcff"}\n'
        b'{"t":"exit","code":0}\n'
        b'{"t":"progress","fraction":1e308,"message":"\\udcff\\u0000"}\n'
    )
    time.sleep(1.0)
    return "survived"


def oversized_message(megabytes: int) -> str:
    """A line far over the protocol's limit, with no newline in sight."""
    sock = runtime._ctx.send.__self__.sock  # type: ignore[union-attr]
    sock.sendall(b'{"t":"progress","message":"' + b"x" * (megabytes * 1024 * 1024))
    time.sleep(300)
    return "unreachable"


def exit_in_atexit(pid_file: str) -> str:
    """An atexit handler that starts a child, then exits with a status, or hangs."""

    def handler() -> None:
        child = subprocess.Popen(["sleep", "300"])
        record(pid_file, child.pid)
        time.sleep(300)
        os._exit(3)

    atexit.register(handler)
    return "registered"
