"""Submit rate: N tasks one ``Client.submit`` at a time, against one ``Client.submit_many``.

Both go through everything an application's submit does: validation, the check of
served plugins (against a row published as a running node would, so its cache
is warm, as in a running cluster) and the commit. The batch's figure is split
into validation (``build_batch``, no I/O) and the rest (store: lookups, INSERTs,
read-back, COMMIT), measured as a second batch of the same size.

On a busy machine the wall-clock ratio swings with the disk (a single submit
waits for its COMMIT's fsync) and with whoever else has the cores. CPU time per
task, of this process (the client; SQLite's too in embedded mode) and of the
MariaDB server, is the steadier figure: ``cpu_us_per_task`` and its ``cpu_ratio``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Lab, cpu_seconds
from taskman import Client, TaskRequest
from taskman.bulk import build_batch
from taskman.store import make_database
from taskman.store.migrations import migrate
from taskman.store.placement import Offer, PlacementStore

FUNCTION = "demo.tasks:add"


def submit_rates(lab: Lab | None, tasks: int) -> dict[str, Any]:
    """On the lab's MariaDB, or (no lab) on a fresh SQLite file of embedded mode."""
    if lab is not None:
        return _measure(lab.fresh_database(), tasks, lab.mariadb.pid)
    with tempfile.TemporaryDirectory(prefix="taskman-bench-sqlite-") as folder:
        dsn = f"sqlite:///{Path(folder) / 'taskman.sqlite3'}"
        migrate(dsn)
        return _measure(dsn, tasks, None)


class _Cpu:
    """CPU seconds of this process and of the database server (if any) since start."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.client0 = time.process_time()
        self.server0 = self._server()

    def _server(self) -> float:
        return 0.0 if self.server_pid is None else cpu_seconds(self.server_pid)

    def per_task_us(self, tasks: int) -> dict[str, float]:
        client = time.process_time() - self.client0
        server = self._server() - self.server0
        return {
            "client": round(client * 1e6 / tasks, 1),
            "server": round(server * 1e6 / tasks, 1),
            "total": round((client + server) * 1e6 / tasks, 1),
        }


def _items(tasks: int, tag: str) -> list[TaskRequest]:
    return [{"function": FUNCTION, "plugin": "demo", "args": [tag, i]} for i in range(tasks)]


def _measure(dsn: str, tasks: int, server_pid: int | None) -> dict[str, Any]:
    placement = PlacementStore(make_database(dsn))
    placement.publish("bench-node", "dc1", [Offer("demo", "1.0", ("demo.tasks:*",), {})])
    placement.db.close()
    with Client(dsn) as client:
        for i in range(20):  # connect, warm the served-plugins cache and the buffer pool
            client.submit(FUNCTION, plugin="demo", args=["warm", i])

        cpu = _Cpu(server_pid)
        t0 = time.perf_counter()
        for i in range(tasks):
            client.submit(FUNCTION, plugin="demo", args=["one", i])
        single_s = time.perf_counter() - t0
        single_cpu = cpu.per_task_us(tasks)

        cpu = _Cpu(server_pid)
        t0 = time.perf_counter()
        ids = client.submit_many(_items(tasks, "many"))
        many_s = time.perf_counter() - t0
        many_cpu = cpu.per_task_us(tasks)

        second = _items(tasks, "again")
        t0 = time.perf_counter()
        build_batch(second)
        validate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.submit_many(second)
        again_s = time.perf_counter() - t0

        stored = client.counts().get("queued", 0)
    if len(ids) != tasks or stored != 20 + 3 * tasks:
        raise RuntimeError(f"expected {20 + 3 * tasks} queued tasks, found {stored}")
    single_rate = tasks / single_s
    many_rate = tasks / many_s
    return {
        "tasks": tasks,
        "submit_per_s": round(single_rate),
        "submit_many_per_s": round(many_rate),
        "submit_many_s": round(many_s, 3),
        "second_batch": {
            "total_s": round(again_s, 3),
            "validation_s": round(validate_s, 3),
            "store_s": round(max(0.0, again_s - validate_s), 3),
        },
        "ratio": round(many_rate / single_rate, 1),
        "cpu_us_per_task": {"submit": single_cpu, "submit_many": many_cpu},
        "cpu_ratio": round(single_cpu["total"] / max(many_cpu["total"], 0.1), 1),
    }
