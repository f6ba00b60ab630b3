"""Throughput on the 3-datacenter Galera lab against one MariaDB: what synchronous replication costs.

The lab is ``taskman.lab.multidc`` as the chaos suite runs it: a network namespace per
datacenter on one bridge, a MariaDB Galera node and a ZooKeeper server in each, one
``taskman node`` per datacenter, each node talking to its own datacenter's Galera node.
The figure fills N queued no-op tasks (demo.tasks:add) through dc1's Galera node,
starts the three nodes and measures tasks / (last finished_at - first started_at) by the
database clock, as ``cluster_benches.throughput`` does. The same run measures that figure
on the bench's single MariaDB with three nodes, with the Galera lab up but idle, so both
share the machine's background; their ratio is among the run's ratios.

Both sides run the same node settings (``taskman.config.NodeConfig`` defaults, the
bench's slots, log level warning): only the database and the ensemble's layout differ.
The lab adds no delay between its datacenters unless its links carry a netem qdisc; the
set-up figure says which, and the round trip measured between two datacenters.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.cluster_benches import _is_zygote, plugin_dirs, throughput
from bench.common import CpuMeter, Lab, count_states, descendants, fill_queued
from taskman.config import NodeConfig
from taskman.lab.multidc import MultiDCLab
from taskman.lab.servers.process import LabError, _tail
from taskman.store import Database

Record = Callable[[str, Callable[[], Any]], None]

# Node timings both sides share: the defaults a user runs, as the `throughput` figure uses.
_SHARED_TIMINGS = ("session_timeout", "heartbeat_interval", "heartbeat_timeout", "poll_interval")
# Galera counters whose growth during a drain says what replication did (summed over nodes).
_WSREP_COUNTERS = (
    "wsrep_replicated",  # write sets this node originated (one per committing transaction)
    "wsrep_local_cert_failures",  # transactions that lost certification to another node's
    "wsrep_local_bf_aborts",  # local transactions aborted by a replicated one (brute force)
)
# InnoDB's row lock waits: where one server's claims queue behind each other.
_LOCK_COUNTERS = ("Innodb_row_lock_waits", "Innodb_row_lock_time", "Innodb_deadlocks")
_RTT_PROBE = """
import socket, sys, time
samples = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    try:
        socket.create_connection((sys.argv[1], 9), timeout=2).close()
    except OSError:
        pass  # refused: the RST came back after one round trip, nothing answered
    samples.append(time.perf_counter() - t0)
print(" ".join(f"{s:.6f}" for s in samples))
"""


def galera_modes(modes: list[str]) -> list[str]:
    """The forked modes (zygote, pooled) of this run; cold adds minutes and says nothing new."""
    return [m for m in modes if m != "cold"] or modes


def node_options(bench_lab: Lab, mode: str, slots: int) -> dict[str, Any]:
    """What every node of the figure runs with, on both sides of the ratio."""
    defaults = NodeConfig.__dataclass_fields__
    return {
        **{name: defaults[name].default for name in _SHARED_TIMINGS},
        "plugin_dirs": plugin_dirs(bench_lab.base_dir, mode),
        "slots": slots,
        "log_level": "warning",  # info logs a line per claim and ending: real CPU
    }


def run(record: Record, bench_lab: Lab, modes: list[str], tasks: int, slots: int) -> None:
    """Bring the lab up, record its set-up, then per mode the Galera and single-MariaDB figures.

    The lab goes down (every process by PID, namespaces and bridge) whatever happens,
    also when SIGTERM unwinds the bench.
    """
    modes = galera_modes(modes)
    labs: list[MultiDCLab] = []
    failed: list[str] = []

    def noting_failure(name: str, fn: Callable[[], Any]) -> None:
        def call() -> Any:
            try:
                return fn()
            except Exception:  # not SIGTERM or Ctrl-C: nothing to look into
                failed.append(name)
                raise

        record(name, call)

    def up() -> dict[str, Any]:
        # The lab waits for each node's "node.started" (an info line): bring it up at info,
        # then every figure restarts the nodes with the bench's options.
        options = {**node_options(bench_lab, modes[0], slots), "log_level": "info"}
        lab = MultiDCLab.create("3dc", node_options=options)
        labs.append(lab)
        lab.up()
        return describe(lab, node_options(bench_lab, modes[0], slots))

    try:
        noting_failure("galera[3 DC lab]", up)
        if not labs or not labs[0].healthy():
            return
        for mode in modes:
            noting_failure(
                f"galera[{mode},3 DC,1 node per DC]",
                lambda m=mode: drain(labs[0], bench_lab, m, tasks, slots),
            )
            record(
                f"galera[{mode},single MariaDB,3 nodes]",
                lambda m=mode: single_mariadb(bench_lab, m, tasks, slots),
            )
    finally:
        for lab in labs:
            lab.down()
            if failed:  # the servers' and nodes' logs, for the post-mortem
                print(f"   Galera lab logs kept in {lab.base_dir}", flush=True)
            else:
                shutil.rmtree(lab.base_dir, ignore_errors=True)


def describe(lab: MultiDCLab, options: dict[str, Any]) -> dict[str, Any]:
    """The set-up the Galera figures ran on: servers, links between datacenters, node options."""
    status = lab.galera_status("dc1")
    conn = lab.root_connection("dc1")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size, "
                "@@wsrep_sync_wait"
            )
            version, flush, pool, sync_wait = cur.fetchone() or ("?", -1, 0, -1)
    finally:
        conn.close()
    return {
        "up_s": round(lab.up_seconds, 1),
        "datacenters": list(lab.datacenters),
        "galera": f"{version}, provider {status.get('wsrep_provider_version', '?')}",
        "galera_cluster_size": int(status.get("wsrep_cluster_size", "0")),
        "innodb_flush_log_at_trx_commit": int(flush),
        "innodb_buffer_pool_mb": int(pool) // (1024 * 1024),
        "wsrep_sync_wait": int(sync_wait),
        "zookeeper": f"{len(lab.datacenters)} servers, one per datacenter",
        "added_delay_between_dcs": added_delay(lab),
        "rtt_dc1_to_dc2_ms": round_trip_ms(lab, "dc1", "dc2"),
        "node_options": {k: v for k, v in options.items() if k != "plugin_dirs"},
    }


def added_delay(lab: MultiDCLab) -> str:
    """The netem qdiscs on the lab's links (each datacenter's eth0), or that there are none."""
    found = []
    for dc in lab.datacenters:
        out = subprocess.run(
            [*lab.net.exec_prefix(dc), "tc", "qdisc", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
        found += [f"{dc}: {line.strip()}" for line in out.splitlines() if "netem" in line]
    return "; ".join(found) or "none (no netem qdisc: veth pairs on one bridge)"


def round_trip_ms(lab: MultiDCLab, source: str, target: str, samples: int = 20) -> float:
    """Median TCP connect time from one datacenter to another's closed port: one round trip."""
    result = subprocess.run(
        [
            *lab.net.exec_prefix(source),
            sys.executable,
            "-c",
            _RTT_PROBE,
            lab.net.ip(target),
            str(samples),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return round(statistics.median(float(s) for s in result.stdout.split()) * 1000, 3)


def drain(lab: MultiDCLab, bench_lab: Lab, mode: str, tasks: int, slots: int) -> dict[str, Any]:
    """``tasks`` queued no-op tasks drained by one node per datacenter, each on its own Galera."""
    _stop_nodes(lab)
    dsn = lab.dsn("dc1")  # the lab's bridge: reachable from the bench's namespace
    _clear(dsn)
    lab.state.node_options.update(node_options(bench_lab, mode, slots))
    lab.save()
    fill_queued(dsn, tasks)
    wsrep_before = _wsrep_counters(lab)
    locks_before = _lock_counters([lab.root_connection(dc) for dc in lab.galera_dcs])
    meter = CpuMeter()
    meter.add("galera (3 servers)", _pids(lab, "galera"))
    meter.add("zookeeper (3 servers)", _pids(lab, "zk"))
    nodes = []
    try:
        for node_id in lab.node_ids():
            lab.start_node(node_id, wait=None)
        nodes = _pids(lab, "node")
        meter.add("node (+cold runners)", nodes)
        t0 = time.monotonic()
        _wait_drained(lab, dsn, tasks, timeout=max(120.0, tasks / 5))
        wall = time.monotonic() - t0
        _add_runners(meter, nodes)
        cpu = meter.stop()
        span = _span_seconds(dsn)
        wsrep = _wsrep_counters(lab)
        locks = _lock_counters([lab.root_connection(dc) for dc in lab.galera_dcs])
        states = count_states(dsn)
    finally:
        _stop_nodes(lab)
    return {
        "tasks": tasks,
        "nodes": len(nodes),
        "slots_per_node": slots,
        "seconds": round(span, 2),
        "tasks_per_s": round(tasks / span, 1),
        "wall_incl_node_start_s": round(wall, 2),
        "states": states,
        "cpu_ms_per_task": {
            **{group: round(secs * 1000 / tasks, 2) for group, secs in cpu.items()},
            "total": round(sum(cpu.values()) * 1000 / tasks, 2),
        },
        "cpu_busy": round(sum(cpu.values()) / (wall * (os.cpu_count() or 1)), 2),
        "write_sets_per_task": round(
            (wsrep["wsrep_replicated"] - wsrep_before["wsrep_replicated"]) / tasks, 2
        ),
        "cert_failures": wsrep["wsrep_local_cert_failures"]
        - wsrep_before["wsrep_local_cert_failures"],
        "bf_aborts": wsrep["wsrep_local_bf_aborts"] - wsrep_before["wsrep_local_bf_aborts"],
        **_lock_figures(locks_before, locks, tasks),
    }


def single_mariadb(bench_lab: Lab, mode: str, tasks: int, slots: int) -> dict[str, Any]:
    """``throughput`` with 3 nodes on the bench's one MariaDB, and its row lock waits."""
    before = _lock_counters([bench_lab.mariadb.root_connection()])
    figure = throughput(bench_lab, mode, tasks, 3, slots)
    after = _lock_counters([bench_lab.mariadb.root_connection()])
    return {**figure, **_lock_figures(before, after, tasks)}


def _lock_counters(conns: list[Any]) -> dict[str, int]:
    """InnoDB's lock counters summed over these servers' root connections (closed here)."""
    totals = dict.fromkeys(_LOCK_COUNTERS, 0)
    for conn in conns:
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN %s", (_LOCK_COUNTERS,))
                for name, value in cur.fetchall():
                    totals[str(name)] += int(value)
        finally:
            conn.close()
    return totals


def _lock_figures(before: dict[str, int], after: dict[str, int], tasks: int) -> dict[str, Any]:
    waits = after["Innodb_row_lock_waits"] - before["Innodb_row_lock_waits"]
    return {
        "row_lock_waits": waits,
        "row_lock_wait_ms_per_task": round(
            (after["Innodb_row_lock_time"] - before["Innodb_row_lock_time"]) / tasks, 2
        ),
        "deadlocks": after["Innodb_deadlocks"] - before["Innodb_deadlocks"],
    }


def _pids(lab: MultiDCLab, role: str) -> list[int]:
    names = lab.node_ids() if role == "node" else [f"{dc}-{role}" for dc in lab.datacenters]
    return [pid for name in names if (pid := lab.pid(name)) is not None]


def _add_runners(meter: CpuMeter, nodes: list[int]) -> None:
    """Zygotes (with the runners they forked and reaped) and pooled runners still alive."""
    zygotes = [z for n in nodes for z in descendants(n) if _is_zygote(z, n)]
    meter.add("zygote (+forked runners)", zygotes, from_zero=True)
    live = [p for n in nodes for p in descendants(n) if p not in zygotes]
    meter.add("live runners (pooled)", live, from_zero=True)


def _stop_nodes(lab: MultiDCLab, timeout: float = 30.0) -> None:
    """SIGTERM every node (they drain), SIGKILL what is still there after ``timeout``."""
    names = [n for n in lab.node_ids() if lab.alive(n)]
    for name in names:
        lab.signal(name, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(lab.alive(n) for n in names):
        time.sleep(0.05)
    for name in names:
        if lab.alive(name):
            lab.kill(name)


def _clear(dsn: str) -> None:
    """The previous figure's tasks out of the way (their attempts go with them)."""
    db = Database(dsn)
    try:
        db.execute("DELETE FROM tasks")
    finally:
        db.close()


def _wait_drained(lab: MultiDCLab, dsn: str, total: int, timeout: float) -> None:
    """Until ``total`` tasks have left queued/running; fails at once if a node exits."""
    deadline = time.monotonic() + timeout
    db = Database(dsn)
    try:
        while True:
            rows = db.query(
                "SELECT COUNT(*) AS n FROM tasks WHERE state NOT IN ('queued', 'running')"
            )
            if int(rows[0]["n"]) >= total:
                return
            for node_id in lab.node_ids():
                if not lab.alive(node_id):
                    log = lab.node_log(node_id)
                    raise LabError(f"node {node_id} exited; tail of its log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{total} tasks did not finish within {timeout} s")
            time.sleep(0.05)
    finally:
        db.close()


def _span_seconds(dsn: str) -> float:
    db = Database(dsn)
    try:
        row = db.query(
            "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(started_at), MAX(finished_at)) AS us FROM tasks"
        )[0]
    finally:
        db.close()
    return int(row["us"]) / 1e6


def _wsrep_counters(lab: MultiDCLab) -> dict[str, int]:
    totals = dict.fromkeys(_WSREP_COUNTERS, 0)
    for dc in lab.galera_dcs:
        status = lab.galera_status(dc)
        for key in _WSREP_COUNTERS:
            totals[key] += int(status.get(key, "0"))
    return totals


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """Galera 3 DC / single MariaDB, tasks/s and CPU per task, per mode measured in this run."""
    out: dict[str, float] = {}
    for name, galera in figures.items():
        if not name.startswith("galera[") or ",3 DC," not in name:
            continue
        mode = name[len("galera[") :].split(",", 1)[0]
        single = figures.get(f"galera[{mode},single MariaDB,3 nodes]")
        if not isinstance(galera, dict) or not isinstance(single, dict):
            continue
        if galera.get("tasks_per_s") and single.get("tasks_per_s"):
            out[f"throughput Galera 3 DC / single MariaDB ({mode}, 3 nodes)"] = round(
                galera["tasks_per_s"] / single["tasks_per_s"], 2
            )
        g_cpu = galera.get("cpu_ms_per_task", {}).get("total")
        s_cpu = single.get("cpu_ms_per_task", {}).get("total")
        if g_cpu and s_cpu:
            out[f"CPU per task Galera 3 DC / single MariaDB ({mode})"] = round(g_cpu / s_cpu, 2)
    return out
