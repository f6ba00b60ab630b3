"""Example tasks. Each attempt runs in its own runner process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any

import demo
from taskman import runtime

BEAT_INTERVAL = 0.1  # the resolution of the overlap check on sleep's execution log


def add(a: float, b: float) -> float:
    return a + b


def whoami() -> dict[str, Any]:
    """Which plugin version, environment and process ran this attempt."""
    return {
        "version": demo.VERSION,
        "greeting": os.environ.get("DEMO_GREETING"),
        "pid": os.getpid(),
        "task_id": runtime.task_id(),
        "attempt": runtime.attempt(),
        "fence": runtime.fencing_token(),
    }


def sleep(seconds: float, log_path: str | None = None) -> dict[str, Any]:
    """Sleep with progress. With log_path, append '<task> <attempt> <fence> <event>' lines:
    an execution log, written by the task itself, that chaos checks compare with the database."""

    def record(event: str) -> None:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(
                    f"{runtime.task_id()} {runtime.attempt()} {runtime.fencing_token()} "
                    f"{os.getpid()} {event}\n"
                )

    def beat() -> None:
        # "<task> <attempt> <wall time>" in <log_path>.beats: one machine's clock, so
        # a checker can see whether two attempts of a task ever ran at the same time.
        if log_path:
            with open(f"{log_path}.beats", "a", encoding="utf-8") as fh:
                fh.write(f"{runtime.task_id()} {runtime.attempt()} {time.time():.3f}\n")

    beat()
    record("start")
    deadline = time.monotonic() + seconds
    next_beat = time.monotonic() + BEAT_INTERVAL
    while (left := deadline - time.monotonic()) > 0:
        if time.monotonic() >= next_beat:
            next_beat += BEAT_INTERVAL
            beat()
        runtime.progress(1 - left / seconds, f"{left:.1f} s left")
        if runtime.should_abort():
            record("aborted")
            raise runtime.PermanentError("aborted")
        time.sleep(min(0.05, left))
    beat()
    record("done")
    return {"slept": seconds, "pid": os.getpid(), "fence": runtime.fencing_token()}


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def fail_permanently(message: str = "bad input") -> None:
    raise runtime.PermanentError(message)


def crash() -> None:
    """Die the way an out-of-memory kill would: no report, just gone."""
    sys.stdout.write("about to crash\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_once(marker_path: str) -> str:
    """Crash on the first attempt, succeed on the next."""
    if not os.path.exists(marker_path):
        with open(marker_path, "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))
        crash()
    return "survived"


def chatty(lines: int = 1000) -> int:
    for i in range(lines):
        print(f"line {i}")
    return lines


def not_json() -> object:
    return object()


def ignore_term(seconds: float) -> str:
    """A task that ignores SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished anyway"


def hog_memory(megabytes: int) -> int:
    """Allocate until the memory limit stops it."""
    chunks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return len(chunks)


def burn_cpu(seconds: float) -> int:
    deadline = time.process_time() + seconds
    spins = 0
    while time.process_time() < deadline:
        spins += 1
    return spins


def open_many(count: int) -> int:
    files = [open(os.devnull, encoding="utf-8") for _ in range(count)]  # noqa: SIM115
    for fh in files:
        fh.close()
    return count


def spew(megabytes: int) -> int:
    """Print megabytes of output."""
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    return megabytes


def settle(seconds: float, directory: str) -> int:
    """A capped task that measures how many of its kind run at once, by itself.

    Each running attempt keeps a marker file named after its pid; every 20 ms it
    counts the markers whose process is alive (a killed attempt leaves its marker
    behind, but its pid is dead, or a zombie its new parent has not reaped yet).
    Returns the largest count it saw.
    """
    marker = os.path.join(directory, f"run.{runtime.task_id()}.{runtime.attempt()}.{os.getpid()}")
    with open(marker, "w", encoding="utf-8"):
        pass
    most = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            alive = 0
            for name in os.listdir(directory):
                if not name.startswith("run."):
                    continue
                with contextlib.suppress(ValueError, IndexError):
                    alive += _running(int(name.rsplit(".", 1)[1]))
            most = max(most, alive)
            with open(os.path.join(directory, f"max.{os.getpid()}"), "w", encoding="utf-8") as fh:
                fh.write(str(most))
            time.sleep(0.02)
    finally:
        os.unlink(marker)
    return most


def _running(pid: int) -> bool:
    """Alive and not a zombie (which has exited: only its reaping is left)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: the signal check, zombies included
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
