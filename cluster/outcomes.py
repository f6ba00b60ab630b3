"""Outcomes: a runner's event becomes an ending, written fenced, then its claim is released.

Endings are batched: every one drained in a pass of the loop is written in one
transaction. A write the database refuses keeps its claim (releasing it would
let the leader re-run finished work) and is tried again on the next heartbeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

from taskman.cluster.attempts import (
    ActiveAttempt,
    ending_from_exit,
    ending_from_message,
    failure_ending,
)
from taskman.cluster.context import NodeContext
from taskman.cluster.releases import Releases
from taskman.errors import StoreError
from taskman.logs import scrub
from taskman.runner import ORPHANED_EXITS, RunnerEvent, describe_exit
from taskman.states import Outcome, TaskState
from taskman.store import Claim, Ending, Finish


@dataclass
class Unrecorded:
    """An ending waiting for its (batched) write."""

    claim: Claim
    record: Finish
    claimed_at: float | None = None

    @property
    def ending(self) -> Ending:
        return self.record.ending


def finish_record(claim: Claim, ending: Ending, output_tail: str | None) -> Finish:
    """The fenced write of an ending. Task code may print or raise its own secrets
    (plugin env values): they are scrubbed before they reach the table, CLI and UI."""
    scrubbed = dataclasses.replace(
        ending,
        error_message=scrub(ending.error_message),
        traceback=scrub(ending.traceback),
        task_message=scrub(ending.task_message),
    )
    return Finish(claim.task_id, claim.attempt, claim.fence, scrubbed, scrub(output_tail))


class Outcomes:
    def __init__(self, ctx: NodeContext, releases: Releases) -> None:
        self.ctx = ctx
        self.releases = releases
        self.to_record: list[Unrecorded] = []  # endings to write in the next batch
        self.unrecorded: list[Unrecorded] = []  # endings the database refused: retried

    # -- runner events ---------------------------------------------------------------
    def handle(self, event: RunnerEvent) -> None:
        active = self.ctx.active.get(event.runner.spec.call.task_id)
        if active is None or active.runner is not event.runner:
            return
        try:
            self._handle_message(active, event.message)
        except Exception as exc:  # noqa: BLE001 - task-controlled input must never stop the loop
            self._bad_message(active, event.message, exc)

    def _handle_message(self, active: ActiveAttempt, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ready":
            spawn = self.ctx.clock() - active.runner.started_at
            self.ctx.events.emit("runner.ready", spawn_seconds=spawn)
        elif kind == "progress":
            with contextlib.suppress(KeyError, TypeError, ValueError):
                active.progress = (float(message["fraction"]), str(message.get("message", "")))
        elif kind in ("result", "error"):
            if not active.reported:
                active.reported = True
                active.final = message
        elif kind == "exit":
            self._on_exit(active, message.get("code"), message.get("error"))

    def _bad_message(self, active: ActiveAttempt, message: dict[str, Any], exc: Exception) -> None:
        """A message the node could not handle ends its attempt, with the reason recorded."""
        kind = str(message.get("t"))[:20]
        self.ctx.events.emit("runner.message_failed", task_id=active.claim.task_id, kind=kind)
        reason = f"the node could not handle the runner's {kind!r} message: {type(exc).__name__}"
        active.runner.kill()
        if kind != "exit":
            if not active.reported:
                active.reported = True
                active.final = {"t": "error", "type": "ProtocolError", "message": reason}
            return
        # The exit itself failed to turn into an ending: record a crash, once.
        if self.ctx.active.get(active.claim.task_id) is active:
            del self.ctx.active[active.claim.task_id]
        if active.fenced:
            self.releases.release(active.claim.task_id, active.claim.attempt)
            return
        cap = self.ctx.config.retry_backoff_max
        ending = failure_ending(
            active.claim, Outcome.CRASHED, "ProtocolError", reason, backoff_cap=cap
        )
        self.queue(active.claim, ending, None, active.claimed_at)

    def _on_exit(self, active: ActiveAttempt, code: int | None, start_error: str | None) -> None:
        claim = active.claim
        active.runner.kill()  # the process group: stray grandchildren die with the attempt
        active.runner.close()
        del self.ctx.active[claim.task_id]
        if active.fenced:
            self.releases.release(claim.task_id, claim.attempt)
            return
        if self._orphaned_by_stall(active, code):
            active.stop_reason = Outcome.FENCED
        self.queue(
            claim,
            self._ending(active, code, start_error),
            active.runner.output_tail(),
            active.claimed_at,
        )

    def _orphaned_by_stall(self, active: ActiveAttempt, code: int | None) -> bool:
        """The node itself went quiet (a stall, a frozen VM) long enough for the runner's
        watchdog to end the attempt: the node's trouble, not the task's. Only a runner
        that did die of it: one that outlived the silence and reported its outcome has
        done the task, and that outcome stands."""
        runner = active.runner
        silence = max(runner.longest_silence, runner.silence(self.ctx.clock()))
        if (
            active.stop_reason is None
            and active.final is None
            and code in ORPHANED_EXITS
            and silence >= 0.9 * self.ctx.config.runner_watchdog
        ):
            self.ctx.events.emit(
                "task.orphaned_by_stall", task_id=active.claim.task_id, silent_for=round(silence, 2)
            )
            return True
        return False

    def _ending(self, active: ActiveAttempt, code: int | None, start_error: str | None) -> Ending:
        cap = self.ctx.config.retry_backoff_max
        if start_error is not None and active.stop_reason is None:
            return failure_ending(
                active.claim, Outcome.CRASHED, "RunnerError", start_error, backoff_cap=cap
            )
        if active.final is not None and active.stop_reason is not Outcome.FENCED:
            return ending_from_message(active, active.final, cap)
        return ending_from_exit(
            active,
            describe_exit(code),
            cap,
            code,
            limits=active.runner.spec.limits,
            output_exceeded=active.runner.output_exceeded,
        )

    # -- recording -------------------------------------------------------------------
    def queue(
        self, claim: Claim, ending: Ending, output_tail: str | None, claimed_at: float | None
    ) -> None:
        """Queue an outcome; ``record_pending`` writes every queued one in one transaction."""
        record = finish_record(claim, ending, output_tail)
        self.to_record.append(Unrecorded(claim, record, claimed_at))

    def record_pending(self) -> None:
        if not self.to_record:
            return
        batch, self.to_record = self.to_record, []
        try:
            applied = self.ctx.store.finish_many([item.record for item in batch])
        except StoreError as exc:
            # Keep the claims: releasing them would let the leader re-run finished work.
            task_ids = [i.claim.task_id for i in batch]
            self.ctx.events.emit("task.record_failed", task_ids=task_ids, error=str(exc))
            self.unrecorded.extend(batch)
            return
        now = self.ctx.clock()
        for item, ok in zip(batch, applied, strict=True):
            self._recorded(item, ok, now)
            # Queued: the next claim batch's multi drops them, or the loop's flush.
            self.releases.release(item.claim.task_id, item.claim.attempt)

    def retry_unrecorded(self) -> None:
        if self.unrecorded:
            self.to_record.extend(self.unrecorded)
            self.unrecorded = []
            self.record_pending()

    def _recorded(self, item: Unrecorded, ok: bool, now: float) -> None:
        claim, ending = item.claim, item.ending
        fields = {
            "task_id": claim.task_id,
            "attempt": claim.attempt,
            "token": claim.fence,
            "outcome": ending.outcome.value,
        }
        events = self.ctx.events
        seconds = None if item.claimed_at is None else now - item.claimed_at
        events.emit("task.recorded", plugin=claim.plugin, attempt_seconds=seconds, **fields)
        if not ok:
            events.emit("task.fenced", write="outcome", **fields)
        elif ending.state is TaskState.QUEUED:
            events.emit(
                "task.retry",
                delay=ending.retry_delay,
                error=ending.error_type,
                plugin=claim.plugin,
                counts_as_failure=ending.counts_as_failure,
                **fields,
            )
        else:
            events.emit(
                f"task.{ending.state.value}", error=ending.error_type, plugin=claim.plugin, **fields
            )
