"""Celery measured the same way, in the same run: the issue's reference figures.

Set-up (issue 9): RabbitMQ broker, prefork pool, worker concurrency 2, with and
without ``max_tasks_per_child=1`` (a fresh process per task). The queue is filled
first, then the worker starts; each task appends its start and end time
(``time.time()``) to a file, and the figure is tasks / (last end - first start),
as taskman's figure is tasks / (last finished_at - first started_at).

Celery is not a dependency of taskman: ``pip install -e '.[bench]'``. The broker
is an existing RabbitMQ (``--celery-broker``, default amqp on 127.0.0.1); each
run uses its own queue name and deletes it afterwards. Without celery or a
reachable broker the figure says why it was skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
APP_MODULE = "bench.celery_app"
ROOT = Path(__file__).resolve().parent.parent  # where `bench` imports from


def unavailable(broker: str) -> str | None:
    """Why Celery cannot be measured here, or None."""
    try:
        import celery  # noqa: F401
    except ImportError:
        return "celery is not installed (pip install -e '.[bench]')"
    url = urlparse(broker)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return f"broker {url.hostname} is not on loopback"
    try:
        with socket.create_connection((url.hostname, url.port or 5672), timeout=2):
            pass
    except OSError as exc:
        return f"no broker at {url.hostname}:{url.port or 5672}: {exc}"
    return None


def throughput(tasks: int, broker: str, max_tasks_per_child: int | None) -> dict[str, Any]:
    reason = unavailable(broker)
    if reason is not None:
        return {"skipped": reason}
    import celery

    queue = f"taskman-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp:
        stamps = Path(tmp) / "stamps"
        env = {
            **os.environ,
            "CELERY_BENCH_BROKER": broker,
            "CELERY_BENCH_STAMPS": str(stamps),
            "CELERY_BENCH_QUEUE": queue,
        }
        _publish(tasks, env)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP_MODULE,
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ]
        if max_tasks_per_child is not None:
            command += ["--max-tasks-per-child", str(max_tasks_per_child)]
        t0 = time.monotonic()
        worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + max(120.0, tasks / 2)
            while _count(stamps) < tasks:
                if worker.poll() is not None:
                    raise RuntimeError(f"celery worker exited with {worker.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{_count(stamps)} of {tasks} Celery tasks ran")
                time.sleep(0.1)
            wall = time.monotonic() - t0
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            _delete_queue(queue, env)
        starts, ends = _read(stamps)
    span = max(ends) - min(starts)
    return {
        "tasks": tasks,
        "celery": celery.__version__,
        "pool": "prefork",
        "concurrency": 2,
        "max_tasks_per_child": max_tasks_per_child,
        "seconds": round(span, 2),
        "tasks_per_s": round(tasks / span, 1),
        "wall_incl_worker_start_s": round(wall, 2),
    }


def _publish(tasks: int, env: dict[str, str]) -> None:
    # In a child process: the app reads its settings from the environment at import.
    code = (
        "import sys; from bench.celery_app import app, add\n"
        "with app.producer_or_acquire() as producer:\n"
        "    for i in range(int(sys.argv[1])):\n"
        "        add.apply_async((i, i), producer=producer)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tasks)], env=env, cwd=ROOT, check=True)


def _delete_queue(queue: str, env: dict[str, str]) -> None:
    code = (
        "import sys; from bench.celery_app import app\n"
        "with app.connection_for_write() as conn:\n"
        "    conn.default_channel.queue_delete(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, queue], env=env, cwd=ROOT, check=False)


def _count(stamps: Path) -> int:
    try:
        with stamps.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _read(stamps: Path) -> tuple[list[float], list[float]]:
    starts, ends = [], []
    for line in stamps.read_text().splitlines():
        start, end = line.split()
        starts.append(float(start))
        ends.append(float(end))
    return starts, ends
