"""claiming.runner_spec: which isolation an attempt gets, from its plugin and its limits."""

from __future__ import annotations

from pathlib import Path

from taskman.cluster.claiming import runner_spec
from taskman.plugins import Plugin
from taskman.store import Claim


def plugin(**fields: object) -> Plugin:
    return Plugin(
        name="demo",
        version="1.0",
        directory=Path("/tmp"),
        python="/usr/bin/python3",
        sys_path=(),
        **fields,  # type: ignore[arg-type]
    )


def call(function: str, limits: dict[str, int] | None = None) -> Claim:
    return Claim(1, 1, 7, function, [], {}, "demo", None, None, 3, 0, None, False, limits=limits)


def test_a_pooled_plugin_gives_pooled_specs_with_its_recycling_rules() -> None:
    pooled = plugin(isolation="pooled", max_tasks_per_runner=9, max_runner_memory_mb=99)
    spec = runner_spec(call("demo.tasks:add"), pooled, heartbeat=1.0, watchdog=5.0)
    assert spec.pooled and spec.max_tasks_per_runner == 9 and spec.max_runner_memory_mb == 99


def test_a_function_override_and_the_default_give_a_process() -> None:
    mixed = plugin(isolation="pooled", isolation_by_function={"demo.tasks:big": "process"})
    assert not runner_spec(call("demo.tasks:big"), mixed, heartbeat=1, watchdog=5).pooled
    assert not runner_spec(call("demo.tasks:add"), plugin(), heartbeat=1, watchdog=5).pooled


def test_a_cpu_time_limit_always_gets_a_process_of_its_own() -> None:
    pooled = plugin(isolation="pooled")
    spec = runner_spec(call("demo.tasks:add", {"cpu_seconds": 5}), pooled, heartbeat=1, watchdog=5)
    assert not spec.pooled and spec.limits == {"cpu_seconds": 5}
    from_manifest = plugin(isolation="pooled", limits={"cpu_seconds": 5})
    assert not runner_spec(call("demo.tasks:add"), from_manifest, heartbeat=1, watchdog=5).pooled
