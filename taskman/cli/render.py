"""What `taskman wait` says about a task: pure functions from two snapshots to lines.

``changes(before, after, now)`` turns two reads of a task into one line per
thing that happened between them: a claim, the end of an attempt (failed and
retrying in N s, reclaimed, fenced, aborted), a requested abort, the end of the
task. Attempts that came and went between two reads are still told, from the
attempt rows. ``status_line`` is the one line a terminal redraws: a progress
bar with the task's progress message, or why it is still queued.
"""

from __future__ import annotations

from datetime import datetime

from taskman.models import Attempt, Task
from taskman.placement import ago, within
from taskman.states import Outcome, TaskState

SPINNER = "|/-\\"
_FAILURES = (Outcome.ERROR, Outcome.CRASHED, Outcome.TIMEOUT)  # these wait out a backoff
_ENDED = {
    Outcome.ERROR: "failed",
    Outcome.CRASHED: "crashed",
    Outcome.TIMEOUT: "timed out",
    Outcome.REJECTED: "was rejected",
    Outcome.ABORTED: "was aborted",
}


def describe(task: Task) -> str:
    version = f" {task.plugin_version}" if task.plugin_version else ""
    pin = f", datacenter {task.datacenter}" if task.datacenter else ""
    return f"{task.function} (plugin {task.plugin}{version}{pin})"


def _error(attempt: Attempt) -> str:
    if attempt.error_type is None:
        return ""
    message = (attempt.error_message or "").strip().splitlines()
    return f": {attempt.error_type}" + (f": {message[0]}" if message else "")


def claimed(attempt: Attempt) -> str:
    return (
        f"attempt {attempt.attempt} claimed by {attempt.node} ({attempt.datacenter}), "
        f"token {attempt.fence}"
    )


def ended(attempt: Attempt, task: Task, now: datetime) -> str | None:
    """How one attempt ended, and what comes next if it was the task's last one so far."""
    n, outcome = attempt.attempt, attempt.outcome
    latest = n == task.attempt
    if outcome in (Outcome.RUNNING, Outcome.SUCCEEDED):
        return None  # still running, or the task's own end says it
    if outcome in (Outcome.NODE_LOST, Outcome.HEARTBEAT_TIMEOUT):
        line = f"attempt {n} reclaimed: {attempt.error_message or outcome.value}"
    elif outcome is Outcome.FENCED:
        why = f" ({attempt.error_message})" if attempt.error_message else ""
        line = f"attempt {n} fenced: node {attempt.node} gave it up{why}"
    else:
        line = f"attempt {n} {_ENDED.get(outcome, outcome.value)}{_error(attempt)}"
    if latest and task.state is TaskState.QUEUED:
        due = task.run_after
        if due is not None and due > now and outcome in _FAILURES:
            line += f"; retrying in {within((due - now).total_seconds())}"
        else:
            line += "; back in the queue"
    return line


def finished(task: Task) -> str:
    """The task's end, in one line."""
    took = ""
    if task.created_at is not None and task.finished_at is not None:
        took = f" in {ago((task.finished_at - task.created_at).total_seconds())}"
    if task.state is TaskState.SUCCEEDED:
        plural = "s" if task.attempt != 1 else ""
        return f"succeeded{took} after {task.attempt} attempt{plural}"
    if task.state is TaskState.EXPIRED:
        return "expired: it had not started by its not_after"
    if task.state is TaskState.ABORTED:
        return "aborted" + (f": {task.error_message}" if task.error_message else "")
    return f"{task.state.value}{took}: {task.error or 'no error recorded'}"


def progress_text(task: Task) -> str:
    if task.progress is None:
        return ""
    return f"{task.progress:.0%} {task.progress_message or ''}".rstrip()


def changes(before: Task | None, after: Task, now: datetime) -> list[str]:
    """One line per thing that happened between two reads of a task (``before`` None: the first)."""
    lines: list[str] = []
    if before is None:
        lines.append(f"{describe(after)}: {after.state.value}")
        if after.state is TaskState.RUNNING and after.attempts:
            lines.append(claimed(after.attempts[-1]))
    else:
        seen = {a.attempt: a for a in before.attempts}
        for attempt in after.attempts:
            old = seen.get(attempt.attempt)
            if old is None:
                lines.append(claimed(attempt))
            if (
                old is None or old.outcome is Outcome.RUNNING
            ) and attempt.outcome is not Outcome.RUNNING:
                line = ended(attempt, after, now)
                if line:
                    lines.append(line)
        if after.abort_requested and not before.abort_requested and not after.state.terminal:
            lines.append("abort requested: its node is stopping it")
    if after.state.terminal and (before is None or not before.state.terminal):
        lines.append(finished(after))
    return lines


def bar(fraction: float | None, width: int, tick: int = 0) -> str:
    """``[#####.....]`` of ``width`` cells inside the brackets; unknown progress bounces."""
    width = max(1, width)
    if fraction is None:
        cells = ["."] * width
        span = max(1, width - 3)
        step = tick % (2 * span)
        start = step if step < span else 2 * span - step
        for i in range(start, min(width, start + 3)):
            cells[i] = "="
        return "[" + "".join(cells) + "]"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_line(
    task: Task, *, width: int, elapsed: float, reasons: list[str], tick: int = 0
) -> str:
    """The line a terminal redraws in place: at most ``width - 1`` characters."""
    clock = ago(elapsed)
    if task.state is TaskState.RUNNING:
        head = f"task {task.id} running "
        where = f"attempt {task.attempt} on {task.owner or '?'}"
        pct = "" if task.progress is None else f" {task.progress:.0%}"
        message = f" {task.progress_message}" if task.progress_message else ""
        tail = f"{pct}{message}  {where}  {clock}"
        room = width - 1 - len(head) - len(tail)
        bar_width = max(5, min(30, room - 2))
        line = head + bar(task.progress, bar_width, tick) + tail
    elif task.state is TaskState.QUEUED:
        spin = SPINNER[tick % len(SPINNER)]
        why = reasons[0] if reasons else "waiting for a node to claim it"
        more = f" (+{len(reasons) - 1})" if len(reasons) > 1 else ""
        line = f"task {task.id} queued {spin} {why}{more}  {clock}"
    else:
        line = f"task {task.id} {finished(task)}"
    return clip(line, width - 1)


def clip(line: str, width: int) -> str:
    if width <= 0:
        return ""
    return line if len(line) <= width else line[: max(0, width - 1)] + "~"
