"""When the node next reads the queue.

* At once after a wake-up (wake.py): someone committed work and said so.
* At once after a full batch: more work is waiting.
* Every ``poll_interval`` while there is work it could not take yet (a poll
  found candidates, a concurrency cap is full), when its wake-ups are not armed
  (not watching, session trouble, embedded mode) or a read failed.
* Otherwise, idle with wake-ups armed: after ``idle_poll_interval``, or when the
  next queued task becomes due (retry backoff, ``not_before``) if that is
  sooner. The idle poll is the bound for work nobody signalled (a Client without
  ZooKeeper, a signal lost with a connection).

A wake-up arrives on the queue the loop already blocks on (the runner events),
so it ends the loop's wait at once without a thread of its own.
"""

from __future__ import annotations

import threading
from typing import Final, cast

from taskman import metrics
from taskman.cluster.context import NodeContext
from taskman.errors import StoreError
from taskman.runner import RunnerEvent

LOOP_TICK = 0.05  # the loop's longest wait: heartbeats, timeouts and stop requests run at its pace


class _WakeUp:
    def __repr__(self) -> str:
        return "WAKE"


# Not a runner's event: the loop recognises it by identity before handling events.
WAKE: Final = cast(RunnerEvent, _WakeUp())


class Pacer:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.next_poll = 0.0  # the first pass polls
        self.idle = False  # the last poll set the idle pace
        self._queued = threading.Event()  # a WAKE is on the queue and not yet taken

    def signal(self) -> None:
        """Any thread: work became due. One WAKE on the queue covers any number of signals."""
        if not self._queued.is_set():
            self._queued.set()
            self.ctx.runner_events.put(WAKE)

    def woken(self) -> None:
        """The loop took the WAKE: poll on this pass. A later signal queues another WAKE."""
        self._queued.clear()
        self.next_poll = float("-inf")

    def due(self, now: float) -> bool:
        return now >= self.next_poll

    def wait(self, now: float) -> float:
        """How long the loop may wait for runner events (or a WAKE) before its next pass."""
        if self.next_poll <= now:
            return LOOP_TICK
        return min(LOOP_TICK, self.next_poll - now)

    def polled(self, now: float, claimed: int, wanted: int, found: int | None) -> None:
        """Set the next poll after one that claimed ``claimed`` of ``wanted`` and read ``found``."""
        cfg = self.ctx.config
        self.idle = False
        if claimed and claimed == wanted:
            self.next_poll = now  # a full batch: more work is waiting
        elif found != 0 or not self._may_idle():
            self.next_poll = now + cfg.poll_interval
        else:
            self.idle = True
            self.next_poll = now + self._idle_wait()
        metrics.POLLS.labels("idle" if self.idle else "busy").inc()

    def _may_idle(self) -> bool:
        ctx = self.ctx
        if ctx.config.idle_poll <= ctx.config.poll_interval or not ctx.coord.wakes_armed():
            return False
        keys, pairs = ctx.coord.gate.blocked()
        return not keys and not pairs  # a full cap frees without a signal: keep looking

    def _idle_wait(self) -> float:
        cfg = self.ctx.config
        try:
            due_in = self.ctx.store.next_due_in()
        except StoreError as exc:
            self.ctx.log.warning("claim.next_due_failed", error=str(exc))
            return cfg.poll_interval
        if due_in is None:
            return cfg.idle_poll
        return min(cfg.idle_poll, due_in)
