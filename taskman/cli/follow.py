"""`taskman wait` and `submit --wait`: follow a task until it ends, saying what happens.

Everything comes from the database, as the thin client sees it: the task row
and its attempts every ``poll`` seconds, and while it is queued, why
(``Client.why_queued``) every ``REASONS_EVERY`` seconds. The output goes to
stderr, so stdout keeps only the final result (``--json`` stays parseable):

* on a terminal, one status line redrawn in place (a progress bar with the
  task's message, or why it is still queued), with each change printed above it;
* otherwise, plain lines, one per change (progress included).

Ctrl-C stops the waiting, never the task, and says how to abort it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

from taskman.cli.render import changes, progress_text, status_line
from taskman.client import Client
from taskman.errors import WaitTimeoutError
from taskman.models import Task
from taskman.states import TaskState

TERMINAL_POLL = 0.5  # seconds between reads while a terminal shows the live line
PLAIN_POLL = 1.0  # without a terminal: at most one progress line a second
REASONS_EVERY = 2.0  # seconds between "why is it still queued" reads
IDLE_NOTE_AFTER = 5.0  # due, nothing in its way, yet unclaimed this long: say so


class Interrupted(Exception):  # noqa: N818 - the user's Ctrl-C, not an error of ours
    """Ctrl-C while following: the task goes on; ``state`` is the last one seen (None: none)."""

    def __init__(self, task_id: int, state: TaskState | None) -> None:
        super().__init__(f"stopped waiting for task {task_id}")
        self.task_id = task_id
        self.state = state


def _shape(reasons: list[str]) -> list[str]:
    """Reasons without their numbers: "last seen 12 s ago" becoming "14 s" is no news."""
    return [re.sub(r"\d+", "#", reason) for reason in reasons]


def is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


@dataclass
class Follower:
    client: Client
    out: TextIO
    live: bool  # redraw a status line in place (a terminal), else plain lines
    poll: float = 0.0  # 0: the mode's default
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _line_shown: bool = field(default=False, init=False)
    _tick: int = field(default=0, init=False)

    def follow(self, task_id: int, timeout: float | None = None) -> Task:
        """Return the task once it is terminal; WaitTimeoutError after ``timeout`` s.

        Raises Interrupted on Ctrl-C, having cleared the live line.
        """
        poll = self.poll or (TERMINAL_POLL if self.live else PLAIN_POLL)
        start = self.clock()
        deadline = None if timeout is None else start + timeout
        before: Task | None = None
        reasons: list[str] = []
        next_reasons = 0.0
        shown_progress = ""
        task: Task | None = None
        try:
            # Task times are the database's: read its clock once, then count on ours.
            base = self.client.now()
            while True:
                task = self.client.get(task_id)
                now = base + timedelta(seconds=self.clock() - start)
                for line in changes(before, task, now):
                    self._say(f"task {task_id}: {line}")
                if not self.live and task.state is TaskState.RUNNING:
                    text = progress_text(task)
                    if text and text != shown_progress:
                        self._say(f"task {task_id}: progress {text}")
                    shown_progress = text
                if before is not None and before.state is not task.state:
                    # Just back in the queue: the line above said why (a retry, a reclaim).
                    next_reasons = self.clock() + REASONS_EVERY
                if task.state is TaskState.QUEUED and self.clock() >= next_reasons:
                    next_reasons = self.clock() + REASONS_EVERY
                    found = self._reasons(task, queued_for=self._queued_for(task, now))
                    if found and _shape(found) != _shape(reasons):
                        self._say(f"task {task_id}: still queued: " + "; ".join(found))
                    reasons = found
                elif task.state is not TaskState.QUEUED:
                    reasons = []
                if task.state.terminal:
                    self._clear()
                    return task
                self._draw(task, self.clock() - start, reasons)
                if deadline is not None and self.clock() >= deadline:
                    self._clear()
                    raise WaitTimeoutError(
                        f"task {task_id} is still {task.state.value} after {timeout} s"
                    )
                before = task
                self.sleep(poll)
        except KeyboardInterrupt:
            self._clear()
            raise Interrupted(task_id, None if task is None else task.state) from None

    def _reasons(self, task: Task, queued_for: float) -> list[str]:
        found = self.client.why_queued(task)
        if not found and queued_for >= IDLE_NOTE_AFTER:
            found = ["due, but unclaimed: the nodes that serve it may all be busy"]
        return found

    @staticmethod
    def _queued_for(task: Task, now: datetime) -> float:
        due = task.run_after or task.created_at
        return 0.0 if due is None else max(0.0, (now - due).total_seconds())

    # -- output ------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        self._clear()
        self.out.write(line + "\n")
        self.out.flush()

    def _draw(self, task: Task, elapsed: float, reasons: list[str]) -> None:
        if not self.live:
            return
        self._tick += 1
        width = shutil.get_terminal_size((80, 24)).columns
        line = status_line(task, width=width, elapsed=elapsed, reasons=reasons, tick=self._tick)
        self.out.write("\r\033[K" + line)
        self.out.flush()
        self._line_shown = True

    def _clear(self) -> None:
        if self._line_shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._line_shown = False
