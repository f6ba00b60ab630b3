"""Where a task can run, from what nodes publish: submit-time refusals and queued reasons."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskman.errors import UnservedError, ValidationError
from taskman.placement import (
    LIVE_WITHIN,
    Cap,
    Served,
    ago,
    cap_for_function,
    cap_of,
    function_allowed,
    queued_reasons,
    unserved,
)
from taskman.states import Outcome
from tests.unit.task_factory import NOW, make_attempt, make_task

DEMO = Served("dc1-node1", "dc1", "demo", "1.0", ("demo.tasks:*",), {"demo.tasks:settle": 2})
GREETER_1 = Served("dc1-node1", "dc1", "greeter", "1.0")
GREETER_2 = Served("dc2-node1", "dc2", "greeter", "2.0")
CLUSTER = [DEMO, GREETER_1, GREETER_2]


def check(
    rows: list[Served],
    plugin: str = "demo",
    function: str = "demo.tasks:add",
    version: str | None = None,
    datacenter: str | None = None,
) -> tuple[str, str] | None:
    return unserved(rows, plugin=plugin, version=version, datacenter=datacenter, function=function)


def test_an_empty_cluster_refuses_nothing() -> None:
    assert check([], plugin="anything", version="9.9", datacenter="nowhere") is None


@pytest.mark.parametrize(
    ("request_", "missing", "served"),
    [
        (
            {"plugin": "demoo"},
            "no node has ever served plugin 'demoo'",
            "plugins demo 1.0; greeter 1.0, 2.0",
        ),
        (
            {"plugin": "greeter", "function": "greeter:greet", "version": "3.0"},
            "no node has ever served plugin 'greeter' version 3.0",
            "plugin greeter 1.0, 2.0",
        ),
        (
            {"datacenter": "dc9"},
            "no node has ever run in datacenter 'dc9'",
            "datacenters dc1, dc2",
        ),
        (
            {"datacenter": "dc2"},
            "no node in datacenter 'dc2' has ever served plugin 'demo'",
            "plugin 'demo' in datacenters dc1",
        ),
        (
            {
                "plugin": "greeter",
                "function": "greeter:greet",
                "version": "1.0",
                "datacenter": "dc2",
            },
            "no node in datacenter 'dc2' has ever served plugin 'greeter' version 1.0",
            "plugin 'greeter' version 1.0 in datacenters dc1",
        ),
        (
            {"function": "os:getcwd"},
            "plugin 'demo' does not allow os:getcwd",
            "functions demo.tasks:*",
        ),
    ],
)
def test_what_no_node_ever_served_is_named_with_what_is(
    request_: dict[str, str], missing: str, served: str
) -> None:
    assert check(CLUSTER, **request_) == (missing, served)


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"plugin": "greeter", "function": "greeter:greet"},
        {"plugin": "greeter", "function": "greeter:greet", "version": "2.0", "datacenter": "dc2"},
        {"plugin": "greeter", "function": "anything.at:all"},  # no allowlist: any function
        {"datacenter": "dc1"},
    ],
)
def test_what_some_node_served_passes(request_: dict[str, str]) -> None:
    assert check(CLUSTER, **request_) is None


def test_ever_served_counts_rows_however_old() -> None:
    stale = Served("gone", "dc3", "legacy", "0.9", age=90 * 86_400.0)
    assert check([*CLUSTER, stale], plugin="legacy", function="x:y", datacenter="dc3") is None


def test_an_unpinned_version_passes_if_any_version_allows_the_function() -> None:
    old = Served("n1", "dc1", "p", "1.0", ("p.old:*",))
    new = Served("n1", "dc1", "p", "2.0", ("p.new:*",))
    assert check([old, new], plugin="p", function="p.old:f") is None
    assert check([old, new], plugin="p", function="p.old:f", version="2.0") == (
        "plugin 'p' version 2.0 does not allow p.old:f",
        "functions p.new:*",
    )


def test_the_error_names_both_and_the_way_to_queue_anyway() -> None:
    problem = check(CLUSTER, plugin="demoo")
    assert problem is not None
    error = UnservedError(*problem)
    assert isinstance(error, ValidationError)
    assert error.missing == "no node has ever served plugin 'demoo'"
    assert "demo 1.0" in error.served
    assert "allow_unserved=True" in str(error) and "--allow-unserved" in str(error)


def test_manifest_patterns_and_caps() -> None:
    assert function_allowed(None, "any:thing")
    assert function_allowed(("demo.tasks:*",), "demo.tasks:add")
    assert not function_allowed(("demo.tasks:*",), "demo.other:add")
    assert not function_allowed((), "demo.tasks:add")
    caps = {"demo.tasks:*": 5, "demo.tasks:settle": 2}
    assert cap_for_function(caps, "demo.tasks:settle") == 2  # an exact name beats a pattern
    assert cap_for_function(caps, "demo.tasks:add") == 5
    assert cap_for_function(caps, "other:f") is None


def test_served_rows_from_the_database() -> None:
    row = {
        "node": "n1",
        "datacenter": "dc1",
        "plugin": "demo",
        "plugin_version": "1.0",
        "functions": '["demo.tasks:*"]',
        "concurrency": '{"demo.tasks:settle": 2}',
        "age_us": 31_500_000,
    }
    served = Served.from_row(row)
    assert served == Served(
        "n1", "dc1", "demo", "1.0", ("demo.tasks:*",), {"demo.tasks:settle": 2}, 31.5
    )
    assert not served.live
    assert Served.from_row({**row, "functions": None, "concurrency": None, "age_us": 0}).live


# -- why a queued task waits -------------------------------------------------------


def test_a_due_task_that_a_live_node_serves_has_no_reason() -> None:
    assert queued_reasons(make_task(), CLUSTER, NOW) == []


def test_not_before_is_named_with_its_time() -> None:
    task = make_task(run_after=NOW + timedelta(minutes=10))
    assert queued_reasons(task, CLUSTER, NOW) == ["not before 2026-11-30 06:10:00 UTC (in 10 min)"]


def test_a_backoff_after_a_failure_is_a_retry() -> None:
    task = make_task(
        run_after=NOW + timedelta(seconds=4),
        attempt=1,
        failures=1,
        attempts=(make_attempt(1, Outcome.ERROR),),
    )
    assert queued_reasons(task, CLUSTER, NOW) == [
        "retrying in 4 s (backoff after attempt 1 failed)"
    ]


def test_no_node_has_published_yet() -> None:
    assert queued_reasons(make_task(), [], NOW) == [
        "no node has published what it serves yet: is any node running?"
    ]


def test_a_plugin_whose_nodes_went_quiet_names_the_last_one_seen() -> None:
    quiet = Served("dc1-node1", "dc1", "demo", "1.0", age=LIVE_WITHIN + 15)
    quieter = Served("dc1-node2", "dc1", "demo", "1.0", age=600)
    assert queued_reasons(make_task(), [quieter, quiet, GREETER_1], NOW) == [
        "no live node serves plugin 'demo' (last seen 45 s ago on dc1-node1)"
    ]
    never = make_task(plugin="nope", function="x:y")
    assert queued_reasons(never, CLUSTER, NOW) == [
        "no live node serves plugin 'nope' (never served)"
    ]
    pinned = make_task(plugin="greeter", plugin_version="3.0", function="greeter:greet")
    assert queued_reasons(pinned, CLUSTER, NOW) == [
        "no live node serves plugin 'greeter' version 3.0 (never served)"
    ]


def test_a_datacenter_without_a_live_node() -> None:
    dc3 = Served("dc3-node1", "dc3", "demo", "1.0", age=7200)
    assert queued_reasons(make_task(datacenter="dc3"), [*CLUSTER, dc3], NOW) == [
        "its datacenter 'dc3' has no live node (last seen 2 h ago on dc3-node1)"
    ]
    assert queued_reasons(make_task(datacenter="dc9"), CLUSTER, NOW) == [
        "its datacenter 'dc9' has no live node (no node has ever run there)"
    ]
    assert queued_reasons(make_task(datacenter="dc2"), CLUSTER, NOW) == [
        "no live node in datacenter 'dc2' serves plugin 'demo' (never served)"
    ]
    assert queued_reasons(make_task(datacenter="dc1"), CLUSTER, NOW) == []


def test_caps_from_the_task_or_from_the_plugin_a_node_would_run() -> None:
    own = make_task(concurrency_limit=3, concurrency_key="exports")
    assert cap_of(own, CLUSTER) == Cap("exports", 3, by_key=True)
    unnamed = make_task(concurrency_limit=1)
    assert cap_of(unnamed, CLUSTER) == Cap("demo:demo.tasks:sleep", 1, by_key=False)
    settle = make_task(function="demo.tasks:settle")
    assert cap_of(settle, CLUSTER) == Cap("demo:demo.tasks:settle", 2, by_key=False)
    assert cap_of(make_task(), CLUSTER) is None
    newer = Served("n2", "dc1", "demo", "1.10", concurrency={"demo.tasks:settle": 7})
    assert cap_of(settle, [DEMO, newer]) == Cap("demo:demo.tasks:settle", 7, False)
    assert cap_of(
        make_task(function="demo.tasks:settle", plugin_version="1.0"), [DEMO, newer]
    ) == Cap("demo:demo.tasks:settle", 2, False)


def test_a_full_cap_is_a_reason_and_a_free_one_is_not() -> None:
    task = make_task(concurrency_limit=2, concurrency_key="exports")
    cap = cap_of(task, CLUSTER)
    assert queued_reasons(task, CLUSTER, NOW, cap, running=1) == []
    assert queued_reasons(task, CLUSTER, NOW, cap, running=2) == [
        "its concurrency cap is full: 2 of 2 running (key 'exports')"
    ]
    settle = make_task(function="demo.tasks:settle")
    assert queued_reasons(settle, CLUSTER, NOW, cap_of(settle, CLUSTER), running=2) == [
        "its concurrency cap is full: 2 of 2 running (demo:demo.tasks:settle)"
    ]


def test_several_reasons_at_once() -> None:
    task = make_task(plugin="nope", function="x:y", run_after=NOW + timedelta(hours=3))
    assert queued_reasons(task, CLUSTER, NOW) == [
        "not before 2026-11-30 09:00:00 UTC (in 3 h)",
        "no live node serves plugin 'nope' (never served)",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (45, "45 s"),
        (119, "119 s"),
        (600, "10 min"),
        (7200, "2 h"),
        (3 * 86_400, "3 d"),
    ],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text
