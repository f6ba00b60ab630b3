"""Recurring schedules: validation, tick computation and misfire planning. Pure logic, no I/O.

A schedule's ticks are UTC instants. A cron schedule computes them in its own
timezone with cronsim (Debian cron's rules for DST, see ``docs/schedules.md``);
an interval schedule ticks on a fixed grid of whole seconds counted from the
Unix epoch, so "every 60 s" fires on the minute on every node and after every
failover. The leader calls :func:`plan` with the database's clock; nothing
here reads a machine's clock.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskman.errors import TaskmanError, ValidationError
from taskman.validation import DEFAULT_MAX_PAYLOAD, NewTask, build_task

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
KEY_PREFIX = "schedule:"  # tasks.idempotency_key of a tick's task: schedule:<name>:<tick>
MAX_EVERY = 366 * 24 * 3600
MAX_CATCH_UP = 1000
DEFAULT_MAX_CATCH_UP = 10
DEFAULT_MISFIRE_GRACE = 60
# Missed ticks are counted one by one up to this many per pass; past it the count
# is a lower bound and the catch-up window is found by a widening search instead.
SCAN_LIMIT = 20_000
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class ScheduleNotFoundError(TaskmanError):
    """No schedule has this name."""


class ScheduleConflictError(ValidationError):
    """A schedule with this name exists with a different definition; pass replace=True to change it."""


class Misfire(str, Enum):
    """What to do with ticks that are later than ``misfire_grace`` when the leader sees them."""

    RUN_ONCE = "run_once"  # one task for all missed ticks, keyed by the first of them
    SKIP = "skip"  # no task for missed ticks
    CATCH_UP = "catch_up"  # one task for each of the most recent max_catch_up missed ticks


class Overlap(str, Enum):
    ALLOW = "allow"
    SKIP = "skip"  # no task for a tick while the schedule's previous task is queued or running


# -- timetables ----------------------------------------------------------------------
def check_cron(expr: object) -> str:
    """A 5-field cron expression (or an @alias), normalised; ValidationError says what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValidationError(f"cron expression must be a non-empty string, got {expr!r}")
    text = " ".join(expr.split())
    text = ALIASES.get(text.lower(), text)
    fields = len(text.split())
    if fields != 5:
        raise ValidationError(
            f"invalid cron expression {expr!r}: it has {fields} fields, cron needs 5 "
            "(minute hour day-of-month month day-of-week); "
            "for schedules shorter than a minute use every=<seconds>"
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValidationError(
            f"invalid cron expression {expr!r}: {exc} "
            "(fields: minute hour day-of-month month day-of-week)"
        ) from None
    return text


def check_timezone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValidationError(
            f"timezone must be an IANA name such as 'Europe/Berlin', got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown timezone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


class Timetable:
    """The ticks of one schedule: strictly increasing aware UTC instants."""

    def __init__(self, *, cron: str | None, timezone: str, every: int | None) -> None:
        self.cron = cron
        self.every = every
        self.zone = check_timezone(timezone)

    def after(self, start: datetime) -> Iterator[datetime]:
        """Ticks strictly after ``start`` (aware), in order."""
        start = start.astimezone(UTC)
        if self.every is not None:
            period = timedelta(seconds=self.every)
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            tick = epoch + ((start - epoch) // period + 1) * period
            while True:
                yield tick
                tick += period
        assert self.cron is not None
        # cronsim maps a repeated wall-clock time to its first occurrence, which can lie
        # before a start inside the repeated hour: only strictly later ticks count.
        last = start
        for local in CronSim(self.cron, start.astimezone(self.zone)):
            tick = local.astimezone(UTC)
            if tick > last:
                last = tick
                yield tick

    def next_after(self, start: datetime) -> datetime:
        try:
            return next(self.after(start))
        except StopIteration:
            raise ValidationError(f"cron expression {self.cron!r} never fires") from None


# -- planning ------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What the leader does with one due schedule in one pass."""

    fire: tuple[datetime, ...]  # ticks that get a task, oldest first
    missed: int  # ticks later than the grace period (lower bound if ``exact`` is False)
    skipped: int  # missed ticks that get no task
    next_tick: datetime  # the first tick after ``now``
    exact: bool = True


def plan(
    timetable: Timetable,
    *,
    next_tick: datetime,
    now: datetime,
    misfire: Misfire,
    max_catch_up: int,
    grace: float,
) -> Plan:
    """The ticks from ``next_tick`` (itself a tick) up to ``now`` and which of them fire.

    A tick no later than ``grace`` seconds before ``now`` is on time and always fires,
    so a leader failover shorter than the grace period loses nothing. Older ticks
    are missed and follow the misfire policy.
    """
    if next_tick > now:
        return Plan((), 0, 0, next_tick)
    cutoff = now - timedelta(seconds=grace)

    def upto(limit: datetime, start: datetime) -> Iterator[datetime]:
        # start is itself a tick: include it, then the ticks after it
        for tick in _chain(start, timetable.after(start)):
            if tick > limit:
                return
            yield tick

    # Missed ticks: [next_tick, cutoff). Keep the most recent max_catch_up of them.
    keep = max_catch_up if misfire is Misfire.CATCH_UP else 0
    recent: deque[datetime] = deque(maxlen=max(keep, 1))
    missed = 0
    exact = True
    for tick in upto(cutoff, next_tick):
        if tick == cutoff:
            break
        missed += 1
        recent.append(tick)
        if missed >= SCAN_LIMIT:
            exact = False
            break
    if not exact and keep:
        recent = _most_recent(timetable, next_tick, cutoff, keep)
    fire: list[datetime] = []
    if missed:
        if misfire is Misfire.RUN_ONCE:
            fire.append(next_tick)
        elif misfire is Misfire.CATCH_UP:
            fire.extend(list(recent)[-keep:])
    on_time_from = next_tick if next_tick >= cutoff else _first_at_or_after(timetable, cutoff)
    fire.extend(upto(now, on_time_from) if on_time_from <= now else ())
    late_fired = len([t for t in fire if t < cutoff])
    return Plan(tuple(fire), missed, missed - late_fired, timetable.next_after(now), exact)


def _chain(first: datetime, rest: Iterator[datetime]) -> Iterator[datetime]:
    yield first
    yield from rest


def _first_at_or_after(timetable: Timetable, moment: datetime) -> datetime:
    return timetable.next_after(moment - timedelta(microseconds=1))


def _most_recent(
    timetable: Timetable, first: datetime, cutoff: datetime, count: int
) -> deque[datetime]:
    """The last ``count`` ticks in [first, cutoff), found by widening a window back from cutoff."""
    span = timedelta(minutes=count + 1)  # cron ticks are at least a minute apart
    if timetable.every is not None:
        span = timedelta(seconds=timetable.every * (count + 1))
    while True:
        start = max(first, cutoff - span)
        found: deque[datetime] = deque(maxlen=count)
        for tick in timetable.after(start - timedelta(microseconds=1)):
            if tick >= cutoff:
                break
            found.append(tick)
        if len(found) >= count or start == first:
            return found
        span *= 2


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a tick's task: unique per (schedule, tick) across all leaders."""
    stamp = tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # ticks are whole seconds
    return f"{KEY_PREFIX}{name}:{stamp}"


# -- definitions ---------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule definition, as stored. Two adds with equal specs are the same add."""

    name: str
    plugin: str
    plugin_version: str | None
    function: str
    args_json: str
    kwargs_json: str
    cron: str | None
    timezone: str
    every: int | None
    priority: int
    timeout: float | None
    max_attempts: int
    retry_backoff: float | None  # None: the claiming node's default
    datacenter: str | None
    misfire: Misfire
    max_catch_up: int
    misfire_grace: int
    overlap: Overlap

    def timetable(self) -> Timetable:
        return Timetable(cron=self.cron, timezone=self.timezone, every=self.every)

    def same_as(self, other: ScheduleSpec) -> bool:
        mine, theirs = dict(self.__dict__), dict(other.__dict__)
        for spec in (mine, theirs):
            spec["args_json"] = json.loads(spec["args_json"])
            spec["kwargs_json"] = json.loads(spec["kwargs_json"])
        return mine == theirs


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def build_spec(
    name: object,
    function: object,
    *,
    plugin: object,
    cron: object = None,
    timezone: object = "UTC",
    every: object = None,
    args: Any = (),
    kwargs: Any = None,
    version: object = None,
    priority: object = 0,
    timeout: object = None,
    max_attempts: object = None,
    retry_backoff: object = None,
    datacenter: object = None,
    misfire: object = Misfire.RUN_ONCE,
    max_catch_up: object = DEFAULT_MAX_CATCH_UP,
    misfire_grace: object = DEFAULT_MISFIRE_GRACE,
    overlap: object = Overlap.ALLOW,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> ScheduleSpec:
    """Validate a schedule; every problem is a ValidationError that says what is wrong."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValidationError(
            f"invalid schedule name {name!r}: 1-200 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    # The task part is checked exactly as submit checks it.
    task = build_task(
        function,
        plugin=plugin,
        args=args,
        kwargs=kwargs,
        version=version,
        priority=priority,
        timeout=timeout,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        datacenter=datacenter,
        max_payload=max_payload,
    )
    when = _check_when(cron, timezone, every, misfire, max_catch_up, misfire_grace, overlap)
    spec = _assemble(name, task, when)
    spec.timetable().next_after(datetime(2000, 1, 1, tzinfo=UTC))  # refuses "never fires"
    return spec


class _When(NamedTuple):
    """A schedule's own fields, checked: when it fires and what it does with late ticks."""

    cron: str | None
    timezone: str
    every: int | None
    misfire: Misfire
    max_catch_up: int
    misfire_grace: int
    overlap: Overlap


def _check_when(
    cron: object,
    timezone: object,
    every: object,
    misfire: object,
    max_catch_up: object,
    misfire_grace: object,
    overlap: object,
) -> _When:
    if (cron is None) == (every is None):
        raise ValidationError("give exactly one of cron (with a timezone) or every (seconds)")
    zone = check_timezone(timezone)
    expr = None if cron is None else check_cron(cron)
    period = None if every is None else _int_in("every", every, 1, MAX_EVERY)
    if period is not None and zone.key != "UTC":
        raise ValidationError("timezone applies to cron schedules only; every counts UTC seconds")
    try:
        policy = Misfire(misfire)
    except ValueError:
        known = ", ".join(m.value for m in Misfire)
        raise ValidationError(f"unknown misfire policy {misfire!r}; known: {known}") from None
    try:
        overlapping = Overlap(overlap)
    except ValueError:
        known = ", ".join(o.value for o in Overlap)
        raise ValidationError(f"unknown overlap policy {overlap!r}; known: {known}") from None
    return _When(
        cron=expr,
        timezone=zone.key,
        every=period,
        misfire=policy,
        max_catch_up=_int_in("max_catch_up", max_catch_up, 1, MAX_CATCH_UP),
        misfire_grace=_int_in("misfire_grace", misfire_grace, 1, 7 * 24 * 3600),
        overlap=overlapping,
    )


def _assemble(name: str, task: NewTask, when: _When) -> ScheduleSpec:
    return ScheduleSpec(
        name=name,
        plugin=task.plugin,
        plugin_version=task.plugin_version,
        function=task.function,
        args_json=task.args_json,
        kwargs_json=task.kwargs_json,
        cron=when.cron,
        timezone=when.timezone,
        every=when.every,
        priority=task.priority,
        timeout=task.timeout,
        max_attempts=task.max_attempts,
        retry_backoff=task.retry_backoff,
        datacenter=task.datacenter,
        misfire=when.misfire,
        max_catch_up=when.max_catch_up,
        misfire_grace=when.misfire_grace,
        overlap=when.overlap,
    )


@dataclass(frozen=True)
class Schedule:
    """A stored schedule, as the client returns it. Times are aware UTC."""

    spec: ScheduleSpec
    paused: bool
    next_tick: datetime
    last_tick: datetime | None
    last_task_id: int | None
    ticks_fired: int
    ticks_skipped: int
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": spec.name,
            "plugin": spec.plugin,
            "version": spec.plugin_version,
            "function": spec.function,
            "args": json.loads(spec.args_json),
            "kwargs": json.loads(spec.kwargs_json),
            "cron": spec.cron,
            "timezone": spec.timezone,
            "every": spec.every,
            "priority": spec.priority,
            "timeout": spec.timeout,
            "max_attempts": spec.max_attempts,
            "retry_backoff": spec.retry_backoff,
            "datacenter": spec.datacenter,
            "misfire": spec.misfire.value,
            "max_catch_up": spec.max_catch_up,
            "misfire_grace": spec.misfire_grace,
            "overlap": spec.overlap.value,
            "paused": self.paused,
            "next_tick": self.next_tick.isoformat(),
            "last_tick": None if self.last_tick is None else self.last_tick.isoformat(),
            "last_task_id": self.last_task_id,
            "ticks_fired": self.ticks_fired,
            "ticks_skipped": self.ticks_skipped,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
