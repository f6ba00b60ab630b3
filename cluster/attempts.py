"""What a node remembers about each attempt it runs, and how an ending maps to a task state."""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskman.plugins import Plugin
from taskman.runner import RunnerSpec
from taskman.states import Outcome, TaskState
from taskman.store import Claim, Ending
from taskman.validation import DEFAULT_RETRY_BACKOFF


class RunnerHandle(Protocol):
    """What the node's steps use of a runner (taskman.runner.Runner; fakes in tests/inprocess)."""

    spec: RunnerSpec
    started_at: float  # monotonic
    last_heard: float  # monotonic: the child's last message
    longest_silence: float  # the longest the node left it without a word
    output_exceeded: bool

    @property
    def alive(self) -> bool: ...

    def launch(self) -> None: ...

    def ping(self) -> None: ...

    def silence(self, now: float) -> float: ...

    def request_abort(self) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...

    def output_tail(self) -> str: ...


@dataclass
class ActiveAttempt:
    claim: Claim
    plugin: Plugin
    runner: RunnerHandle
    deadline: float | None  # monotonic time the task's timeout runs out
    stop_reason: Outcome | None = None  # why the node is stopping it: ABORTED, TIMEOUT, FENCED
    kill_at: float | None = None  # SIGKILL after the grace period
    reported: bool = False  # the child sent result or error, or the outcome is written
    fenced: bool = False  # a newer token owns the task: write nothing more about it
    progress: tuple[float, str] | None = None  # the newest progress not yet written
    final: dict[str, Any] | None = None  # the child's result or error message
    claimed_at: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)  # last heartbeat the DB accepted

    @property
    def key(self) -> tuple[int, int]:
        return (self.claim.task_id, self.claim.fence)


def backoff(base: float, failures: int, cap: float) -> float:
    """Exponential backoff with jitter: base * 2^(failures-1) times a factor in [0.5, 1.5], capped.

    The jitter spreads retries of tasks that failed together; the cap applies last,
    so no delay exceeds it.
    """
    if base <= 0:
        return 0.0
    delay: float = base * (2 ** min(max(0, failures - 1), 60))
    return min(cap, delay * random.uniform(0.5, 1.5))


def failure_ending(
    claim: Claim,
    outcome: Outcome,
    error_type: str,
    message: str,
    *,
    traceback: str | None = None,
    permanent: bool = False,
    backoff_cap: float = 300.0,
) -> Ending:
    """A failed attempt: retried after a backoff while attempts remain, else the task fails."""
    failures = claim.failures + 1
    if not permanent and failures < claim.max_attempts:
        return Ending(
            outcome,
            TaskState.QUEUED,
            error_type,
            message,
            traceback,
            retry_delay=backoff(
                DEFAULT_RETRY_BACKOFF if claim.retry_backoff is None else claim.retry_backoff,
                failures,
                backoff_cap,
            ),
        )
    summary = None
    if not permanent:
        summary = f"{message} (attempt {failures} of {claim.max_attempts}; no attempts left)"
    return Ending(outcome, TaskState.FAILED, error_type, message, traceback, task_message=summary)


def ending_from_message(active: ActiveAttempt, message: dict[str, Any], cap: float) -> Ending:
    """Turn the child's final report into an ending."""
    claim = active.claim
    if message["t"] == "result":
        # Even when an abort was requested, a task that finished its work succeeded.
        return Ending(
            Outcome.SUCCEEDED,
            TaskState.SUCCEEDED,
            result_json=json.dumps(message.get("value"), separators=(",", ":")),
        )
    error_type = str(message.get("type", "Error"))
    text = str(message.get("message", ""))
    tb = message.get("traceback")
    if active.stop_reason is Outcome.ABORTED:
        return Ending(
            Outcome.ABORTED,
            TaskState.ABORTED,
            "Aborted",
            "aborted on request",
            tb,
            counts_as_failure=False,
        )
    if active.stop_reason is Outcome.TIMEOUT:
        return failure_ending(
            claim, Outcome.TIMEOUT, "Timeout", _timeout_text(claim), traceback=tb, backoff_cap=cap
        )
    if error_type == "FunctionNotFound":
        return Ending(Outcome.REJECTED, TaskState.FAILED, error_type, text, tb)
    return failure_ending(
        claim,
        Outcome.ERROR,
        error_type,
        text,
        traceback=tb,
        permanent=bool(message.get("permanent")),
        backoff_cap=cap,
    )


def ending_from_exit(
    active: ActiveAttempt,
    description: str,
    cap: float,
    code: int | None = None,
    *,
    limits: dict[str, int] | None = None,
    output_exceeded: bool = False,
) -> Ending:
    """The child exited without a final report (``code`` as Popen reports it)."""
    claim = active.claim
    limits = limits or {}
    if output_exceeded:
        reason = (
            f"the task printed more than its output limit (output_bytes = {limits['output_bytes']})"
        )
        return failure_ending(claim, Outcome.CRASHED, "LimitExceeded", reason, backoff_cap=cap)
    if code == -signal.SIGXCPU and "cpu_seconds" in limits:
        reason = f"the task exceeded its CPU limit (cpu_seconds = {limits['cpu_seconds']})"
        return failure_ending(claim, Outcome.CRASHED, "LimitExceeded", reason, backoff_cap=cap)
    if active.stop_reason is Outcome.ABORTED:
        return Ending(
            Outcome.ABORTED,
            TaskState.ABORTED,
            "Aborted",
            f"aborted on request ({description})",
            counts_as_failure=False,
        )
    if active.stop_reason is Outcome.TIMEOUT:
        return failure_ending(
            claim, Outcome.TIMEOUT, "Timeout", _timeout_text(claim), backoff_cap=cap
        )
    if active.stop_reason is Outcome.FENCED:
        # The node gave the attempt up (lost contact, shutting down): not the task's fault.
        return Ending(
            Outcome.FENCED,
            TaskState.QUEUED,
            "NodeGaveUp",
            f"the node stopped the runner ({description})",
            retry_delay=0.0,
            counts_as_failure=False,
        )
    return failure_ending(
        claim,
        Outcome.CRASHED,
        "RunnerCrashed",
        f"the runner {description} before reporting a result",
        backoff_cap=cap,
    )


def _timeout_text(claim: Claim) -> str:
    return f"the task ran longer than its timeout of {claim.timeout} s"
