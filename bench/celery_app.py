"""The Celery app bench/celery_side.py runs: no-op tasks that stamp their times.

Settings come from the environment (CELERY_BENCH_*), set by celery_side.py. Results
are stored (in MariaDB through Celery's database backend), as taskman stores every
task's result: ``add`` stamps its first line, and its end once its result is stored
(task_postrun follows the backend's write); ``stamp`` returns its first line's time.
"""

from __future__ import annotations

import os
import time
from typing import Any

# The result backend's modules, imported before the pool forks (as taskman's zygote
# preloads): otherwise a fresh process per task (max_tasks_per_child=1) pays ~0.4 s
# importing SQLAlchemy on every task.
import celery.backends.database  # noqa: F401
import sqlalchemy.dialects.mysql.pymysql  # noqa: F401
from celery import Celery
from celery.signals import task_postrun

app = Celery(
    "taskman_bench",
    broker=os.environ["CELERY_BENCH_BROKER"],
    backend=os.environ["CELERY_BENCH_BACKEND"],
)
app.conf.update(
    task_default_queue=os.environ["CELERY_BENCH_QUEUE"],
    task_ignore_result=False,  # stated: both systems store every result
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
STAMPS = os.environ.get("CELERY_BENCH_STAMPS", os.devnull)
_started = 0.0  # one task at a time per pool process


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    global _started  # read by the postrun handler in this same process
    _started = time.time()
    return x + y  # the same no-op as taskman's demo.tasks:add


@app.task(name="bench.stamp")
def stamp() -> float:
    """The wall clock when the task function started: apply_async-to-start ends here."""
    return time.time()


@task_postrun.connect
def _stamp_end(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) != "bench.add":
        return
    # One short O_APPEND write per task: lines from both pool processes never interleave.
    fd = os.open(STAMPS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{_started:.6f} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
