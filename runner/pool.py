"""Pooled runners: warm runner processes that run attempts one after another.

A plugin (or one of its functions) with ``isolation = "pooled"`` gets its attempts
run by a ``PooledAttempt``: to the node's steps it is a runner like any other
(cluster/attempts.py's RunnerHandle), with its own claim, token, timeout, abort,
progress, output tail and outcome. Underneath, a ``PooledProcess`` (a Runner that
stays alive after an attempt) runs it, then waits for the next spec.

What ends one attempt ends only that attempt:
* a result or error ends it with exit status 0; the process goes back to the pool;
* a crash, a kill for a timeout, an abort's SIGTERM, an output limit or the
  watchdog ends the process, and so the attempt it was running, with the exit
  status it had; a process the node signalled is never reused;
* after ``max_tasks_per_runner`` attempts, or once an attempt leaves its resident
  memory above ``max_runner_memory_mb``, the process is stopped and a new one
  starts on demand.
The runner tags each message with the attempt's fence, so a message of an earlier
attempt is never taken for the current one's. What a task leaves behind in the
process (module state, threads, monkey-patching) is the documented price of the
mode (docs/runner.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskman.runner.supervisor import (
    OUTPUT_TAIL,
    Runner,
    RunnerEvent,
    RunnerSpec,
    keep_output,
    spec_message,
)
from taskman.text import clean_text

IDLE_SECONDS = 60.0  # an idle pooled runner is stopped after this long without work
OUTPUT_DRAIN = 0.05  # after a final message: how long its output may take to arrive
PAGE = os.sysconf("SC_PAGE_SIZE")


def pool_key(spec: RunnerSpec) -> tuple[Any, ...]:
    """Attempts that may share a process: the same interpreter, path, environment,
    working directory, limits, user and recycling rules."""
    return (
        spec.python,
        tuple(spec.sys_path),
        tuple(sorted(spec.env.items())),
        spec.cwd,
        tuple(sorted(spec.limits.items())),
        spec.run_as,
        spec.fork,
        tuple(spec.preload),
        spec.heartbeat_interval,
        spec.watchdog_timeout,
        spec.max_tasks_per_runner,
        spec.max_runner_memory_mb,
    )


class PooledAttempt:
    """One attempt run by a pooled runner, seen by the node as its runner."""

    def __init__(
        self, spec: RunnerSpec, events: queue.Queue[RunnerEvent], pool: RunnerPool | None = None
    ) -> None:
        self.spec = spec
        self.events = events
        self.pool = pool or shared_runner_pool()
        self.process: PooledProcess | None = None
        self.started_at = self.last_heard = time.monotonic()
        self.last_ping = 0.0
        self.longest_silence = 0.0
        self.output_bytes = 0
        self.output_exceeded = False
        self.signalled = False  # the node stopped it: its process is not reused
        self.ended = False  # its exit event was sent
        self.began = False  # its runner said "ready": it may have run task code
        self._tail: deque[bytes] = deque()
        self._tail_size = 0

    @property
    def fence(self) -> int:
        return self.spec.call.fence

    # -- what the node calls ------------------------------------------------------
    def launch(self) -> None:
        self.started_at = self.last_heard = time.monotonic()
        self.pool.run(self)

    @property
    def alive(self) -> bool:
        return not self.ended and self.process is not None and self.process.alive

    def ping(self) -> None:
        if self.process is not None and not self.ended:
            self.process.send({"t": "ping"})
        now = time.monotonic()
        self.longest_silence = max(self.longest_silence, self.silence(now))
        self.last_ping = now

    def silence(self, now: float) -> float:
        return now - (self.last_ping or self.started_at)

    def request_abort(self) -> None:
        if self.process is not None and not self.ended:
            self.process.send({"t": "abort", "f": self.fence})

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        process = self.process
        if self.ended or process is None:
            return  # over: the process now belongs to the pool (or is gone)
        self.signalled = True
        process.signal(signum)

    def close(self) -> None:
        """The node is done with this attempt: its process goes back to the pool."""
        if self.process is not None:
            self.pool.release(self)

    def output_tail(self) -> str:
        return clean_text(b"".join(self._tail)[-OUTPUT_TAIL:].decode("utf-8", "replace"))

    # -- what its process calls ------------------------------------------------------
    def deliver(self, message: dict[str, Any]) -> None:
        if self.ended:
            return
        self.last_heard = time.monotonic()
        if message["t"] == "ready":
            self.began = True
        elif message["t"] == "exit":
            self.ended = True
        self.events.put(RunnerEvent(self, message))

    def on_output(self, chunk: bytes, allowed: int | None) -> None:
        keep_output(self, chunk, allowed)


@dataclass(eq=False)  # compared by identity, as the pool keeps them
class PooledProcess(Runner):
    """A runner process that stays after an attempt and runs the next one it is given."""

    pool: RunnerPool | None = None
    current: PooledAttempt | None = None  # the attempt it runs now
    attempts_run: int = 0
    retired: bool = False  # signalled, exited or recycled: never given another attempt
    handed: PooledAttempt | None = None  # the attempt given to it while it was idle
    idle_since: float = 0.0
    _route_lock: threading.Lock = field(default_factory=threading.Lock)

    def give(self, attempt: PooledAttempt) -> bool:
        """Run ``attempt`` next (the process is idle); False if it is gone."""
        with self._route_lock:
            self.current = attempt
            self.handed = attempt
        if self.send(spec_message(attempt.spec)):
            return True
        with self._route_lock:
            self.current = None
        return False

    def signal(self, signum: int) -> None:
        self.retired = True
        super().signal(signum)

    def _emit(self, message: dict[str, Any]) -> None:
        with self._route_lock:
            attempt = self.current
        kind = message["t"]
        if kind == "exit":
            self._exited_now(attempt, message)
            return
        if attempt is None:
            return  # between attempts: an idle runner's heartbeat
        fence = message.pop("f", None)
        if fence is not None and fence != attempt.fence:
            return  # an earlier attempt's straggler
        if kind not in ("result", "error"):
            attempt.deliver(message)
            return
        self._drain_output()
        with self._route_lock:
            if self.current is attempt:
                self.current = None
        attempt.deliver(message)
        # The runner has killed what the task started before it reported: the attempt
        # is over, as a process-mode runner's exit would say.
        attempt.deliver({"t": "exit", "code": 0})

    def _exited_now(self, attempt: PooledAttempt | None, message: dict[str, Any]) -> None:
        self.retired = True
        with self._route_lock:
            self.current = None
        if self.pool is not None:
            self.pool.forget(self)
        Runner.close(self)  # its socket: no attempt closes a pooled runner's
        if attempt is None:
            return
        if (
            self.pool is not None
            and self.handed is attempt
            and not attempt.began
            and not attempt.signalled
        ):
            # An idle runner that died unnoticed (OOM killer, a stray kill) before the
            # attempt it was handed began: the attempt never ran, so it is not its crash.
            self.pool.log("runner.lost_idle", pid=self.pid, code=message.get("code"))
            self.pool.run(attempt)
            return
        attempt.deliver(message)

    def _snapshot(self) -> None:
        if self.current is not None:  # between attempts nothing of a task is left to note
            super()._snapshot()

    def _on_output(self, chunk: bytes, allowed: int | None) -> None:
        attempt = self.current
        if attempt is not None:
            attempt.on_output(chunk, allowed)

    def _drain_output(self) -> None:
        """Wait (briefly) until the output written before the final message is read."""
        stream = self.process.stdout if self.process is not None else None
        if stream is None:
            return
        deadline = time.monotonic() + OUTPUT_DRAIN
        while time.monotonic() < deadline:
            with self._output_lock:
                try:
                    pending = int.from_bytes(
                        fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little"
                    )
                except (OSError, ValueError):
                    return
            if pending == 0:
                return
            time.sleep(0.001)

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as fh:
                return int(fh.read().split()[1]) * PAGE / (1024 * 1024)
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self) -> None:
        """Let an idle runner go: it exits cleanly when its socket closes."""
        self.retired = True
        with contextlib.suppress(OSError):
            self.send({"t": "stop"})


class RunnerPool:
    """Idle pooled runners, keyed by ``pool_key``; processes start on demand."""

    def __init__(self, log: Callable[..., None] | None = None) -> None:
        self.idle: dict[tuple[Any, ...], list[PooledProcess]] = {}
        self.lock = threading.Lock()
        self.log = log or _default_log
        self._next_sweep = 0.0

    def run(self, attempt: PooledAttempt) -> None:
        """Give ``attempt`` an idle process of its kind, or start one for it."""
        key = pool_key(attempt.spec)
        while True:
            with self.lock:
                process = self._take(key)
            if process is None:
                break
            attempt.process = process
            if process.give(attempt):
                return
        process = PooledProcess(spec=attempt.spec, events=queue.Queue(), pool=self)
        process.current = attempt
        attempt.process = process
        process.launch()  # its first spec is this attempt's; a failed start is its exit

    def _take(self, key: tuple[Any, ...]) -> PooledProcess | None:
        stack = self.idle.get(key)
        while stack:
            process = stack.pop()  # the most recently used: warm caches, and idle ones age out
            if not process.retired and process.alive:
                return process
        return None

    def release(self, attempt: PooledAttempt) -> None:
        """After the node recorded ``attempt``: its process runs another, or is let go."""
        process = attempt.process
        if process is None:
            return
        attempt.process = None
        with process._route_lock:
            if process.current is attempt:  # ended without its runner's exit (never here)
                process.current = None
        process.attempts_run += 1
        reason = self._retire_reason(attempt, process)
        if reason is not None:
            if reason != "stopped":
                self.log("runner.recycled", pid=process.pid, reason=reason)
            process.stop()
        else:
            process.idle_since = time.monotonic()
            with self.lock:
                self.idle.setdefault(pool_key(process.spec), []).append(process)
        self._stop_idle(time.monotonic())

    @staticmethod
    def _retire_reason(attempt: PooledAttempt, process: PooledProcess) -> str | None:
        spec = process.spec
        if attempt.signalled or process.retired or not process.alive:
            return "stopped"
        if process.attempts_run >= spec.max_tasks_per_runner:
            return f"ran {process.attempts_run} attempts (max_tasks_per_runner)"
        limit = spec.max_runner_memory_mb
        if limit is not None:
            rss = process.rss_mb()
            if rss > limit:
                return f"resident memory {rss:.0f} MiB over max_runner_memory_mb = {limit}"
        return None

    def _stop_idle(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        stale: list[PooledProcess] = []
        with self.lock:
            for stack in self.idle.values():
                keep: list[PooledProcess] = []
                for process in stack:
                    fresh = now - process.idle_since < IDLE_SECONDS and not process.retired
                    (keep if fresh else stale).append(process)
                stack[:] = keep
        for process in stale:
            process.stop()

    def forget(self, process: PooledProcess) -> None:
        """A process exited: never hand it out again."""
        with self.lock:
            stack = self.idle.get(pool_key(process.spec))
            if stack:
                stack[:] = [p for p in stack if p is not process]

    def ping_idle(self) -> None:
        """A word to every idle runner: their watchdog counts between attempts too."""
        with self.lock:
            idle = [p for stack in self.idle.values() for p in stack]
        for process in idle:
            process.send({"t": "ping"})

    def close(self) -> None:
        """Stop every idle runner (the node is stopping, or gave up its session)."""
        with self.lock:
            idle = [p for stack in self.idle.values() for p in stack]
            self.idle.clear()
        for process in idle:
            process.stop()

    def idle_count(self) -> int:
        with self.lock:
            return sum(len(stack) for stack in self.idle.values())


def _default_log(event: str, **fields: Any) -> None:
    import structlog

    structlog.get_logger("taskman.runner").info(event, **fields)


_shared: RunnerPool | None = None
_shared_lock = threading.Lock()


def existing_runner_pool() -> RunnerPool | None:
    return _shared


def shared_runner_pool() -> RunnerPool:
    """The process's pool of pooled runners; they die with this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RunnerPool()
        return _shared


def start_runner(spec: RunnerSpec, events: queue.Queue[RunnerEvent]) -> Runner | PooledAttempt:
    """The node's runner factory: a pooled attempt for a pooled spec, else a runner process."""
    if spec.pooled:
        return PooledAttempt(spec, events)
    return Runner(spec, events)
