"""Hostile task code mixed into the soak's rounds (tests/faults/plugins/hostile).

Each task records the pids of the processes it starts. Whatever fault the round
brings, each must end terminal with its reason recorded, and none of those
processes may outlive the task's end.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskman import Client, Task, TaskState
from tests.chaos.support import pid_alive

HOSTILE_PLUGINS = Path(__file__).parents[1] / "faults" / "plugins"

# (function, takes the pid file, submit options)
KINDS: list[tuple[str, bool, dict[str, Any]]] = [
    ("fork_and_raise", True, {}),
    ("mp_fork_and_raise", True, {}),
    ("daemonise", True, {}),
    ("spawn_and_return", True, {}),
    ("setsid_escape", True, {}),
    ("spawn_and_exit", True, {}),
    ("close_all_fds", True, {}),
    ("exit_in_atexit", True, {"timeout": 3}),
    ("ignore_sigterm", True, {"timeout": 2}),
    ("return_bad_strings", False, {}),
    ("raise_bad_strings", False, {}),
    ("progress_bad_strings", False, {}),
    ("raw_messages", False, {}),
]
PLUGINS = ("hostile", "hostile-pooled")
TERMINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.ABORTED)
_TICK = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


_BOOT = _boot_time()


def started_at(pid: int) -> float | None:
    """The wall time ``pid`` started (pids are reused: only an old one is a survivor)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return _BOOT + int(fields[19]) / _TICK  # field 22: starttime, in clock ticks


@dataclass
class Hostile:
    task_id: int
    kind: str
    pid_file: Path


class HostileMix:
    """A few hostile tasks per round, submitted beside the round's demo tasks."""

    def __init__(self, base_dir: Path, name: str, rng: random.Random, count: int) -> None:
        self.tasks: list[Hostile] = []
        # Half of them in pooled runners, which must contain them just as well.
        self._plan = [(*rng.choice(KINDS), rng.choice(PLUGINS)) for _ in range(count)]
        self._dir = base_dir / f"hostile-{name}"
        self.ended: dict[int, Task] = {}

    def submit(self, client: Client) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        for i, (kind, takes_pid_file, options, plugin) in enumerate(self._plan):
            pid_file = self._dir / f"{i}-{kind}.pids"
            task_id = client.submit(
                f"hostile.tasks:{kind}",
                plugin=plugin,
                args=(str(pid_file),) if takes_pid_file else (),
                max_attempts=2,
                retry_backoff=0,
                **options,
            )
            self.tasks.append(Hostile(task_id, kind, pid_file))

    def poll(self, client: Client) -> list[str]:
        """Check each task that has ended since the last poll; return what is wrong.

        Called often: a survivor is looked for as soon as its task ends, before
        its pid can be handed to some later process.
        """
        problems: list[str] = []
        for hostile in self.tasks:
            if hostile.task_id in self.ended:
                continue
            task = client.get(hostile.task_id)
            if task.state not in TERMINAL:
                continue
            self.ended[hostile.task_id] = task
            if task.state is not TaskState.SUCCEEDED and not task.error_type:
                problems.append(f"hostile {hostile.kind} task {task.id}: ended without a reason")
            ended = task.finished_at.timestamp() if task.finished_at else time.time()
            problems += self._survivors(hostile, ended)
        return problems

    def done(self) -> bool:
        return len(self.ended) == len(self.tasks)

    def _survivors(self, hostile: Hostile, ended: float) -> list[str]:
        text = hostile.pid_file.read_text() if hostile.pid_file.exists() else ""
        pids = [int(p) for p in text.split()]
        # A moment's grace for a SIGKILL already sent to land.
        deadline = time.monotonic() + 2.0
        while True:
            alive = [p for p in pids if pid_alive(p) and (started_at(p) or ended + 1) <= ended]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not alive:
            return []
        return [f"hostile {hostile.kind} task {hostile.task_id}: processes {alive} outlived it"]
