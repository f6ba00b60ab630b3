"""The node's view of an attempt's processes: the runner and everything below it.

Task code may fork, daemonise or call setsid(), so neither a process group nor a
session holds all of an attempt's processes. The parent links in /proc do: the
runner is a child subreaper (runner/child.py), so orphans below it stay below it,
and the node is one too, so a runner's orphans come to the node when the runner
dies without cleaning up. Linux only; elsewhere these find nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from taskman.runner.zygote import _children, _subreaper

_subreaper_lock = threading.Lock()
_is_subreaper: bool | None = None


def ensure_subreaper() -> bool:
    """Make this process a child subreaper once: a dead runner's orphans become ours."""
    global _is_subreaper
    with _subreaper_lock:
        if _is_subreaper is None:
            _is_subreaper = _subreaper()
        return _is_subreaper


children = _children  # the pids whose parent is ``pid`` (from /proc)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        for kid in children(frontier.pop()):
            if kid not in seen:
                seen.add(kid)
                found.append(kid)
                frontier.append(kid)
    return found


def identity(pid: int) -> tuple[int, int] | None:
    """(session id, start time): the start time tells a reused pid from the one we saw."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[3]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_tree(pid: int, *, include_root: bool = True, deadline: float = 1.0) -> None:
    """SIGKILL everything below ``pid`` (again while new ones appear), then ``pid`` itself."""
    give_up = time.monotonic() + deadline
    while True:
        below = descendants(pid)
        for kid in below:
            with contextlib.suppress(OSError):
                os.kill(kid, signal.SIGKILL)
        # Killed ones stay listed as zombies until reaped: stop once only those are left.
        if not [k for k in below if _running(k)] or time.monotonic() > give_up:
            break
        time.sleep(0.005)
    if include_root:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def reap(pids: list[int], timeout: float = 1.0) -> None:
    """waitpid our own children among ``pids`` (killed orphans), up to ``timeout``."""
    pending = set(pids)
    give_up = time.monotonic() + timeout
    while pending:
        for pid in list(pending):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pending.discard(pid)  # not ours, or reaped by someone else
                continue
            if done == pid:
                pending.discard(pid)
        if not pending or time.monotonic() > give_up:
            return
        time.sleep(0.005)
