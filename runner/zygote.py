"""A pre-warmed fork server (zygote) per plugin version, and the node side that drives it.

Standard library only at import time: the node imports this module, and the zygote
runs this same file as a script in the plugin's interpreter (``<python> -u zygote.py``),
where taskman may not be installed; the script hands over to runner/forkserver.py, the
zygote's own side. docs/runner.md explains the design; in short:

* The node starts one zygote per plugin version (interpreter, sys.path, env, cwd,
  preload list) on first use. The zygote imports runner/child.py, the node's
  ``taskman.runtime`` and the manifest's ``preload`` modules, then waits.
* Per attempt the node sends one SOCK_SEQPACKET packet ``{"t": "fork"}`` with two
  fds (SCM_RIGHTS): the attempt's socket and the write end of its output pipe.
* The zygote forks the runner and answers with its pid. The zygote is the runner's
  parent: it reaps it (SIGCHLD wakes its loop) and sends the node
  ``{"t": "exited", "pid", "code"}``, which the node's reader thread hands to the
  waiting Runner. The runner sets no parent-death signal on the zygote, so a dying
  zygote takes no runner with it: the node is a child subreaper
  (PR_SET_CHILD_SUBREAPER), adopts the orphans and reaps them itself. The node's
  own death ends a forked runner through EOF on its socket (and its watchdog).
  (An earlier version forked through an intermediate process so that the runner
  was the node's child from the start; that second fork cost about 1.4 ms of CPU
  per task, a sixth of all the CPU a no-op task cost.)
* The runner calls setsid() (its own session and process group, as a cold start's
  ``start_new_session``), points fds 0-2 at /dev/null and the output pipe, and runs
  runner/child.py's ``main()`` unchanged: same spec, rlimits, watchdog and messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskman.runner.supervisor import RunnerSpec

ZYGOTE_PATH = str(Path(__file__).resolve())
PR_SET_CHILD_SUBREAPER = 36
PACKET = 65536
START_TIMEOUT = 30.0  # importing a heavy plugin's preload list may take a while
FORK_TIMEOUT = 5.0
RETRY_AFTER = 30.0  # after a zygote failed to start, cold-spawn this long before retrying


# -- node side --------------------------------------------------------------------------


class ZygoteUnavailableError(Exception):
    """This attempt cannot be forked: the caller cold-spawns it instead."""


class ForkedProcess:
    """A forked runner as the node sees it: enough of Popen's interface for the Runner.

    The zygote is the runner's parent: it reaps the runner and sends the node its exit
    status. If the zygote dies first, the runner is reparented to the node (a child
    subreaper), which then reaps it itself.
    """

    def __init__(self, pid: int, stdout_fd: int) -> None:
        self.pid = pid
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.returncode: int | None = None
        self._news = threading.Event()  # an exit status arrived, or the zygote is gone
        self._orphaned = False
        self._lock = threading.Lock()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._news.set()

    def _orphan(self) -> None:
        self._orphaned = True
        self._news.set()

    def poll(self) -> int | None:
        if self.returncode is None and self._orphaned and self._lock.acquire(blocking=False):
            try:
                if self.returncode is None:
                    self.returncode = _reap_orphaned_runner(self.pid, block=False)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._news.wait(timeout):
            raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0.0)
        with self._lock:
            while self.returncode is None:  # orphaned: ours to reap now
                self.returncode = _reap_orphaned_runner(self.pid, block=True)
        return self.returncode


class Zygote:
    """One zygote process and its control socket; fork requests are serialised.

    A reader thread takes the zygote's messages: replies to fork requests (in order)
    and the exit status of every runner it reaps.
    """

    def __init__(self, spec: RunnerSpec, env: dict[str, str], runtime_path: str) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zenv = dict(env)
        zenv["TASKMAN_ZYGOTE_FD"] = str(theirs.fileno())
        zenv["TASKMAN_NODE_PID"] = str(os.getpid())
        zenv["TASKMAN_ZYGOTE_CONFIG"] = json.dumps(
            {
                "sys_path": spec.sys_path,
                "preload": list(spec.preload),
                "runtime_path": runtime_path,
                "run_as": getattr(spec, "run_as", None),
            }
        )
        try:
            with SPAWN_LOCK:  # registered before anyone may take it for an orphan
                self.process = subprocess.Popen(
                    [spec.python, "-u", ZYGOTE_PATH],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=(theirs.fileno(),),
                    env=zenv,
                    cwd=spec.cwd,
                    start_new_session=True,  # a runner's killpg never reaches the zygote
                    close_fds=True,
                )
                STARTED.add(self.process.pid)
        except OSError as exc:
            self.control.close()
            raise ZygoteUnavailableError(f"cannot start {spec.python}: {exc}") from exc
        finally:
            theirs.close()
        self.lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._runners: dict[int, ForkedProcess] = {}  # forked, exit not reported yet
        self._early: dict[int, int] = {}  # exits reported before fork() registered the pid
        self._gone = False  # the control socket closed: no more exit reports
        self._state = threading.Lock()
        self.control.settimeout(START_TIMEOUT)
        try:
            hello = self._receive_one()
        except ZygoteUnavailableError:
            self.close()
            raise
        self.control.settimeout(None)
        self.pid = self.process.pid
        self.preload_errors: list[str] = list(hello.get("preload_errors") or [])
        threading.Thread(target=self._read, name=f"zygote-{self.pid}", daemon=True).start()

    def _receive_one(self) -> dict[str, Any]:
        try:
            data = self.control.recv(PACKET)
        except OSError as exc:
            raise ZygoteUnavailableError(f"zygote did not answer: {exc}") from exc
        if not data:
            raise ZygoteUnavailableError(f"zygote exited: {self._stderr_tail()}")
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ZygoteUnavailableError("zygote sent garbage")
        return value

    def _read(self) -> None:
        while True:
            try:
                message = self._receive_one()
            except (ZygoteUnavailableError, ValueError):
                break
            if message.get("t") == "exited":
                pid, code = int(message["pid"]), int(message["code"])
                with self._state:
                    runner = self._runners.pop(pid, None)
                    if runner is None:
                        self._early[pid] = code
                if runner is not None:
                    runner._exited(code)
            else:
                self._replies.put(message)
        with self._state:
            self._gone = True
            orphans, self._runners = list(self._runners.values()), {}
        for runner in orphans:
            runner._orphan()
        self._replies.put(None)

    def _register(self, runner: ForkedProcess) -> None:
        with self._state:
            code = self._early.pop(runner.pid, None)
            if code is None and not self._gone:
                self._runners[runner.pid] = runner
                return
        if code is not None:
            runner._exited(code)
        else:
            runner._orphan()

    def _stderr_tail(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read()[-2000:].decode("utf-8", "replace").strip()

    def fork(self, child_sock: socket.socket) -> ForkedProcess:
        """Fork one runner that talks over ``child_sock``; raises ZygoteUnavailableError."""
        out_r, out_w = os.pipe()
        try:
            with self.lock:
                try:
                    socket.send_fds(self.control, [b'{"t":"fork"}'], [child_sock.fileno(), out_w])
                except OSError as exc:
                    raise ZygoteUnavailableError(f"zygote gone: {exc}") from exc
                try:
                    reply = self._replies.get(timeout=FORK_TIMEOUT)
                except queue.Empty:
                    raise ZygoteUnavailableError("zygote did not answer in time") from None
                if reply is None:
                    self._replies.put(None)  # for the next caller too
                    raise ZygoteUnavailableError(f"zygote exited: {self._stderr_tail()}")
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)  # the runner holds the only write end: EOF when it exits
        if reply.get("t") != "forked" or not isinstance(reply.get("pid"), int):
            os.close(out_r)
            raise ZygoteUnavailableError(f"zygote could not fork: {reply.get('message', reply)}")
        runner = ForkedProcess(int(reply["pid"]), out_r)
        self._register(runner)
        return runner

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self._gone

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.control.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.process.poll() is not None:
            STARTED.discard(self.process.pid)
        if self.process.stderr is not None:
            self.process.stderr.close()


def _reap_orphaned_runner(pid: int, *, block: bool) -> int | None:
    """waitpid a runner whose zygote died: it is (or is about to be) our child."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            reaped, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            # Not reparented yet (the zygote is still exiting), or reaped before it died
            # and its report lost with it: the status is unknown then.
            if not block or time.monotonic() > deadline:
                return None if not block and _exists(pid) else -int(signal.SIGKILL)
            time.sleep(0.01)
            continue
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)
        return None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _subreaper() -> bool:
    """Make this process a child subreaper: orphaned runners are reparented to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class ZygotePool:
    """Zygotes keyed by plugin version; a fork that cannot happen becomes a cold spawn."""

    def __init__(self, log: Callable[..., None] | None = None) -> None:
        self.zygotes: dict[tuple[Any, ...], Zygote] = {}
        self.failed_until: dict[tuple[Any, ...], float] = {}
        self.lock = threading.Lock()
        self.sessions: deque[int] = deque(maxlen=10_000)
        self.log = log or _default_log
        self.enabled = _subreaper()
        if not self.enabled:
            self.log("zygote.disabled", reason="PR_SET_CHILD_SUBREAPER is not available")
        self._closed = threading.Event()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zygote-spawner")
        if self.enabled:
            threading.Thread(target=self._reap_orphans, name="orphan-reaper", daemon=True).start()

    @staticmethod
    def key(spec: RunnerSpec) -> tuple[Any, ...]:
        return (
            spec.python,
            tuple(spec.sys_path),
            tuple(sorted(spec.env.items())),
            spec.cwd,
            tuple(spec.preload),
            getattr(spec, "run_as", None),  # one zygote per user: it drops privileges itself
        )

    def fork(
        self, spec: RunnerSpec, env: dict[str, str], runtime_path: str, child_sock: socket.socket
    ) -> ForkedProcess:
        if not self.enabled or self._closed.is_set():
            raise ZygoteUnavailableError("zygotes are off")
        try:
            zygote = self._zygote(spec, env, runtime_path)
        except ZygoteUnavailableError:
            raise
        except Exception as exc:  # never let a zygote problem stop the node's loop
            raise ZygoteUnavailableError(f"zygote failed: {exc}") from exc
        try:
            return zygote.fork(child_sock)
        except Exception as exc:
            # Dead or wedged: drop it; this attempt cold-spawns, the next one starts a new zygote.
            self.log("zygote.lost", pid=zygote.pid, error=str(exc))
            with self.lock:
                if self.zygotes.get(self.key(spec)) is zygote:
                    del self.zygotes[self.key(spec)]
            zygote.close()
            if isinstance(exc, ZygoteUnavailableError):
                raise
            raise ZygoteUnavailableError(f"zygote failed: {exc}") from exc

    def _zygote(self, spec: RunnerSpec, env: dict[str, str], runtime_path: str) -> Zygote:
        key = self.key(spec)
        with self.lock:
            zygote = self.zygotes.get(key)
            if zygote is not None and zygote.alive:
                return zygote
            if zygote is not None:
                self.log("zygote.lost", pid=zygote.pid, error="exited")
                zygote.close()
                del self.zygotes[key]
            if time.monotonic() < self.failed_until.get(key, 0.0):
                raise ZygoteUnavailableError("zygote failed to start recently")
            try:
                # Started from the pool's own long-lived thread: a zygote's parent-death
                # signal fires when the *thread* that started it ends, and runners are
                # launched from short-lived threads.
                zygote = self._spawner.submit(Zygote, spec, env, runtime_path).result()
            except ZygoteUnavailableError as exc:
                self.failed_until[key] = time.monotonic() + RETRY_AFTER
                self.log("zygote.start_failed", python=spec.python, error=str(exc))
                raise
            if zygote.preload_errors:
                self.log("zygote.preload_failed", pid=zygote.pid, errors=zygote.preload_errors)
            self.log("zygote.started", pid=zygote.pid, python=spec.python, cwd=spec.cwd)
            self.zygotes[key] = zygote
            return zygote

    def pids(self) -> list[int]:
        """The zygotes' pids: children of the node that are never an attempt's orphans."""
        # No lock: it is held while a zygote starts (seconds). dict.copy() is atomic.
        return [zygote.pid for zygote in self.zygotes.copy().values()]

    def track(self, pid: int) -> None:
        """A runner's pid is its session id: orphans left in that session are ours to reap."""
        self.sessions.append(pid)

    def _reap_orphans(self) -> None:
        # As a subreaper we inherit every orphan below us, such as a task's leftover
        # grandchild once its runner is gone. Reap the zombies of runner sessions only:
        # other children of this process belong to whoever started them (Popen).
        me = os.getpid()
        while not self._closed.wait(1.0):
            sessions = set(self.sessions)
            for pid in _children(me):
                state, session = _state_and_session(pid)
                if state == "Z" and session in sessions and pid != session:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)

    def close(self) -> None:
        self._closed.set()
        with self.lock:
            zygotes, self.zygotes = list(self.zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()
        self._spawner.shutdown(wait=False)


# The processes this node started itself (zygotes, cold runners), each registered
# under SPAWN_LOCK in the same breath as its fork. The node is a child subreaper: a
# child of it that is in none of these (nor a live runner) is an orphan some runner left.
SPAWN_LOCK = threading.Lock()
STARTED: set[int] = set()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def _state_and_session(pid: int) -> tuple[str, int]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[3])
    except (OSError, ValueError, IndexError):
        return "?", -1


def _default_log(event: str, **fields: Any) -> None:
    import structlog

    structlog.get_logger("taskman.runner").info(event, **fields)


_shared: ZygotePool | None = None
_shared_lock = threading.Lock()


def existing_pool() -> ZygotePool | None:
    return _shared


def shared_pool() -> ZygotePool:
    """The process's pool, started on first use; its zygotes die with this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ZygotePool()
        return _shared


if __name__ == "__main__":
    # The zygote: its code is runner/forkserver.py, beside this file (which stays the
    # script the node starts, so a zygote is still "zygote.py" in ps).
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:
        sys.path.insert(0, _here)
    import forkserver  # type: ignore[import-not-found]

    forkserver.serve(PACKET)
