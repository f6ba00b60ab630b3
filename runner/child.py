"""The runner child: runs one task attempt in its own process. Standard library only.

Started by the node as ``<plugin python> -u child.py`` with a socket on the fd
named by TASKMAN_RUNNER_FD. It reads the spec, imports the task's function with
the plugin's sys.path, runs it, and reports over the socket. It kills itself
(and its process group) when the node goes silent or away: a paused or dead
node must not leave work running beside the attempt that reclaims it.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import errno
import importlib
import importlib.util
import json
import os
import pwd
import queue
import resource
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any

EXIT_OK = 0
EXIT_PROTOCOL = 70  # the node sent something we could not use
EXIT_ORPHANED = 71  # the node went silent or away

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# A cold runner learns of its node's death from this signal (and from EOF on its
# socket) and cleans up; SIGKILL would leave the task's own children running.
NODE_DIED_SIGNAL = signal.SIGUSR2
MAX_RESULT = 8 * 1024 * 1024
REAP_DEADLINE = 2.0


class Channel:
    """JSON lines over the node's socket, read with our own buffer so a reader can wait
    with a timeout (one thread both listens and heartbeats)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                die("node pipe closed")

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None at EOF. Raises TimeoutError if none came in ``timeout``."""
        while b"\n" not in self.buffer:
            if timeout is not None:
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    raise TimeoutError
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        value = json.loads(line)
        return value if isinstance(value, dict) else None


def die(reason: str) -> None:
    # Every descendant first (some left our session), then our own process group.
    with contextlib.suppress(BaseException):  # the task may have closed stderr
        sys.stderr.write(f"taskman runner: exiting: {reason}\n")
        sys.stderr.flush()
    with contextlib.suppress(BaseException):  # nothing may stop the exit below
        kill_descendants()
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(EXIT_ORPHANED)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux


# Looked up once at import: a zygote's forks inherit it (0.4 ms per runner otherwise).
_prctl = _find_prctl()


def become_subreaper() -> None:
    """Orphans below us (daemons, double forks) are reparented to us, not to init, so
    kill_descendants finds every process the task started, whatever session it is in."""
    if _prctl is not None:  # else the process group kill still covers most of it
        _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants() -> list[int]:
    """Every live process below this one, parents before their children."""
    found: list[int] = []
    seen = {os.getpid()}
    frontier = [os.getpid()]
    while frontier:
        pid = frontier.pop()
        kids: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    kids.extend(int(k) for k in fh.read().split())
            except (OSError, ValueError):
                pass
        for kid in kids:
            if kid not in seen:
                seen.add(kid)
                found.append(kid)
                frontier.append(kid)
    return found


def kill_descendants() -> None:
    """SIGKILL every process the task started and reap those that became ours.

    Repeated until none is left: a process may fork while its siblings die.
    """
    try:
        os.waitpid(-1, os.WNOHANG)  # reaps one exited child, if there is one
    except ChildProcessError:
        return  # no child, so (a subreaper) nothing below us at all: the usual case, one syscall
    deadline = time.monotonic() + REAP_DEADLINE
    while True:
        pids = descendants()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        while True:  # orphans were reparented to us (a subreaper): their zombies are ours
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not pids or time.monotonic() > deadline:
            return
        time.sleep(0.005)


_parent_pid = 0  # the process this runner must not outlive (node, or zygote)


_death_signal = signal.SIGKILL


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to this process when ``parent_pid`` (the node) dies; 0: not at all
    (a runner forked by a zygote, which the node's death ends through EOF on its socket)."""
    global _parent_pid, _death_signal
    _parent_pid = parent_pid
    _death_signal = signal.Signals(signum)
    if parent_pid == 0:
        return
    if _prctl is not None:  # else the watchdog still covers a vanished node
        _prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent_pid:
        die("the node died before the runner started")


def load_runtime(path: str) -> types.ModuleType:
    """Load taskman.runtime from the node's copy, so task code can import it here."""
    spec = importlib.util.spec_from_file_location("taskman.runtime", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load taskman.runtime from {path}")
    runtime = importlib.util.module_from_spec(spec)
    package = sys.modules.get("taskman")
    if package is None:
        # A light stand-in for the package: `from taskman import runtime` works, and
        # other taskman modules still import from the node's copy if their deps exist.
        package = types.ModuleType("taskman")
        package.__path__ = [os.path.dirname(path)]
        sys.modules["taskman"] = package
    sys.modules["taskman.runtime"] = runtime
    spec.loader.exec_module(runtime)
    package.runtime = runtime  # type: ignore[attr-defined]
    return runtime


def apply_limits(limits: dict[str, int]) -> None:
    """Resource limits, set before any plugin code runs."""

    if "memory_mb" in limits:
        size = limits["memory_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if "cpu_seconds" in limits:
        # SIGXCPU at the soft limit (the default action ends the process), SIGKILL 2 s later.
        seconds = limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 2))
    if "open_files" in limits:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))


def drop_privileges(run_as: list[int] | None) -> None:
    """Become the plugin's user before any plugin code runs (the node may be root).

    Changing credentials clears the parent-death signal, so it is set again.
    """
    if run_as is None:
        return
    uid, gid = run_as

    try:
        account = pwd.getpwuid(uid)
        os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    except KeyError:
        os.environ.pop("HOME", None)
    if os.getuid() != uid or os.getgid() != gid:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        die("could not drop privileges")
    if _parent_pid:
        die_with_parent(_parent_pid, _death_signal)


def limit_exceeded(exc: BaseException, limits: dict[str, int]) -> str | None:
    """Name the limit an exception comes from, if it comes from one."""
    if isinstance(exc, MemoryError) and "memory_mb" in limits:
        return f"the task exceeded its memory limit (memory_mb = {limits['memory_mb']})"
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE and "open_files" in limits:
        return f"the task exceeded its open files limit (open_files = {limits['open_files']})"
    return None


def resolve(reference: str) -> Any:
    module_name, _, attr_path = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{reference} is not callable")
    return target


def error_message(
    exc: BaseException, *, permanent: bool, kind: str | None = None
) -> dict[str, Any]:
    # Task code chooses the exception: its __str__ (or its traceback) may raise too.
    try:
        text = str(exc)[:10_000]
    except Exception:
        text = f"<unprintable {type(exc).__qualname__}>"
    try:
        trace = "".join(traceback.format_exception(exc))[-200_000:]
    except Exception:
        trace = ""
    return {
        "t": "error",
        "type": kind
        or f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        "message": text,
        "traceback": trace,
        "permanent": permanent,
    }


class Tagged:
    """The channel as one attempt speaks on it: each message names the attempt's fence."""

    def __init__(self, channel: Channel, fence: int) -> None:
        self.channel = channel
        self.sock = channel.sock
        self.fence = fence

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send({**message, "f": self.fence})


class Turn:
    """Which attempt this runner is running now, shared by the main thread and the node's.

    A process-mode runner runs one attempt; a pooled one (spec ``pooled``) waits
    for the next spec after each and runs attempts one after another.
    """

    def __init__(self) -> None:
        self.fence: int | None = None  # the attempt running now; None between attempts
        self.specs: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

    def begin(self, spec: dict[str, Any]) -> None:
        self.fence = int(spec["fence"])

    def end(self) -> None:
        self.fence = None


def main() -> None:
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the runner's own folder is not the task's import path
    channel, spec = connect_to_node()
    runtime = load_runtime(spec["runtime_path"])
    watchdog = float(spec["watchdog_timeout"])
    turn = Turn()
    turn.begin(spec)

    def on_term(signum: int, frame: Any) -> None:
        if turn.fence is None:
            return  # between attempts: the node stops a pooled runner by closing its socket
        runtime._ctx.abort.set()
        # Raised only inside the task's function: anywhere else (importing it, reporting)
        # it would end the runner without a word. run_task checks the flag before the call.
        if _in_task:
            raise runtime.Terminated("stopped by the node")

    signal.signal(signal.SIGTERM, on_term)
    # A bare thread: threading.Thread.start() waits for the new thread to check in,
    # which on a busy machine held every runner's task back by milliseconds (and a
    # pair of context switches). Nothing waits for this one: it ends with the process.
    _thread.start_new_thread(serve_node, (channel, spec, runtime, watchdog, turn))

    limits = dict(spec.get("limits") or {})
    apply_limits(limits)
    drop_privileges(spec.get("run_as"))
    for entry in reversed(spec["sys_path"]):
        sys.path.insert(0, entry)
    next_spec: dict[str, Any] | None = spec
    while next_spec is not None:
        signal.signal(signal.SIGTERM, on_term)  # an earlier attempt's task may have changed it
        final = run_attempt(channel, next_spec, runtime, limits, turn)
        channel.send(final)
        if not spec.get("pooled"):
            return
        next_spec = turn.specs.get()


def run_attempt(
    channel: Channel,
    spec: dict[str, Any],
    runtime: types.ModuleType,
    limits: dict[str, int],
    turn: Turn,
) -> dict[str, Any]:
    """One attempt, start to its final message (tagged with its fence, as all of its own)."""
    fence = int(spec["fence"])
    send = Tagged(channel, fence).send
    runtime._ctx.pending = None
    runtime._bind(spec["task_id"], spec["attempt"], fence, send)
    send({"t": "ready", "pid": os.getpid()})
    me = os.getpid()
    final = run_task(spec, runtime, limits)
    if os.getpid() != me:
        os._exit(EXIT_OK)  # a fork of the task that returned into us: only the runner reports
    turn.end()  # from here a SIGTERM no longer stops a task: let the report out
    runtime._flush()
    # Nothing the task started outlives the attempt: the node records the outcome
    # (and frees the slot, or hands this runner the next attempt) as soon as it reads
    # this last message.
    kill_descendants()
    with contextlib.suppress(BaseException):  # the task may have closed them
        sys.stdout.flush()
        sys.stderr.flush()
    return {**final, "f": fence}


def connect_to_node() -> tuple[Channel, dict[str, Any]]:
    """Take the node's socket and read the spec, its first message; die with the node."""
    fd = int(os.environ.pop("TASKMAN_RUNNER_FD"))
    become_subreaper()
    # A handler, not SIGKILL, so the task's children die with us (die() kills them).
    signal.signal(NODE_DIED_SIGNAL, lambda *_: die("the node died"))
    die_with_parent(int(os.environ.pop("TASKMAN_NODE_PID")), NODE_DIED_SIGNAL)
    channel = Channel(socket.socket(fileno=fd))
    spec = channel.recv()
    if spec is None or spec.get("t") != "spec":
        sys.exit(EXIT_PROTOCOL)
    return channel, spec


def serve_node(
    channel: Channel,
    spec: dict[str, Any],
    runtime: types.ModuleType,
    watchdog: float,
    turn: Turn,
) -> None:
    """The node's pings, aborts and (pooled) next specs in, heartbeats out, and the watchdog.

    One thread does it all: a thread less to start in every runner. The watchdog
    counts between attempts too: the node pings its idle pooled runners, and one
    whose node went silent (frozen, cut off) must not wait for work for ever.
    """
    interval = min(float(spec["heartbeat_interval"]), watchdog / 4)
    next_beat = time.monotonic() + interval
    last_ping = time.monotonic()
    while True:
        try:
            message = channel.recv(timeout=max(0.0, next_beat - time.monotonic()))
        except TimeoutError:
            message = {}
        except (OSError, ValueError):
            message = None
        if message is None:
            if turn.fence is None and spec.get("pooled"):
                turn.specs.put(None)  # an idle pooled runner the node let go: a clean exit
                return
            die("node pipe closed")
            return
        now = time.monotonic()
        if message:
            last_ping = now
            kind = message.get("t")
            if kind == "abort" and message.get("f", turn.fence) == turn.fence:
                runtime._ctx.abort.set()
            elif kind == "spec" and turn.fence is None:
                # Begun here, not in the main thread: an abort may follow at once.
                runtime._ctx.abort.clear()
                turn.begin(message)
                turn.specs.put(message)
            elif kind == "stop":
                turn.specs.put(None)
        if now >= next_beat:
            next_beat = now + interval
            if now - last_ping > watchdog:
                die(f"no word from the node for {watchdog:.1f} s")
            runtime._flush()
            channel.send({"t": "hb"})


_in_task = False  # the task's function is running: SIGTERM raises Terminated in it


def _call(function: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The task's function, the only place a SIGTERM raises Terminated (see main's on_term)."""
    global _in_task
    _in_task = True
    try:
        return function(*args, **kwargs)
    finally:
        _in_task = False  # before any handler of what it raised runs


def run_task(
    spec: dict[str, Any], runtime: types.ModuleType, limits: dict[str, int]
) -> dict[str, Any]:
    """Run the task's function; its final message (result or error)."""
    try:
        function = resolve(spec["function"])
    except Exception as exc:  # an import failure is the plugin's, not a transient one
        return error_message(exc, permanent=True, kind="FunctionNotFound")
    try:
        if runtime._ctx.abort.is_set():  # stopped before it began: do not begin
            raise runtime.Terminated("stopped by the node before the task started")
        value = _call(function, spec["args"], spec["kwargs"])
    except runtime.Terminated as exc:
        return error_message(exc, permanent=False, kind="Terminated")
    except runtime.PermanentError as exc:
        return error_message(exc, permanent=True)
    except Exception as exc:
        reason = limit_exceeded(exc, limits)
        if reason is not None:
            return {**error_message(exc, permanent=False, kind="LimitExceeded"), "message": reason}
        return error_message(exc, permanent=False)
    except SystemExit as exc:
        return error_message(exc, permanent=False, kind="SystemExit")
    runtime._flush()
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return error_message(exc, permanent=True, kind="ResultNotSerializable")
    if len(encoded) > MAX_RESULT:
        return error_message(
            ValueError(f"result is {len(encoded)} bytes, over {MAX_RESULT}"),
            permanent=True,
            kind="ResultTooLarge",
        )
    return {"t": "result", "value": value}


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)  # do not wait for non-daemon threads the task may have left behind
