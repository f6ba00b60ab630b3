"""The zygote process: import a plugin version once, then fork a runner per request.

Runs in the plugin's interpreter, standard library only. The node starts it as
``<python> -u runner/zygote.py``, whose ``__main__`` hands over to ``serve()`` here;
runner/zygote.py is the node's side and describes the protocol (docs/runner.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import Any


def serve(packet: int) -> None:  # pragma: no cover - runs in the zygote process
    """Preload, report ready, then answer fork requests until the node goes away.

    ``packet``: the largest control message (runner/zygote.py's PACKET).
    """
    child = _import_child()
    control_fd = int(os.environ.pop("TASKMAN_ZYGOTE_FD"))
    node_pid = int(os.environ["TASKMAN_NODE_PID"])
    config = json.loads(os.environ.pop("TASKMAN_ZYGOTE_CONFIG"))
    child.die_with_parent(node_pid)  # the zygote dies with the node
    control = socket.socket(fileno=control_fd)
    errors = _preload(child, config)
    import gc

    gc.freeze()  # what is loaded now stays shared with every fork: no copy-on-write by the GC
    wake = _wake_on_sigchld()
    control.send(json.dumps({"t": "ready", "pid": os.getpid(), "preload_errors": errors}).encode())
    sys.stdout.flush()
    sys.stderr.flush()
    control_fd = control.fileno()
    wake_r = wake[0]
    while True:
        try:
            ready, _, _ = select.select([control_fd, wake_r], [], [])
        except OSError:
            os._exit(0)
        if wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(wake_r, 4096)
            _report_exits(control)
        if control_fd in ready and not _serve_fork(control, wake, packet):
            os._exit(0)  # the node closed its end: it is gone or done with us


def _import_child() -> Any:  # pragma: no cover
    """runner/child.py, beside this file, without leaving its folder on sys.path."""
    runner_dir = os.path.dirname(os.path.abspath(__file__))
    if runner_dir not in sys.path:
        sys.path.insert(0, runner_dir)
    import child  # type: ignore[import-not-found]  # runner/child.py, beside this file

    # As in a cold child, the runner's folder is not on the task's import path.
    with contextlib.suppress(ValueError):
        sys.path.remove(runner_dir)
    return child


def _preload(child: Any, config: dict[str, Any]) -> list[str]:  # pragma: no cover
    """Import once what a cold child would import first; the errors of the preload list."""
    # The runtime, then the plugin's preload list. The forked child must reuse this
    # very runtime module, or plugin modules imported here would hold a runtime that
    # is never bound.
    runtime = child.load_runtime(config["runtime_path"])

    def preloaded_runtime(path: str) -> Any:
        return runtime if path == config["runtime_path"] else original_load(path)

    original_load = child.load_runtime
    child.load_runtime = preloaded_runtime
    # Plugin code (the preload list) must never run with the node's privileges: the
    # zygote becomes the plugin's user first, so its forks already are.
    drop = getattr(child, "drop_privileges", None)
    if drop is not None and config.get("run_as") is not None:
        drop(config["run_as"])
    errors = []
    if config["preload"]:
        sys.path[0:0] = config["sys_path"]  # in front, as the child puts them
        for module in config["preload"]:
            try:
                __import__(module)
            except BaseException as exc:  # noqa: BLE001 - a broken plugin still gets a cold-like child
                errors.append(f"{module}: {type(exc).__name__}: {exc}")
    return errors


def _wake_on_sigchld() -> tuple[int, int]:  # pragma: no cover
    """A wake-up pipe that SIGCHLD writes to (closed again in every runner)."""
    # Runners are our children: SIGCHLD wakes the loop, which reaps them and tells the
    # node each exit status.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wake_r, wake_w


def _report_exits(control: socket.socket) -> None:  # pragma: no cover
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        message = {"t": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)}
        with contextlib.suppress(OSError):
            control.send(json.dumps(message).encode())


def _serve_fork(
    control: socket.socket, wake: tuple[int, int], packet: int
) -> bool:  # pragma: no cover
    """Answer one fork request; False when the node has gone."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(control, packet, 2)
    except OSError:
        return False
    if not data:
        return False
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        control.send(b'{"t":"error","message":"expected two fds"}')
        return True
    try:
        pid = os.fork()
        if pid == 0:
            _become_runner(control, fds[0], fds[1], wake)
        reply: dict[str, Any] = {"t": "forked", "pid": pid}
    except OSError as exc:
        reply = {"t": "error", "message": str(exc)}
    finally:
        for fd in fds:
            os.close(fd)
    control.send(json.dumps(reply).encode())
    return True


def _become_runner(
    control: socket.socket, sock_fd: int, out_fd: int, wake: tuple[int, int]
) -> None:  # pragma: no cover
    code = 1
    try:
        control.close()  # only the zygote talks to the node on the control socket
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the task's own children are its own
        for fd in wake:
            os.close(fd)
        os.setsid()  # own session and process group: the node stops it with killpg
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(null)
        os.close(out_fd)
        os.environ["TASKMAN_RUNNER_FD"] = str(sock_fd)
        # No parent-death signal on the zygote: a zygote that dies must not take its
        # runners along. The node's death still ends them at once (EOF on their socket).
        os.environ["TASKMAN_NODE_PID"] = "0"
        import child

        child.main()
        code = child.EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it on the captured output, never return to the loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never back into the zygote's loop; skip non-daemon task threads
