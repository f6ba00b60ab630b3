"""Celery measured the same way, in the same run: the issue's reference figures.

Set-up (issues 9 and 18): a RabbitMQ broker (by default a node this run starts
itself, bench/rabbitmq.py), prefork pool, worker concurrency 2, and results stored
durably as taskman stores them: Celery's database result backend on the lab's
MariaDB (SQLAlchemy, ``db+mysql+pymysql://``), a fresh database per figure.
Celery's defaults otherwise: durable queue, persistent messages, early acks.

Throughput: the queue is filled first, then the worker starts; each task stamps its
first line and, after its result is stored, its end (``time.time()``); the figure is
tasks / (last end - first start), as taskman's is tasks / (last finished_at - first
started_at). Latency: one task at a time to an idle worker, ``apply_async`` to the
task function's first line, as taskman's ``latency`` figure is submit to first line.

Celery is not a dependency of taskman: ``pip install -e '.[bench]'``. Without it (or
without RabbitMQ) the figures say why they were skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.common import raw_connection, summary_ms
from taskman.dsn import parse_dsn

ROOT = Path(__file__).resolve().parent.parent  # where `bench` imports from
POOL = {"pool": "prefork", "concurrency": 2}


@dataclass(frozen=True)
class Target:
    """Where Celery runs: a broker URL, and fresh MySQL databases for its results."""

    broker: str
    broker_kind: str  # "own node" or "--celery-broker"
    results_database: Callable[[], str]  # a new, empty database: its mysql:// dsn


def unavailable(broker: str | None = None) -> str | None:
    """Why Celery cannot be measured here, or None."""
    for module, what in (("celery", "celery"), ("sqlalchemy", "SQLAlchemy")):
        try:
            __import__(module)
        except ImportError:
            return f"{what} is not installed (pip install -e '.[bench]')"
    if broker is not None:
        host = urlparse(broker).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            return f"broker {host} is not on loopback"
    return None


def backend_url(dsn: str) -> str:
    """The bench's mysql:// dsn as Celery's database backend URL (SQLAlchemy, PyMySQL)."""
    parts = parse_dsn(dsn)
    return (
        f"db+mysql+pymysql://{parts.user}:{parts.password}@{parts.host}:{parts.port}/"
        f"{parts.database}"
    )


def throughput(target: Target, tasks: int, max_tasks_per_child: int | None) -> dict[str, Any]:
    import celery

    dsn = target.results_database()
    with _environment(target, dsn) as env:
        stamps = Path(env["CELERY_BENCH_STAMPS"])
        published = _client(env, "publish", str(tasks))
        t0 = time.monotonic()
        with _worker(env, max_tasks_per_child) as worker:
            # A cap, not a target: a fresh process per task ran at ~2/s on a busy machine.
            per_task = 2.0 if max_tasks_per_child else 0.5
            deadline = time.monotonic() + max(300.0, tasks * per_task)
            while _count(stamps) < tasks:
                if worker.poll() is not None:
                    raise RuntimeError(f"celery worker exited with {worker.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{_count(stamps)} of {tasks} Celery tasks ran")
                time.sleep(0.1)
            wall = time.monotonic() - t0
        starts, ends = _read(stamps)
    span = max(ends) - min(starts)
    return {
        "tasks": tasks,
        "celery": celery.__version__,
        **POOL,
        "max_tasks_per_child": max_tasks_per_child,
        **_backends(target, dsn, published),
        "results_stored": _results_stored(dsn),
        "seconds": round(span, 2),
        "tasks_per_s": round(tasks / span, 1),
        "wall_incl_worker_start_s": round(wall, 2),
    }


def latency(target: Target, samples: int) -> dict[str, Any]:
    import celery

    dsn = target.results_database()
    with _environment(target, dsn) as env, _worker(env, None):
        measured = _client(env, "latency", str(samples))
    return {
        "celery": celery.__version__,
        **POOL,
        **_backends(target, dsn, measured),
        "samples": "apply_async to the task function's first line (bench.stamp), idle worker",
        **summary_ms(measured["seconds"]),
    }


def _backends(target: Target, dsn: str, client: dict[str, Any]) -> dict[str, Any]:
    url = urlparse(target.broker)
    version = client.get("broker_version")
    return {
        "broker": f"RabbitMQ{' ' + version if version else ''} ({target.broker_kind}, "
        f"{url.hostname}:{url.port})",
        "result_backend": f"database: db+mysql+pymysql, MariaDB {parse_dsn(dsn).database}",
        "ignore_result": False,
    }


@contextlib.contextmanager
def _environment(target: Target, dsn: str) -> Iterator[dict[str, str]]:
    """The app's settings for one figure: its own queue, result database and stamp file."""
    queue = f"taskman-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp:
        env = {
            **os.environ,
            "CELERY_BENCH_BROKER": target.broker,
            "CELERY_BENCH_BACKEND": backend_url(dsn),
            "CELERY_BENCH_STAMPS": str(Path(tmp) / "stamps"),
            "CELERY_BENCH_QUEUE": queue,
        }
        try:
            yield env
        finally:
            # The bench's own broker goes away with the run; a --celery-broker stays.
            with contextlib.suppress(Exception):
                _client(env, "delete-queue")


@contextlib.contextmanager
def _worker(
    env: dict[str, str], max_tasks_per_child: int | None
) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_app",
        "worker",
        "--pool",
        str(POOL["pool"]),
        "--concurrency",
        str(POOL["concurrency"]),
        "-Q",
        env["CELERY_BENCH_QUEUE"],
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]
    if max_tasks_per_child is not None:
        command += ["--max-tasks-per-child", str(max_tasks_per_child)]
    worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        yield worker
    finally:
        worker.terminate()  # a warm shutdown: the pool's processes go with it
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _client(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.celery_client", *args],
        env=env,
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"celery client {args[0]} exited {out.returncode}: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _results_stored(dsn: str) -> int:
    """Rows the backend wrote with status SUCCESS: every task's result, durably."""
    conn = raw_connection(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


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
