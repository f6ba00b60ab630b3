"""The Celery app bench/celery_side.py runs: one no-op task that stamps its start and end.

Settings come from the environment (CELERY_BENCH_*), set by celery_side.py.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("taskman_bench", broker=os.environ["CELERY_BENCH_BROKER"])
app.conf.update(
    task_default_queue=os.environ["CELERY_BENCH_QUEUE"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
STAMPS = os.environ["CELERY_BENCH_STAMPS"]


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    started = time.time()
    value = x + y  # the same no-op as taskman's demo.tasks:add
    # One short O_APPEND write per task: lines from both pool processes never interleave.
    fd = os.open(STAMPS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{started:.6f} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    return value
