"""The Celery figures of one ``python -m bench`` run, and their ratios to taskman's.

Run inside the lab (its MariaDB holds Celery's results) with a RabbitMQ node the
run starts for them and stops afterwards, unless ``--celery-broker`` names one.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import celery_side, rabbitmq
from bench.common import Lab

Record = Callable[[str, Callable[[], Any]], None]
PREFORK = "prefork 2"
ISOLATED_TASKS = 500  # max_tasks_per_child=1 forks a process per task: a small size does


def figure_names(sizes: list[int], isolated: int) -> dict[str, tuple[int, int | None]]:
    """Throughput figure name -> (tasks, max_tasks_per_child)."""
    names: dict[str, tuple[int, int | None]] = {
        f"celery[throughput,{PREFORK},{n} tasks]": (n, None) for n in sizes
    }
    names[f"celery[throughput,{PREFORK},max_tasks_per_child=1,{isolated} tasks]"] = (isolated, 1)
    return names


# taskman's side of a head-to-head round: (mode, tasks) -> its throughput figure.
Ours = Callable[[str, int], dict[str, Any]]


@dataclass(frozen=True)
class HeadToHead:
    """Alternating rounds, Celery then each taskman mode, at one size.

    The machine's speed drifts by up to 2x over minutes on this shared VM: figures
    measured minutes apart give ratios that say more about the drift than about
    either system. Alternating keeps each ratio's two figures seconds apart.
    """

    ours: Ours
    modes: list[str]
    tasks: int
    rounds: int


def measure(
    record: Record,
    the_lab: Lab,
    sizes: list[int],
    isolated: int,
    latency_samples: int,
    broker: str | None,
    head_to_head: HeadToHead | None = None,
) -> None:
    """Record every Celery figure, or one ``celery`` entry saying why there are none."""
    reason = celery_side.unavailable(broker) or (None if broker else rabbitmq.unavailable())
    if reason is not None:
        record("celery", lambda: {"skipped": reason})
        return
    with contextlib.ExitStack() as stack:
        if broker is None:
            node: list[rabbitmq.RabbitMQServer] = []
            record(
                "celery[rabbitmq start]",
                lambda: _start(stack, the_lab.base_dir / "rabbitmq", node),
            )
            if not node:
                return
            target = celery_side.Target(node[0].url, "own node", _databases(the_lab))
        else:
            target = celery_side.Target(broker, "--celery-broker", _databases(the_lab))
        for name, (tasks, per_child) in figure_names(sizes, isolated).items():
            record(name, lambda n=tasks, p=per_child: celery_side.throughput(target, n, p))
        record(
            f"celery[latency,{PREFORK}]",
            lambda: celery_side.latency(target, latency_samples),
        )
        if head_to_head is not None and head_to_head.rounds > 0:
            for mode in head_to_head.modes:
                record(
                    f"versus[{mode},{head_to_head.tasks} tasks]",
                    lambda m=mode: _alternate(target, head_to_head, m),
                )


def _alternate(target: celery_side.Target, h2h: HeadToHead, mode: str) -> dict[str, Any]:
    """``rounds`` x (Celery, then taskman ``mode``), one node / one worker each."""
    rounds = []
    for _ in range(h2h.rounds):
        theirs = celery_side.throughput(target, h2h.tasks, None)["tasks_per_s"]
        ours = h2h.ours(mode, h2h.tasks)["tasks_per_s"]
        rounds.append({"celery": theirs, "taskman": ours, "ratio": round(ours / theirs, 3)})
    return {
        "tasks": h2h.tasks,
        "rounds": rounds,
        "celery_tasks_per_s_median": round(statistics.median(r["celery"] for r in rounds), 1),
        "taskman_tasks_per_s_median": round(statistics.median(r["taskman"] for r in rounds), 1),
        "ratio_median": round(statistics.median(r["ratio"] for r in rounds), 3),
        "ratio_range": [min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds)],
    }


def _start(
    stack: contextlib.ExitStack, base: Path, node: list[rabbitmq.RabbitMQServer]
) -> dict[str, Any]:
    t0 = time.monotonic()
    server = stack.enter_context(rabbitmq.rabbitmq(base))
    node.append(server)
    return {
        "node": server.node_name,
        "amqp_port": server.amqp_port,
        "dist_port": server.dist_port,
        "epmd_port": server.epmd_port,
        "start_s": round(time.monotonic() - t0, 1),
    }


def _databases(the_lab: Lab) -> Callable[[], str]:
    def fresh() -> str:
        return the_lab.mariadb.create_database(f"celery_results_{uuid.uuid4().hex[:8]}")

    return fresh


def ratios(figures: dict[str, Any], modes: list[str]) -> dict[str, float]:
    """taskman / Celery, per mode: throughput (higher is better for taskman) and latency."""
    out: dict[str, float] = {}
    celery = {
        name: value
        for name, value in figures.items()
        if name.startswith("celery[throughput,") and isinstance(value, dict)
    }
    for mode in modes:
        ours = figures.get(f"throughput[{mode},1 node]")
        if not isinstance(ours, dict) or not ours.get("tasks_per_s"):
            continue
        for name, theirs in celery.items():
            if not theirs.get("tasks_per_s"):
                continue
            label = name.removeprefix("celery[throughput,").removesuffix("]")
            same_size = theirs.get("tasks") == ours.get("tasks")
            if same_size or theirs.get("max_tasks_per_child") == 1:
                key = f"throughput taskman {mode} 1 node / Celery {label}"
                out[key] = round(ours["tasks_per_s"] / theirs["tasks_per_s"], 3)
    out.update(_latency_ratios(figures, modes))
    for name, value in figures.items():
        if name.startswith("versus[") and isinstance(value, dict) and "ratio_median" in value:
            label = name.removeprefix("versus[").removesuffix("]")
            out[f"throughput taskman / Celery {PREFORK}, alternating rounds, median ({label})"] = (
                value["ratio_median"]
            )
    return out


def _latency_ratios(figures: dict[str, Any], modes: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    theirs = figures.get(f"celery[latency,{PREFORK}]")
    if not isinstance(theirs, dict):
        return out
    for mode in modes:
        for name, ours in figures.items():
            if not name.startswith(f"latency[{mode},") or not isinstance(ours, dict):
                continue
            poll = name.removeprefix(f"latency[{mode},").removesuffix("]")
            for stat in ("median_ms", "p95_ms"):
                if ours.get(stat) and theirs.get(stat):
                    key = f"latency taskman {mode} {poll} / Celery {PREFORK} ({stat[:-3]})"
                    out[key] = round(ours[stat] / theirs[stat], 2)
    return out
