"""The leader's schedule duty: turn due ticks into tasks, one task per tick.

Only the elected leader runs it, on every pass of Node._lead. What is due is
decided by the database's clock. Each schedule is fired in its own transaction
(see ``ScheduleStore.fire``): guarded by the leader's epoch, optimistic on the
schedule's next tick, and keyed per tick so a stale leader and a new one can
never both create a task for the same tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from taskman import metrics
from taskman.cluster.reaper import ROLE
from taskman.errors import FencedError, TaskmanError
from taskman.store.schedules import ScheduleStore

log = structlog.get_logger("taskman.cluster")
BATCH = 100  # schedules per pass; the rest wait for the next pass, half a second later


@dataclass
class TickReport:
    tasks: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    fenced: bool = False


class Ticker:
    def __init__(self, store: ScheduleStore, *, batch: int = BATCH) -> None:
        self.store = store
        self.batch = batch

    def run(self, epoch: int) -> TickReport:
        """One pass. Database errors are logged, not raised: a broken schedule must not stop the reaper."""
        report = TickReport()
        try:
            names = self.store.due(self.batch)
        except TaskmanError as exc:
            log.warning("schedule.due_failed", error=str(exc))
            report.failed.append("*")
            return report
        for name in names:
            try:
                fired = self.store.fire(name, role=ROLE, epoch=epoch)
            except FencedError as exc:
                # A newer leader exists; it fires these ticks. Stop until the election says so.
                log.warning("schedule.superseded", schedule=name, epoch=epoch, error=str(exc))
                report.fenced = True
                return report
            except TaskmanError as exc:
                log.warning("schedule.fire_failed", schedule=name, error=str(exc))
                report.failed.append(name)
                continue
            if fired is None:
                continue
            report.tasks += len(fired.task_ids)
            report.skipped += fired.skipped
            if fired.task_ids or fired.existing:
                log.info(
                    "schedule.fired",
                    schedule=name,
                    task_ids=list(fired.task_ids),
                    ticks=[t.isoformat() for t in fired.ticks],
                    existing=fired.existing,
                    next_tick=fired.next_tick.isoformat(),
                )
            if fired.missed:
                metrics.SCHEDULE_TICKS_MISSED.inc(fired.missed)
            if fired.missed or fired.overlap_skipped:
                log.warning(
                    "schedule.misfired" if fired.missed else "schedule.overlap_skipped",
                    schedule=name,
                    missed=fired.missed if fired.exact else f">={fired.missed}",
                    skipped=fired.skipped,
                    overlap_skipped=fired.overlap_skipped,
                )
        return report
