"""The client side of the Celery figures, run as a child process by bench/celery_side.py.

``python -m bench.celery_client publish N | latency N | delete-queue``; the app reads
its settings from the environment at import (CELERY_BENCH_*), hence a child process.
Each command prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.celery_app import add, app, stamp

WARM_UP = 2  # the first samples also pay for connections and the pool's first task


def prepare_backend() -> None:
    """Create the result tables here, once, not racing in both pool processes."""
    app.backend.ResultSession().close()


def publish(tasks: int) -> dict[str, Any]:
    prepare_backend()
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            add.apply_async((i, i), producer=producer)
    return {"published": tasks, "broker_version": broker_version()}


def latency(samples: int) -> dict[str, Any]:
    """One task at a time to an idle worker: apply_async -> the task function's first line."""
    prepare_backend()
    values = []
    for i in range(samples + WARM_UP):
        time.sleep(0.05 + (i % 7) * 0.013)  # idle between tasks, as taskman's latency figure
        t0 = time.time()
        result = stamp.apply_async()
        started = float(result.get(timeout=120 if i == 0 else 30, interval=0.02))
        if i >= WARM_UP:
            values.append(started - t0)
    return {"seconds": values, "broker_version": broker_version()}


def broker_version() -> str:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        version = conn.connection.server_properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else str(version)


def delete_queue() -> dict[str, Any]:
    queue = app.conf.task_default_queue
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)
    return {"deleted": queue}


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "publish":
        out = publish(int(rest[0]))
    elif command == "latency":
        out = latency(int(rest[0]))
    elif command == "delete-queue":
        out = delete_queue()
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
