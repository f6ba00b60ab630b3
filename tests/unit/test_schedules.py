"""Schedules as pure logic: validation, ticks (with DST), misfire planning."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskman.errors import ValidationError
from taskman.schedules import (
    SCAN_LIMIT,
    Misfire,
    Overlap,
    Plan,
    ScheduleSpec,
    Timetable,
    build_spec,
    check_cron,
    check_timezone,
    plan,
    tick_key,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def ticks(timetable: Timetable, start: datetime, count: int) -> list[datetime]:
    it = timetable.after(start)
    return [next(it) for _ in range(count)]


def spec(**overrides: Any) -> ScheduleSpec:
    values: dict[str, Any] = {"plugin": "demo", "cron": "*/5 * * * *", **overrides}
    return build_spec("nightly", "demo.tasks:add", **values)


# -- validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * 32 * *", "Bad day-of-month"),
        ("* * * 13 *", "Bad month"),
        ("* * * * MONDAY", "Bad day-of-week"),
        ("*/0 * * * *", "Bad minute"),
        ("0 0 30 2 *", "Bad day-of-month"),  # February 30th never comes
        ("* * * *", "it has 4 fields, cron needs 5"),
        ("0 * * * * *", "it has 6 fields, cron needs 5"),
        ("", "non-empty string"),
        ("@fortnightly", "it has 1 fields"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        check_cron(expr)
    assert repr(expr) in str(info.value) or not expr


def test_six_fields_point_to_every() -> None:
    with pytest.raises(ValidationError, match="every=<seconds>"):
        check_cron("*/10 * * * * *")


def test_cron_is_normalised_and_aliases_expand() -> None:
    assert check_cron("  30   2 * *  mon-fri ") == "30 2 * * mon-fri"
    assert check_cron("@daily") == "0 0 * * *"
    assert check_cron("@HOURLY") == "0 * * * *"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/berlin "])
def test_unknown_timezones_are_refused_clearly(name: str) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        check_timezone(name)


def test_known_timezone() -> None:
    assert check_timezone("Europe/Berlin").key == "Europe/Berlin"


def test_spec_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of cron"):
        spec(cron=None)
    with pytest.raises(ValidationError, match="exactly one of cron"):
        spec(every=10)
    with pytest.raises(ValidationError, match="every counts UTC seconds"):
        spec(cron=None, every=10, timezone="Europe/Berlin")
    with pytest.raises(ValidationError, match="every must be an integer"):
        spec(cron=None, every=0)
    with pytest.raises(ValidationError, match="every must be an integer"):
        spec(cron=None, every=1.5)
    with pytest.raises(ValidationError, match="unknown misfire policy 'later'"):
        spec(misfire="later")
    with pytest.raises(ValidationError, match="unknown overlap policy"):
        spec(overlap="queue")
    with pytest.raises(ValidationError, match="max_catch_up"):
        spec(misfire="catch_up", max_catch_up=0)
    with pytest.raises(ValidationError, match="misfire_grace"):
        spec(misfire_grace=0)
    with pytest.raises(ValidationError, match="unknown timezone 'Nowhere/Land'"):
        spec(timezone="Nowhere/Land")
    with pytest.raises(ValidationError, match="malformed function reference"):
        build_spec("x", "not a function", plugin="demo", every=5)
    with pytest.raises(ValidationError, match="invalid schedule name"):
        build_spec("has space", "demo.tasks:add", plugin="demo", every=5)
    with pytest.raises(ValidationError, match="invalid schedule name"):
        build_spec("x" * 201, "demo.tasks:add", plugin="demo", every=5)
    with pytest.raises(ValidationError, match="JSON"):
        spec(args=[object()])
    ok = spec(misfire="catch_up", max_catch_up=3, overlap="skip", timezone="Europe/Berlin")
    assert ok.misfire is Misfire.CATCH_UP and ok.overlap is Overlap.SKIP
    assert ok.timezone == "Europe/Berlin" and ok.max_catch_up == 3


def test_same_definition_compares_json_not_text() -> None:
    one = spec(args=[1, {"a": 1, "b": 2}])
    assert one.same_as(spec(args=(1, {"b": 2, "a": 1})))
    assert not one.same_as(spec(args=[1, {"a": 1, "b": 3}]))
    assert not one.same_as(spec(args=[1, {"a": 1, "b": 2}], priority=5))
    assert not one.same_as(spec(args=[1, {"a": 1, "b": 2}], timezone="Europe/Berlin"))


def test_tick_key_is_per_schedule_and_tick() -> None:
    tick = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert tick_key("nightly", tick) == "schedule:nightly:2026-03-29T01:00:00Z"
    assert len(tick_key("x" * 200, tick)) <= 255  # fits tasks.idempotency_key


# -- ticks ------------------------------------------------------------------------
def test_interval_ticks_are_epoch_aligned_and_strictly_after() -> None:
    every = Timetable(cron=None, timezone="UTC", every=60)
    assert ticks(every, utc(2026, 1, 1, 10, 0, 0), 2) == [
        utc(2026, 1, 1, 10, 1),
        utc(2026, 1, 1, 10, 2),
    ]
    assert every.next_after(utc(2026, 1, 1, 10, 0, 59)) == utc(2026, 1, 1, 10, 1)
    seven = Timetable(cron=None, timezone="UTC", every=7)
    first = seven.next_after(utc(2026, 1, 1))
    assert int(first.timestamp()) % 7 == 0 and first > utc(2026, 1, 1)


def test_cron_in_a_timezone() -> None:
    daily = Timetable(cron="30 2 * * *", timezone="Europe/Berlin", every=None)
    # Winter: CET is UTC+1.
    assert daily.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 1, 30)
    # Summer: CEST is UTC+2.
    assert daily.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 0, 30)


def test_dst_spring_forward_runs_a_missing_time_once_right_after_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    daily = Timetable(cron="30 2 * * *", timezone="Europe/Berlin", every=None)
    got = ticks(daily, utc(2026, 3, 27, 12), 4)
    assert [t.astimezone(BERLIN).strftime("%d %H:%M %Z") for t in got] == [
        "28 02:30 CET",
        "29 03:00 CEST",  # once, at the first instant after the gap
        "30 02:30 CEST",
        "31 02:30 CEST",
    ]


def test_dst_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    daily = Timetable(cron="30 2 * * *", timezone="Europe/Berlin", every=None)
    got = ticks(daily, utc(2026, 10, 23, 12), 3)
    assert got == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # Starting inside the second 02:xx hour never yields the first 02:30 again.
    second_hour = datetime(2026, 10, 25, 2, 10, tzinfo=BERLIN, fold=1)
    assert second_hour.utcoffset() == timedelta(hours=1)
    assert daily.next_after(second_hour) == utc(2026, 10, 26, 1, 30)


def test_dst_wildcard_hours_follow_elapsed_time() -> None:
    half_hourly = Timetable(cron="*/30 * * * *", timezone="Europe/Berlin", every=None)
    fall = ticks(half_hourly, utc(2026, 10, 24, 23, 0), 6)
    # Both copies of 02:00 and 02:30 run: steady 30-minute steps in real time.
    assert [b - a for a, b in itertools.pairwise(fall)] == [timedelta(minutes=30)] * 5
    local = [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in fall]
    assert local == [
        "01:30 CEST",
        "02:00 CEST",
        "02:30 CEST",
        "02:00 CET",
        "02:30 CET",
        "03:00 CET",
    ]
    spring = ticks(half_hourly, utc(2026, 3, 29, 0, 0), 3)
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in spring] == ["01:30", "03:00", "03:30"]


# -- planning ---------------------------------------------------------------------
EVERY_MINUTE = Timetable(cron="* * * * *", timezone="UTC", every=None)


def make_plan(
    next_tick: datetime, now: datetime, misfire: Misfire, n: int = 3, grace: float = 60
) -> Plan:
    return plan(
        EVERY_MINUTE,
        next_tick=next_tick,
        now=now,
        misfire=misfire,
        max_catch_up=n,
        grace=grace,
    )


def test_nothing_is_due_before_the_tick() -> None:
    p = make_plan(utc(2026, 1, 1, 10, 5), utc(2026, 1, 1, 10, 4, 59), Misfire.SKIP)
    assert p.fire == () and p.next_tick == utc(2026, 1, 1, 10, 5) and p.skipped == 0


def test_an_on_time_tick_fires_and_the_next_is_after_now() -> None:
    p = make_plan(utc(2026, 1, 1, 10, 5), utc(2026, 1, 1, 10, 5, 0, 400000), Misfire.SKIP)
    assert p.fire == (utc(2026, 1, 1, 10, 5),)
    assert p.next_tick == utc(2026, 1, 1, 10, 6) and p.missed == 0


def test_late_ticks_within_the_grace_all_fire_whatever_the_policy() -> None:
    # A leader failover of 3 minutes with a 5-minute grace loses nothing.
    for policy in Misfire:
        p = make_plan(utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 3, 30), policy, grace=300)
        assert p.fire == tuple(utc(2026, 1, 1, 10, m) for m in range(4)), policy
        assert p.missed == p.skipped == 0


def test_misfire_policies() -> None:
    start, now = utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 10, 30)
    # grace 60 s: 10:10 is on time (30 s late); 10:00-10:09 missed (10 ticks).
    on_time = (utc(2026, 1, 1, 10, 10),)
    skip = make_plan(start, now, Misfire.SKIP)
    assert skip.fire == on_time and skip.missed == 10 and skip.skipped == 10
    once = make_plan(start, now, Misfire.RUN_ONCE)
    assert once.fire == (start, *on_time) and once.skipped == 9
    catch = make_plan(start, now, Misfire.CATCH_UP, n=3)
    assert catch.fire == (*(utc(2026, 1, 1, 10, m) for m in (7, 8, 9)), *on_time)
    assert catch.skipped == 7
    everything = make_plan(start, now, Misfire.CATCH_UP, n=100)
    assert everything.fire == tuple(utc(2026, 1, 1, 10, m) for m in range(11))
    for p in (skip, once, catch, everything):
        assert p.next_tick == utc(2026, 1, 1, 10, 11) and p.exact


def test_a_tick_exactly_at_the_grace_limit_is_on_time() -> None:
    p = make_plan(utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 1), Misfire.SKIP, grace=60)
    assert p.fire == (utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 1)) and p.missed == 0


def test_a_huge_gap_is_bounded_and_still_catches_up_the_most_recent() -> None:
    every_second = Timetable(cron=None, timezone="UTC", every=1)
    start = utc(2026, 1, 1)
    now = start + timedelta(days=3, seconds=0.5)  # 259,200 missed ticks
    p = plan(
        every_second, next_tick=start, now=now, misfire=Misfire.CATCH_UP, max_catch_up=5, grace=2
    )
    assert not p.exact and p.missed == SCAN_LIMIT
    last_missed = now - timedelta(seconds=2.5)  # the last tick before now - grace
    assert p.fire[:5] == tuple(last_missed - timedelta(seconds=4 - i) for i in range(5))
    assert p.fire[5:] == (now - timedelta(seconds=1.5), now - timedelta(seconds=0.5))
    assert p.next_tick == now + timedelta(seconds=0.5)
    daily = Timetable(cron="0 9 * * *", timezone="Europe/Berlin", every=None)
    years = plan(
        daily,
        next_tick=utc(1990, 1, 1, 8),
        now=utc(2026, 6, 1, 12),
        misfire=Misfire.CATCH_UP,
        max_catch_up=2,
        grace=60,
    )
    assert years.fire == (utc(2026, 5, 31, 7), utc(2026, 6, 1, 7))
