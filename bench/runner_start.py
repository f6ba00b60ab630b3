"""Runner start overhead: from ``Runner.start()`` to the child's ``ready`` and to its exit.

Measured in this process with the node's own Runner class and the demo plugin, so
it is exactly what a node pays per attempt (minus the database and ZooKeeper).
"""

from __future__ import annotations

import queue
import time
from typing import Any

from bench.common import summary_ms
from taskman.models import AttemptCall
from taskman.plugins import EXAMPLES_DIR, PluginRegistry
from taskman.runner import Runner, RunnerEvent, RunnerSpec


def _spec(task_id: int, fork: bool, pooled: bool = False) -> RunnerSpec:
    plugin = PluginRegistry.scan([EXAMPLES_DIR]).resolve("demo")
    return RunnerSpec(
        call=AttemptCall(task_id, 1, task_id, "demo.tasks:add", [1, 2], {}),
        python=plugin.python,
        sys_path=list(plugin.sys_path),
        env=dict(plugin.env),
        cwd=str(plugin.directory),
        heartbeat_interval=1.0,
        watchdog_timeout=3.0,
        **({"fork": fork} if "fork" in RunnerSpec.__dataclass_fields__ else {}),
        **({"pooled": True} if pooled else {}),
    )


def _one(spec: RunnerSpec, **runner_options: Any) -> tuple[float, float]:
    events: queue.Queue[RunnerEvent] = queue.Queue()
    runner: Any
    if "runners" in runner_options:  # a pooled attempt: handed to a warm runner
        from taskman.runner.pool import PooledAttempt

        runner = PooledAttempt(spec, events, runner_options["runners"])
    else:
        runner = Runner(spec, events, **runner_options)
    started = time.perf_counter()
    if "runners" in runner_options:
        runner.launch()
    else:
        runner.start()
    ready = exited = 0.0
    while not exited:
        event = events.get(timeout=30)
        kind = event.message.get("t")
        if kind == "ready":
            ready = time.perf_counter()
        elif kind == "exit":
            exited = time.perf_counter()
            if event.message.get("code") != 0:
                raise RuntimeError(f"runner exited with {event.message}: {runner.output_tail()}")
    runner.close()
    return ready - started, exited - started


def measure(mode: str, runs: int) -> dict[str, Any]:
    """``mode``: "cold" (a fresh interpreter), "zygote" (a fork of a warm one) or
    "pooled" (an attempt handed to a warm runner that ran the one before)."""
    options: dict[str, Any] = {}
    pool: Any = None
    pooled = mode == "pooled"
    if mode == "zygote":
        from taskman.runner.zygote import ZygotePool

        pool = ZygotePool()
        options["zygotes"] = pool
    elif pooled:
        from taskman.runner.pool import RunnerPool

        pool = RunnerPool()
        options["runners"] = pool
    elif mode != "cold":
        raise ValueError(mode)
    try:
        spec = _spec(1, pool is not None, pooled)
        if pool is not None:
            _one(spec, **options)  # the zygote (or runner) starts on first use
        readies, exits = [], []
        for i in range(runs):
            ready, exited = _one(_spec(i + 2, pool is not None, pooled), **options)
            readies.append(ready)
            exits.append(exited)
    finally:
        if pool is not None:
            pool.close()
    return {"to_ready": summary_ms(readies), "to_exit": summary_ms(exits)}


def available_modes() -> list[str]:
    try:
        import taskman.runner.zygote  # noqa: F401
    except ImportError:
        return ["cold"]
    return ["cold", "zygote"]
