"""The node side of a runner: spawn the child, talk over its socket, capture output, stop it.

Events from every runner go into one queue the node's loop reads, as
``RunnerEvent(runner, message)``; a message of ``{"t": "exit"}`` is the last.

The runner's exit, as waitpid (or its zygote) reports it, ends the attempt, not
EOF on its socket: a process the task forked may hold the socket for ever. When
the runner has exited, whatever it left behind is killed before the exit event
is sent, so no process of the attempt outlives its recorded outcome.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from taskman.errors import RunnerError
from taskman.models import AttemptCall
from taskman.runner import proctree, protocol
from taskman.runner.threads import start_daemon
from taskman.runner.zygote import (
    SPAWN_LOCK,
    STARTED,
    ForkedProcess,
    ZygotePool,
    ZygoteUnavailableError,
    existing_pool,
    shared_pool,
)
from taskman.text import UnsafeValueError, clean_text

CHILD_PATH = str(Path(__file__).with_name("child.py"))
OUTPUT_TAIL = 64 * 1024
BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
SNAPSHOT_INTERVAL = 0.2  # how often the node notes an attempt's processes while it runs
EOF_GRACE = 1.0  # after the runner's exit: how long its last messages and output may take

# Pids of runners that have not exited yet: never mistaken for another attempt's orphans.
_live_runners: set[int] = set()
_live_lock = threading.Lock()


@functools.cache  # a resolve() and stat()s per attempt otherwise: 4 syscalls per task
def _runtime_path() -> str:
    # Installed: taskman/runner/../runtime.py. From a checkout the runner folder
    # sits beside taskman/, so look there too.
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "runtime.py", here.parent / "taskman" / "runtime.py"):
        if candidate.is_file():
            return str(candidate)
    import taskman.runtime

    return str(Path(taskman.runtime.__file__))


@dataclass(frozen=True)
class RunnerSpec:
    """What one runner runs (``call``: the node passes its claim as it is) and how."""

    call: AttemptCall
    python: str
    sys_path: list[str]
    env: dict[str, str]
    cwd: str
    heartbeat_interval: float
    watchdog_timeout: float
    limits: dict[str, int] = field(default_factory=dict)
    run_as: tuple[int, int] | None = None  # (uid, gid) the child drops to before task code
    fork: bool = True  # fork from the plugin version's zygote; False: always a fresh interpreter
    preload: tuple[str, ...] = ()  # modules the zygote imports before it forks
    # Run in a warm runner that runs attempts one after another (runner/pool.py).
    pooled: bool = False
    max_tasks_per_runner: int = 1000  # pooled: the runner is replaced after this many attempts
    max_runner_memory_mb: int | None = None  # pooled: ... or once an attempt leaves it larger


class EventSource(Protocol):
    """What sent a runner event: a Runner, or a pooled runner's attempt (runner/pool.py)."""

    spec: RunnerSpec


@dataclass
class RunnerEvent:
    runner: EventSource
    message: dict[str, Any]


@dataclass(eq=False)  # one process each: compared by identity
class Runner:
    spec: RunnerSpec
    events: queue.Queue[RunnerEvent]
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    zygotes: ZygotePool | None = None  # None: the process's shared pool
    spawn_mode: str = ""  # "fork" (from a zygote) or "cold" (a fresh interpreter)
    started_at: float = 0.0
    last_heard: float = 0.0
    last_ping: float = 0.0  # when the node last spoke to the child
    longest_silence: float = 0.0  # the longest the node left it without a word
    pid: int = 0
    _sock: socket.socket | None = None
    _send_lock: threading.Lock = field(default_factory=threading.Lock)
    _tail: deque[bytes] = field(default_factory=deque)
    _tail_size: int = 0
    _output_done: threading.Event = field(default_factory=threading.Event)
    _state_lock: threading.Lock = field(default_factory=threading.Lock)
    _spawned: bool = False  # the child exists (or its start failed for good)
    _pending_signal: int | None = None  # sent before the child existed
    output_bytes: int = 0
    output_exceeded: bool = False
    _messages_done: threading.Event = field(default_factory=threading.Event)
    _exited: threading.Event = field(default_factory=threading.Event)
    _seen: dict[int, int] = field(default_factory=dict)  # pid seen below the runner: start time
    _started_ticks: int = 0  # the runner's start time (/proc clock ticks)
    _seen_sessions: set[int] = field(default_factory=set)  # and their sessions
    _reported: bool = False  # a final message came: the runner cleaned up before sending it
    _output_lock: threading.Lock = field(default_factory=threading.Lock)  # a chunk read and kept

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        """Start the child now; raises RunnerError if it cannot be started."""
        self.started_at = self.last_heard = time.monotonic()
        self._spawn()
        with self._state_lock:
            self._spawned = True
        start_daemon(self._read_messages)
        start_daemon(self._read_output)
        start_daemon(self._watch_exit)

    def launch(self) -> None:
        """Start the child from a thread of its own, so the caller never waits for it.

        The node's loop launches: the zygote's fork (or a cold spawn) then overlaps
        its database and ZooKeeper work. A start that fails arrives as the exit
        event ``{"t": "exit", "code": None, "error": ...}``; a signal sent before the
        child exists is delivered the moment it does.
        """
        self.started_at = self.last_heard = time.monotonic()
        start_daemon(self._launch)

    def _launch(self) -> None:
        try:
            self._spawn()
        except RunnerError as exc:
            with self._state_lock:
                self._spawned = True  # for good: nothing left to signal
            self._emit({"t": "exit", "code": None, "error": str(exc)})
            return
        with self._state_lock:
            self._spawned = True
            pending = self._pending_signal
        if pending is not None:
            self.signal(pending)
        start_daemon(self._read_output)
        start_daemon(self._watch_exit)
        self._read_messages()
        # A cold child's parent-death signal fires when this thread ends: not before it exits.
        self._exited.wait()

    def _spawn(self) -> None:
        proctree.ensure_subreaper()  # a runner's orphans come to us, not to init
        parent_sock, child_sock = socket.socketpair()
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(self.spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        pool = None
        if self.spec.fork:
            pool, parent_sock, child_sock = self._fork(env, parent_sock, child_sock)
        env["TASKMAN_RUNNER_FD"] = str(child_sock.fileno())
        env["TASKMAN_NODE_PID"] = str(os.getpid())
        try:
            if self.process is None:
                self._cold_spawn(env, child_sock)
        except OSError as exc:
            parent_sock.close()
            raise RunnerError(f"cannot start {self.spec.python}: {exc}") from exc
        finally:
            child_sock.close()
        self._note_started(pool)
        # The spec must be the child's first message: other threads (the node's guard
        # pings) can send only once _sock is set, after it.
        with contextlib.suppress(OSError):  # a child that died at once: its exit tells why
            parent_sock.sendall(protocol.encode(self._spec_message()))
        self.last_heard = time.monotonic()
        self._sock = parent_sock

    def _fork(
        self, env: dict[str, str], parent_sock: socket.socket, child_sock: socket.socket
    ) -> tuple[ZygotePool, socket.socket, socket.socket]:
        """Fork the runner from its plugin version's zygote, if it can be (the pool used,
        and the socket pair from now on)."""
        pool = self.zygotes if self.zygotes is not None else shared_pool()
        try:
            self.process = pool.fork(self.spec, env, _runtime_path(), child_sock)
            self.spawn_mode = "fork"
        except ZygoteUnavailableError:
            self.process = None  # the cold spawn below, as for `fork = false`
            # A wedged zygote may still fork late: that child must find its socket
            # closed (and die), never share the cold child's.
            parent_sock.close()
            child_sock.close()
            parent_sock, child_sock = socket.socketpair()
        return pool, parent_sock, child_sock

    def _cold_spawn(self, env: dict[str, str], child_sock: socket.socket) -> None:
        """Start a fresh interpreter on runner/child.py."""
        self.spawn_mode = "cold"
        with SPAWN_LOCK:  # registered before anyone may take it for an orphan
            self.process = subprocess.Popen(
                [self.spec.python, "-u", CHILD_PATH],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(child_sock.fileno(),),
                env=env,
                cwd=self.spec.cwd,
                start_new_session=True,  # its own process group: stop it and its children together
                close_fds=True,
            )
            STARTED.add(self.process.pid)

    def _note_started(self, pool: ZygotePool | None) -> None:
        """Record the started runner: its pid, its start time, the pool that reaps its orphans."""
        assert self.process is not None
        self.pid = self.process.pid
        with _live_lock:
            _live_runners.add(self.pid)
        ident = proctree.identity(self.pid)
        self._started_ticks = ident[1] if ident is not None else 0
        tracker = pool or self.zygotes or existing_pool()
        if tracker is not None:
            tracker.track(self.pid)  # orphans left in its session get reaped

    def _spec_message(self) -> dict[str, Any]:
        return spec_message(self.spec)

    def _emit(self, message: dict[str, Any]) -> None:
        """Hand a message (or the exit) to the node's loop; a pooled runner routes it."""
        message.pop("f", None)  # which attempt: this runner runs only the one
        self.events.put(RunnerEvent(self, message))

    # -- talk ----------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> bool:
        if self._sock is None:
            return False
        with self._send_lock:
            try:
                self._sock.sendall(protocol.encode(message))
            except OSError:
                return False
        return True

    def ping(self) -> None:
        self.send({"t": "ping"})
        self._spoke(time.monotonic())

    def _spoke(self, now: float) -> None:
        self.longest_silence = max(self.longest_silence, self.silence(now))
        self.last_ping = now

    def silence(self, now: float) -> float:
        """Seconds the node has left the child without a word (its watchdog counts these)."""
        return now - (self.last_ping or self.started_at)

    def request_abort(self) -> None:
        self.send({"t": "abort"})

    def _read_messages(self) -> None:
        assert self._sock is not None
        reader = self._sock.makefile("rb")
        try:
            while line := reader.readline(protocol.MAX_LINE + 1):
                if len(line) > protocol.MAX_LINE:
                    limit = protocol.MAX_LINE // (1024 * 1024)
                    self._violation(f"the runner sent a message over {limit} MiB")
                    return
                try:
                    message = protocol.from_runner(line)
                except UnsafeValueError as exc:
                    self._violation(str(exc))
                    return
                self.last_heard = time.monotonic()
                if message is not None:  # a broken or foreign line: ignored
                    if message["t"] in ("result", "error"):
                        self._reported = True
                    self._emit(message)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                reader.close()
            self._messages_done.set()

    def _violation(self, reason: str) -> None:
        """The runner broke the protocol: its attempt ends with this reason (never the node)."""
        error = {"t": "error", "type": "ProtocolError", "message": reason, "permanent": False}
        self._emit(error)
        self.kill()

    def _watch_exit(self) -> None:
        """Wait for the runner's exit, clean up what it left, then send the exit event."""
        assert self.process is not None
        sock = self._sock
        while True:
            try:
                code = self.process.wait(timeout=SNAPSHOT_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                self._snapshot()
        with _live_lock:
            _live_runners.discard(self.pid)
        STARTED.discard(self.pid)
        self._exited.set()
        self._messages_done.wait(0.05)  # the final message, if it is on its way
        if not (code == 0 and self._reported and not self._seen):
            self._kill_orphans()  # it may have left something: look (cheap, but not free)
        if not self._messages_done.wait(EOF_GRACE) and sock is not None:
            # Something still holds the runner's end: the exit is what counts.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._messages_done.wait(EOF_GRACE)
        self._output_done.wait(EOF_GRACE * 2)
        self._emit({"t": "exit", "code": code})

    def _snapshot(self) -> None:
        # Remembered so that orphans of a runner that dies without cleaning up
        # (os._exit, a crash, SIGKILL) are still known as this attempt's.
        for pid in proctree.descendants(self.pid):
            if pid not in self._seen:
                ident = proctree.identity(pid)
                if ident is not None:
                    self._seen[pid] = ident[1]
                    self._seen_sessions.add(ident[0])

    def _kill_orphans(self) -> None:
        """Kill the attempt's processes that the runner's exit handed to this process.

        Ours if seen below the runner (same pid and start time), or in the runner's
        session or a session seen below it; never a runner or a zygote of this node.
        A frozen node (a VM stall) may not have seen them at all: then any other child
        of this process, in a session not the node's, started since the runner did, is
        an orphan of a dead runner too (every process the node starts itself is
        registered in ``STARTED`` as it is forked).
        """
        me = os.getpid()
        sessions = self._seen_sessions | {self.pid}
        pool = self.zygotes or existing_pool()
        killed: list[int] = []
        for _ in range(20):
            with SPAWN_LOCK:
                with _live_lock:
                    spared = set(_live_runners) | STARTED
                if pool is not None:
                    spared.update(pool.pids())
                found = {
                    pid: proctree.identity(pid)
                    for pid in proctree.children(me)
                    if pid not in spared and pid not in killed
                }
            orphans = [pid for pid, ident in found.items() if self._ours(pid, ident, sessions)]
            if not orphans:
                break
            for pid in orphans:
                proctree.kill_tree(pid)
            killed.extend(orphans)
        proctree.reap(killed)

    def _ours(self, pid: int, ident: tuple[int, int] | None, sessions: set[int]) -> bool:
        if ident is None:
            return False
        session, started = ident
        adopted = session != os.getsid(0) and started >= self._started_ticks
        return self._seen.get(pid) == started or session in sessions or adopted

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream = self.process.stdout
        allowed = self.spec.limits.get("output_bytes")
        poller = select.poll()  # not select(): a busy node has descriptors over 1024
        poller.register(stream.fileno(), select.POLLIN)
        exited_at: float | None = None
        try:
            while True:
                if not poller.poll(250):
                    # A process the task left may hold the write end: stop a while
                    # after the runner exited, as its socket is stopped.
                    if self._exited.is_set():
                        exited_at = exited_at or time.monotonic()
                        if time.monotonic() - exited_at > EOF_GRACE:
                            break
                    continue
                with self._output_lock:
                    chunk = os.read(stream.fileno(), 65536)
                    if chunk:
                        self._on_output(chunk, allowed)
                if not chunk:
                    break
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()  # the read end is ours alone: never leave it to the GC
            self._output_done.set()

    def _on_output(self, chunk: bytes, allowed: int | None) -> None:
        keep_output(self, chunk, allowed)

    def output_tail(self) -> str:
        return clean_text(b"".join(self._tail)[-OUTPUT_TAIL:].decode("utf-8", "replace"))

    # -- stop ----------------------------------------------------------------
    def signal(self, signum: int) -> None:
        with self._state_lock:
            if not self._spawned:
                # Launched but not started yet: SIGKILL outranks SIGTERM.
                if self._pending_signal != signal.SIGKILL:
                    self._pending_signal = signum
                return
        if self.process is None or self.process.poll() is not None:
            return
        if signum == signal.SIGKILL:
            # Everything below the runner, whatever session it moved to, then the runner.
            # Short: the node's loop waits; the exit watcher kills any straggler.
            proctree.kill_tree(self.pid, include_root=False, deadline=0.2)
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            # Forked a moment ago, before its setsid(): no group yet, and no children.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)
        except PermissionError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class OutputKeeper(Protocol):
    """Whatever keeps one attempt's output: a Runner, or a pooled runner's attempt."""

    output_bytes: int
    output_exceeded: bool
    _tail: deque[bytes]
    _tail_size: int

    def kill(self) -> None: ...


def keep_output(owner: OutputKeeper, chunk: bytes, allowed: int | None) -> None:
    """Keep the tail of the attempt's output; kill the attempt past its output limit."""
    owner.output_bytes += len(chunk)
    if allowed is not None and owner.output_bytes > allowed and not owner.output_exceeded:
        owner.output_exceeded = True
        owner.kill()
    owner._tail.append(chunk)
    owner._tail_size += len(chunk)
    while owner._tail_size - len(owner._tail[0]) >= OUTPUT_TAIL:
        owner._tail_size -= len(owner._tail.popleft())


def spec_message(spec: RunnerSpec) -> dict[str, Any]:
    """The ``spec`` line that tells a runner which attempt to run, and how."""
    return {
        "t": "spec",
        "task_id": spec.call.task_id,
        "attempt": spec.call.attempt,
        "fence": spec.call.fence,
        "function": spec.call.function,
        "args": spec.call.args,
        "kwargs": spec.call.kwargs,
        "sys_path": spec.sys_path,
        "runtime_path": _runtime_path(),
        "heartbeat_interval": spec.heartbeat_interval,
        "watchdog_timeout": spec.watchdog_timeout,
        "limits": spec.limits,
        "run_as": spec.run_as,
        "pooled": spec.pooled,
    }


# runner/child.py's exit status when the node went silent or away (it imports nothing of
# ours). Its die() first SIGKILLs its own process group, itself included, so the status
# the node sees is usually that.
EXIT_ORPHANED = 71
ORPHANED_EXITS = frozenset({EXIT_ORPHANED, -signal.SIGKILL})


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
