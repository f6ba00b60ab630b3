"""Benchmarks that run real ``taskman node`` processes against the lab's servers."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    CpuMeter,
    Lab,
    count_states,
    descendants,
    fill_queued,
    rss_kb,
    summary_ms,
    wait_all_finished,
)
from bench.counters import ServerCounters
from taskman import Client, TaskState
from taskman.plugins import EXAMPLES_DIR
from taskman.store import Database

BENCH_PLUGINS = Path(__file__).resolve().parent / "plugins"


def _is_zygote(pid: int, node_pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return parent == node_pid and b"zygote.py" in cmdline


def zygote_supported() -> bool:
    from taskman.plugins import manifest

    return "fork" in manifest.KNOWN_KEYS


def pooled_supported() -> bool:
    from taskman.plugins import manifest

    return "isolation" in manifest.KNOWN_KEYS


def manifest_keys() -> frozenset[str]:
    from taskman.plugins import manifest

    return manifest.KNOWN_KEYS


def plugin_dirs(base: Path, mode: str) -> list[str]:
    """Copies of the demo and bench plugins; in "cold" mode marked ``fork = false``, in
    "pooled" mode ``isolation = "pooled"`` (both forked modes preload the task module).

    "baseline" is the tree as it was before the zygote existed: the manifests as they are.
    """
    target = base / f"plugins-{mode}"
    if not target.exists():
        target.mkdir(parents=True)
        for source in (EXAMPLES_DIR / "demo", BENCH_PLUGINS / "bench"):
            shutil.copytree(source, target / source.name)
            manifest = target / source.name / "plugin.toml"
            text = manifest.read_text()
            lines = text.splitlines()
            # top-level keys must come before the first [table]
            first_table = next(
                (i for i, line in enumerate(lines) if line.startswith("[")), len(lines)
            )
            extra = []
            if "allow_root" in manifest_keys() and "allow_root" not in text:
                extra.append("allow_root = true")  # the bench may run as root, as CI does
            module = "demo.tasks" if source.name == "demo" else "bench_tasks"
            if mode == "cold":
                extra.append("fork = false")
            elif mode == "zygote":
                extra.append(f'preload = ["{module}"]')
            elif mode == "pooled":
                extra.extend(['isolation = "pooled"', f'preload = ["{module}"]'])
            lines[first_table:first_table] = extra
            manifest.write_text("\n".join(lines) + "\n")
    return [str(target)]


def _nodes(lab: Lab, dsn: str, mode: str, count: int, **options: Any) -> list[Any]:
    cluster = f"b{uuid.uuid4().hex[:8]}"
    nodes = []
    for i in range(count):
        node = lab.node(
            f"{mode}-n{i + 1}-{cluster}",
            dsn,
            cluster,
            datacenter=f"dc{i + 1}",
            plugin_dirs=plugin_dirs(lab.base_dir, mode),
            **options,
        )
        nodes.append(node)
    return nodes


def throughput(lab: Lab, mode: str, tasks: int, nodes: int, slots: int) -> dict[str, Any]:
    """``tasks`` queued no-op tasks (demo.tasks:add), drained by ``nodes`` nodes.

    The queue is filled first; the figure is tasks / (last finished_at - first
    started_at), both database clocks, so node start-up is not counted.
    """
    dsn = lab.fresh_database()
    fill_queued(dsn, tasks)
    meter = CpuMeter()
    meter.add("mariadb", [pid for pid in [lab.mariadb.pid] if pid])
    meter.add("zookeeper", [pid for pid in lab.zookeeper.pids if pid])
    counters = ServerCounters(lab)
    counters.start()
    started = [n.start(wait=None) for n in _nodes(lab, dsn, mode, nodes, slots=slots)]
    meter.add("node (+cold runners)", [n.pid for n in started])
    try:
        t0 = time.monotonic()
        wait_all_finished(dsn, tasks, timeout=max(120.0, tasks / 5))
        wall = time.monotonic() - t0
        # Zygotes started with the first task: all their CPU time counts.
        zygotes = [z for n in started for z in descendants(n.pid) if _is_zygote(z, n.pid)]
        meter.add("zygote (+forked runners)", zygotes, from_zero=True)
        # Pooled runners still alive: their time is nobody's children's time yet.
        live = [p for n in started for p in descendants(n.pid) if p not in zygotes]
        meter.add("live runners (pooled)", live, from_zero=True)
        cpu = meter.stop()
        asked = counters.per_task(tasks)
        db = Database(dsn)
        try:
            row = db.query(
                "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(started_at), MAX(finished_at)) AS us "
                "FROM tasks"
            )[0]
        finally:
            db.close()
        span = int(row["us"]) / 1e6
        states = count_states(dsn)
    finally:
        for node in started:
            node.stop(timeout=30)
    return {
        "tasks": tasks,
        "nodes": nodes,
        "slots_per_node": slots,
        "seconds": round(span, 2),
        "tasks_per_s": round(tasks / span, 1),
        "wall_incl_node_start_s": round(wall, 2),
        "states": states,
        # CPU per task by process group, node start-up included: steadier than
        # tasks/s on a shared 2-core machine, and it shows where the time goes.
        "cpu_ms_per_task": {
            **{group: round(secs * 1000 / tasks, 2) for group, secs in cpu.items()},
            "total": round(sum(cpu.values()) * 1000 / tasks, 2),
        },
        "cpu_busy": round(sum(cpu.values()) / (wall * (os.cpu_count() or 1)), 2),
        # What the node asked of the servers per task (bench/counters.py), node start-up included.
        **asked,
    }


def latency(
    lab: Lab,
    mode: str,
    samples: int,
    poll_interval: float,
    idle_poll: float | None = None,
    *,
    datagrams: bool = False,
) -> dict[str, Any]:
    """Submit one task at a time on an idle node; submit -> first line of the task function.

    With ``idle_poll`` the node polls that seldom while idle and the Client signals
    through ZooKeeper after each submit (wake-ups); without, it polls every
    ``poll_interval`` and nothing signals.
    """
    dsn = lab.fresh_database()
    options: dict[str, Any] = {"poll_interval": poll_interval, "log_level": "info"}
    if idle_poll is not None:
        options["idle_poll_interval"] = idle_poll
    if datagrams:  # the Client also sends a datagram to the published address
        options["wake_address"] = "127.0.0.1:0"
    (node,) = _nodes(lab, dsn, mode, 1, **options)
    node.start()
    signals = _signals(lab, node) if idle_poll is not None else {}
    values = []
    try:
        with Client(dsn, **signals) as client:
            for i in range(samples + 2):
                time.sleep(0.05 + (i % 7) * 0.013)  # idle between tasks, off the poll phase
                t0 = time.time()
                task_id = client.submit("bench_tasks:stamp", plugin="bench")
                task = client.wait(task_id, timeout=30, poll=0.02)
                if task.state is not TaskState.SUCCEEDED:
                    raise RuntimeError(f"latency task {task_id}: {task.state} {task.error_message}")
                if i >= 2:  # the first ones also pay for the zygote and connections warming
                    values.append(float(task.result) - t0)
    finally:
        node.stop(timeout=30)
    how = "datagram, then zookeeper" if datagrams else "zookeeper"
    wake = {"idle_poll_interval_s": idle_poll, "wake": how} if signals else {}
    return {"poll_interval_s": poll_interval, **wake, **summary_ms(values)}


def _signals(lab: Lab, node: Any) -> dict[str, str]:
    return {"zookeeper": lab.zookeeper.hosts, "cluster": str(node.values["cluster"])}


def idle_queries(
    lab: Lab, mode: str, poll_interval: float, idle_poll: float | None, seconds: float = 10.0
) -> dict[str, Any]:
    """Statements per second one idle node (the leader: its reaper counts) sends MariaDB.

    Server-wide counters (Questions: every statement; Com_select) over ``seconds``
    with this node the only client; the measuring connection's own statements are
    taken off.
    """
    dsn = lab.fresh_database()
    options: dict[str, Any] = {"poll_interval": poll_interval, "log_level": "info"}
    if idle_poll is not None:
        options["idle_poll_interval"] = idle_poll
    (node,) = _nodes(lab, dsn, mode, 1, **options)
    node.start()
    try:
        time.sleep(3.0)  # start-up reads done, leadership taken
        conn = lab.mariadb.root_connection()
        try:
            before = _status(conn)
            time.sleep(seconds)
            after = _status(conn)
        finally:
            conn.close()
    finally:
        node.stop(timeout=30)
    own = 1  # the second SHOW GLOBAL STATUS counts itself
    return {
        "poll_interval_s": poll_interval,
        "idle_poll_interval_s": idle_poll,
        "seconds": seconds,
        "statements_per_s": round((after["Questions"] - before["Questions"] - own) / seconds, 1),
        "selects_per_s": round((after["Com_select"] - before["Com_select"]) / seconds, 1),
        "commits_per_s": round((after["Com_commit"] - before["Com_commit"]) / seconds, 1),
    }


def _status(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_select', 'Com_commit')"
        )
        return {str(name): int(value) for name, value in cur.fetchall()}


def wake_flood(lab: Lab, mode: str, tasks: int) -> dict[str, Any]:
    """One Client submitting ``tasks`` as fast as it can, signalling each: ZooKeeper writes/s.

    The wake znode's data version counts every write it received (from the Client,
    and from the node, which signals only retries, reclaims and ticks: none here).
    """
    from kazoo.client import KazooClient

    dsn = lab.fresh_database()
    (node,) = _nodes(lab, dsn, mode, 1, idle_poll_interval=2.0, log_level="info")
    node.start()
    path = f"/taskman/{node.values['cluster']}/wake"
    zk = KazooClient(hosts=lab.zookeeper.hosts)
    zk.start(timeout=15)
    try:
        with Client(dsn, **_signals(lab, node)) as client:
            version = zk.get(path)[1].version
            t0 = time.monotonic()
            ids = [
                client.submit("demo.tasks:add", plugin="demo", args=(i, 1)) for i in range(tasks)
            ]
            took = time.monotonic() - t0
            client.close()  # flushes the last signal
            stats = client.wake_stats()
            writes = zk.get(path)[1].version - version
        wait_all_finished(dsn, len(ids), timeout=120)
    finally:
        zk.stop()
        zk.close()
        node.stop(timeout=30)
    return {
        "submits": tasks,
        "submits_per_s": round(tasks / took, 1),
        "zookeeper_writes": writes,
        "zookeeper_writes_per_s": round(writes / took, 1),
        "client_signals": stats,
    }


def recovery(lab: Lab, mode: str, repeats: int, session_timeout: float) -> dict[str, Any]:
    """SIGKILL the node running a task; time until another node runs it (attempt 2 started)."""
    times = [_recover_once(lab, mode, session_timeout) for _ in range(repeats)]
    return {
        "session_timeout_s": session_timeout,
        "runs": [round(t, 2) for t in times],
        **summary_ms(times),
    }


def _recover_once(lab: Lab, mode: str, session_timeout: float) -> float:
    dsn = lab.fresh_database()
    first, second = _nodes(lab, dsn, mode, 2, session_timeout=session_timeout, log_level="info")
    first.start()
    try:
        with Client(dsn) as client:
            task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(300,))

            def running(attempt: int) -> bool:
                task = client.get(task_id)
                return task.state is TaskState.RUNNING and task.attempt >= attempt

            _wait(lambda: running(1), 30)
            second.start()
            first.signal(signal.SIGKILL)
            killed = time.monotonic()
            _wait(lambda: running(2), 60, poll=0.01)
            took = time.monotonic() - killed
            client.abort(task_id)
    finally:
        first.kill()
        second.stop(timeout=30)
    return took


def memory(lab: Lab, mode: str, runners: int) -> dict[str, Any]:
    """A node's RSS idle and with ``runners`` sleeping runners; RSS/PSS per runner."""
    dsn = lab.fresh_database()
    (node,) = _nodes(lab, dsn, mode, 1, slots=runners, log_level="info")
    node.start()
    try:
        time.sleep(1.0)
        idle = rss_kb(node.pid)
        with Client(dsn) as client:
            ids = [
                client.submit("demo.tasks:sleep", plugin="demo", args=(60,)) for _ in range(runners)
            ]
            _wait(lambda: all(client.get(t).state is TaskState.RUNNING for t in ids), 60)
            time.sleep(1.5)  # every runner past import and into the task
            busy = rss_kb(node.pid)
            zygote_pids = {
                int(e["pid"]) for e in node.events() if e.get("event") == "zygote.started"
            }
            helpers, children = [], []
            for pid in descendants(node.pid):
                (helpers if pid in zygote_pids else children).append(pid)
            per_runner = [rss_kb(pid) for pid in children]
            zygotes = [rss_kb(pid) for pid in helpers]
            for task_id in ids:
                client.abort(task_id)
    finally:
        node.stop(timeout=30)

    def mean(key: str, rows: list[dict[str, int]]) -> float:
        return round(sum(r[key] for r in rows) / len(rows) / 1024, 1) if rows else 0.0

    return {
        "node_idle_rss_mb": round(idle["rss_kb"] / 1024, 1),
        "node_busy_rss_mb": round(busy["rss_kb"] / 1024, 1),
        "runners": len(per_runner),
        "runner_rss_mb": mean("rss_kb", per_runner),
        "runner_pss_mb": mean("pss_kb", per_runner),
        "runner_uss_mb": mean("uss_kb", per_runner),
        "zygotes": len(zygotes),
        "zygote_rss_mb": mean("rss_kb", zygotes),
    }


def _wait(predicate: Any, timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError("benchmark condition not reached")
