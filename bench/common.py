"""Shared set-up for the benchmarks: real servers, the machine's description, small statistics."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from taskman.config import NodeConfig
from taskman.lab import MariaDBServer, ZooKeeperEnsemble
from taskman.lab.nodes import NodeProcess
from taskman.plugins import EXAMPLES_DIR
from taskman.store import Database
from taskman.store.migrations import migrate


@dataclass
class Lab:
    """One MariaDB and a 3-server ZooKeeper ensemble on loopback, started by the benchmark."""

    base_dir: Path
    mariadb: MariaDBServer
    zookeeper: ZooKeeperEnsemble
    nodes: list[NodeProcess] = field(default_factory=list)

    def fresh_database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        dsn = self.mariadb.create_database(name)
        migrate(dsn)
        return dsn

    def node(self, node_id: str, dsn: str, cluster: str, **options: Any) -> NodeProcess:
        values: dict[str, Any] = {
            "datacenter": "dc1",
            "dsn": dsn,
            "zookeeper": self.zookeeper.hosts,
            "plugin_dirs": [str(EXAMPLES_DIR)],
            "cluster": cluster,
            "log_level": "warning",  # info logs a line per claim and ending: real CPU at 300/s
            **options,
        }
        if "insecure" in NodeConfig.__dataclass_fields__:
            values.setdefault("insecure", True)  # a throwaway loopback ensemble: no ZooKeeper ACLs
        node = NodeProcess(self.base_dir / "nodes", node_id, **values)
        self.nodes.append(node)
        return node

    def stop_nodes(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=15)
        self.nodes.clear()


@contextlib.contextmanager
def lab(base_dir: Path) -> Iterator[Lab]:
    base_dir.mkdir(parents=True, exist_ok=True)
    mariadb = MariaDBServer(base_dir / "mariadb")
    zookeeper = ZooKeeperEnsemble(base_dir / "zookeeper", size=3)
    mariadb.start()
    try:
        zookeeper.start()
        try:
            running = Lab(base_dir, mariadb, zookeeper)
            try:
                yield running
            finally:
                running.stop_nodes()
        finally:
            zookeeper.stop()
    finally:
        mariadb.stop()


def setup_description(the_lab: Lab | None) -> dict[str, Any]:
    """What the figures were measured on: printed with them, so they can be compared."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _mem_total_mb(),
    }
    if the_lab is not None:
        conn = the_lab.mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
                info["mariadb"] = row[0] if row else "?"
                cur.execute("SELECT @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size")
                row = cur.fetchone()
                if row:
                    info["innodb_flush_log_at_trx_commit"] = int(row[0])
                    info["innodb_buffer_pool_mb"] = int(row[1]) // (1024 * 1024)
        finally:
            conn.close()
        info["zookeeper"] = f"{the_lab.zookeeper.size} servers on loopback"
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total_mb() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; p in 0..100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values: list[float]) -> dict[str, float]:
    """Median, p95, p99 and mean of durations in seconds, as milliseconds."""
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "n": len(values),
    }


def fill_queued(
    dsn: str, count: int, function: str = "demo.tasks:add", args: str = "[1, 2]"
) -> None:
    """Insert ``count`` queued tasks in one statement (MariaDB's sequence engine)."""
    db = Database(dsn)
    try:
        done = 0
        while done < count:
            # seq_1_to_N is a virtual table; chunks keep each transaction small enough.
            chunk = min(200_000, count - done)
            db.execute(
                "INSERT INTO tasks (request_id, plugin, `function`, args, kwargs, run_after, "
                "max_attempts, state, created_at) "
                f"SELECT LPAD(HEX(seq + {done}), 32, '0'), 'demo', %s, %s, '{{}}', NOW(6), 1, "
                f"'queued', NOW(6) FROM seq_1_to_{chunk}",
                (function, args),
            )
            done += chunk
    finally:
        db.close()


def count_states(dsn: str) -> dict[str, int]:
    db = Database(dsn)
    try:
        rows = db.query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}
    finally:
        db.close()


def wait_all_finished(dsn: str, total: int, timeout: float) -> float:
    """Wait until ``total`` tasks have left queued/running; the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    db = Database(dsn)
    try:
        while time.monotonic() < deadline:
            rows = db.query(
                "SELECT COUNT(*) AS n FROM tasks WHERE state NOT IN ('queued', 'running')"
            )
            if int(rows[0]["n"]) >= total:
                return time.monotonic()
            time.sleep(0.05)
    finally:
        db.close()
    raise TimeoutError(f"{total} tasks did not finish within {timeout} s")


def rss_kb(pid: int) -> dict[str, int]:
    """RSS and PSS of one process in KiB (PSS splits shared pages, fairer for forked runners)."""
    out = {"rss_kb": 0, "pss_kb": 0, "uss_kb": 0}
    with contextlib.suppress(OSError, ValueError):
        private = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if parts[0] == "Rss:":
                out["rss_kb"] = int(parts[1])
            elif parts[0] == "Pss:":
                out["pss_kb"] = int(parts[1])
            elif parts[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(parts[1])
        out["uss_kb"] = private
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def raw_connection(dsn: str) -> pymysql.connections.Connection:
    from taskman.dsn import parse_dsn

    parts = parse_dsn(dsn)
    return pymysql.connect(
        host=parts.host,
        port=parts.port,
        user=parts.user,
        password=parts.password,
        database=parts.database,
        autocommit=True,
        ssl_disabled=True,
    )


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children it has reaped (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop().

    A runner's time lands with whoever reaps it: the node for a cold-spawned one,
    the zygote for a forked one.
    """

    def __init__(self) -> None:
        self._groups: dict[str, list[int]] = {}
        self._start: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def add(self, group: str, pids: list[int], *, from_zero: bool = False) -> None:
        """Count these processes from now on (``from_zero``: all their time so far too)."""
        self._groups.setdefault(group, [])
        for pid in pids:
            if pid not in self._start:
                self._groups[group].append(pid)
                self._start[pid] = 0.0 if from_zero else cpu_seconds(pid)

    def stop(self) -> dict[str, float]:
        for group, pids in self._groups.items():
            self.seconds[group] = sum(cpu_seconds(p) - self._start[p] for p in pids)
        return self.seconds
