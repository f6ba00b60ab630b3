"""A randomised schedule of faults on the 3-datacenter lab, for soak runs.

Not part of the default run (marker ``soak``, deselected in pyproject's addopts):

    scripts/chaos-soak --seconds 1800 --seed 42      # or
    TASKMAN_SOAK_SECONDS=600 TASKMAN_SOAK_SEED=7 pytest tests/chaos/test_soak.py -m soak -s
    TASKMAN_SOAK_FAULTS=stall-node,kill-queries scripts/chaos-soak --seconds 120

Each round submits tasks, waits until they run, applies one fault drawn from the
seeded generator, restores the lab, and runs the full checker. The seed is
printed first, so a failing schedule can be replayed exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable

import pymysql
import pytest

from taskman.lab.multidc import APP_USER, MultiDCLab
from tests.chaos.hostile_mix import HostileMix
from tests.chaos.support import (
    BoundExceededError,
    Fault,
    Scenario,
    busiest,
    kill_pids,
    live_client,
    wait_until,
)

Faulter = Callable[[MultiDCLab, Scenario, dict[str, list[int]], random.Random], Fault]


def _kill_dc(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    dc = rng.choice(lab.datacenters)
    at = time.time()
    lab.kill_dc(dc)
    s.wait_done(avoid=dc)
    return Fault(at, target_dc=dc, bound=s.session + 5, notes=[f"kill {dc}"])


def _partition(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    return _cut(lab, s, rng.choice(lab.datacenters), rng, "cut")


def _cut(lab: MultiDCLab, s: Scenario, dc: str, rng: random.Random, label: str) -> Fault:
    at = time.time()
    lab.partition_dc(dc)
    hold = rng.uniform(1.0, s.session + 8)
    time.sleep(hold)
    healed = time.time()
    lab.heal(dc)
    return Fault(
        at,
        target_dc=dc,
        minority_window=(at, healed),
        bound=s.session + 5,
        notes=[f"{label} {dc} {hold:.1f} s"],
    )


def _pause(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    node = rng.choice(sorted(by_node))
    hold = rng.uniform(1.0, s.session + 6)
    at = time.time()
    lab.pause_node(node)
    time.sleep(hold)
    lab.resume_node(node)
    return Fault(at, target_node=node, bound=s.session + 5, notes=[f"pause {node} {hold:.1f} s"])


def _kill_runners(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    ids = [t for ids in by_node.values() for t in ids]
    victims = rng.sample(ids, k=max(1, len(ids) // 3))
    at = time.time()
    kill_pids(s.runner_pids(victims))
    return Fault(at, bound=5.0, notes=[f"kill {len(victims)} runners"])


def _kill_leader(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    leader = lab.leader_node() or busiest(by_node)
    at = time.time()
    lab.kill(leader)
    return Fault(at, target_node=leader, bound=s.session + 5, notes=[f"kill leader {leader}"])


def _restart_galera(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    dc = rng.choice(lab.galera_dcs)
    at = time.time()
    lab.restart_galera(dc)
    bound = float(lab.state.node_options["heartbeat_timeout"]) + 5
    return Fault(at, target_dc=dc, bound=bound, notes=[f"restart Galera {dc}"])


def _kill_zk(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    dc = rng.choice(lab.datacenters)
    at = time.time()
    lab.signal(f"{dc}-zk", signal.SIGKILL)
    return Fault(at, bound=s.session + 5, notes=[f"kill ZooKeeper {dc}"])


def _freeze_galera(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    """A database server hangs (SIGSTOP), for less or more than heartbeat_timeout."""
    heartbeat_timeout = float(lab.state.node_options["heartbeat_timeout"])
    dc = rng.choice(lab.galera_dcs)
    hold = rng.uniform(1.0, heartbeat_timeout + 4)
    at = time.time()
    lab.signal(f"{dc}-galera", signal.SIGSTOP)
    try:
        time.sleep(hold)
    finally:
        lab.signal(f"{dc}-galera", signal.SIGCONT)
    # A stalled leader resigns after heartbeat_timeout; its successor then waits
    # heartbeat_timeout on its own clock before reclaiming (docs/architecture.md).
    bound = 2 * heartbeat_timeout + 5
    return Fault(at, target_dc=dc, bound=bound, notes=[f"freeze Galera {dc} {hold:.1f} s"])


def _pause_zk_leader(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    """The ZooKeeper leader hangs: its followers answer reads from a stale view, then elect."""
    leader = lab.zk_leader() or rng.choice(lab.datacenters)
    hold = rng.uniform(0.5, s.session)
    at = time.time()
    lab.signal(f"{leader}-zk", signal.SIGSTOP)
    try:
        time.sleep(hold)
    finally:
        lab.signal(f"{leader}-zk", signal.SIGCONT)
    return Fault(at, bound=s.session + 5, notes=[f"pause ZooKeeper leader {leader} {hold:.1f} s"])


def _cut_zk_leader_dc(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    """Cut off the datacenter of the ZooKeeper leader: the majority must ride it out."""
    dc = lab.zk_leader() or rng.choice(lab.datacenters)
    return _cut(lab, s, dc, rng, "cut ZooKeeper leader's")


def _kill_queries(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    """KILL QUERY and KILL CONNECTION on every statement of one Galera node, for a while."""
    dc = rng.choice(lab.galera_dcs)
    hold = rng.uniform(2.0, 8.0)
    killed = 0
    at = time.time()
    conn = lab.root_connection(dc)
    try:
        with conn.cursor() as cur:
            while time.time() < at + hold:
                cur.execute(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE user = %s AND command = 'Query' AND id <> CONNECTION_ID()",
                    (APP_USER,),
                )
                for (thread_id,) in cur.fetchall():
                    kind = "CONNECTION" if rng.random() < 0.25 else "QUERY"
                    with contextlib.suppress(pymysql.err.OperationalError):  # it finished first
                        cur.execute(f"KILL {kind} {int(thread_id)}")
                        killed += 1
    finally:
        conn.close()
    bound = float(lab.state.node_options["heartbeat_timeout"]) + 5
    return Fault(
        at, target_dc=dc, bound=bound, notes=[f"kill {killed} statements in {dc} {hold:.1f} s"]
    )


def _stall_node(
    lab: MultiDCLab, s: Scenario, by_node: dict[str, list[int]], rng: random.Random
) -> Fault:
    """A short VM stall: a node and its runners frozen together, well short of the session."""
    node = rng.choice(sorted(by_node))
    hold = rng.uniform(0.2, 0.6) * s.session
    at = time.time()
    frozen = lab.freeze_node_tree(node)
    try:
        time.sleep(hold)
    finally:
        lab.thaw(frozen)
    return Fault(at, target_node=node, bound=s.session + 5, notes=[f"stall {node} {hold:.1f} s"])


FAULTS: dict[str, Faulter] = {
    "kill-dc": _kill_dc,
    "partition-dc": _partition,
    "pause-node": _pause,
    "kill-runners": _kill_runners,
    "kill-leader": _kill_leader,
    "restart-galera": _restart_galera,
    "kill-zk": _kill_zk,
    "freeze-galera": _freeze_galera,
    "pause-zk-leader": _pause_zk_leader,
    "cut-zk-leader-dc": _cut_zk_leader_dc,
    "kill-queries": _kill_queries,
    "stall-node": _stall_node,
}


def _check_hostile(lab: MultiDCLab, mix: HostileMix, timeout: float = 120.0) -> list[str]:
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    while not mix.done():
        if time.monotonic() > deadline:
            left = [h.kind for h in mix.tasks if h.task_id not in mix.ended]
            return [*problems, f"hostile tasks not terminal after {timeout:.0f} s: {left}"]
        try:
            with live_client(lab) as client:
                problems += mix.poll(client)
        except AssertionError:
            pass  # no Synced Galera node just now: ask again
        time.sleep(0.2)
    return problems


@pytest.mark.soak
def test_random_fault_schedule(lab3: MultiDCLab) -> None:
    seconds = float(os.environ.get("TASKMAN_SOAK_SECONDS", "300"))
    seed = int(os.environ.get("TASKMAN_SOAK_SEED", str(random.randrange(1 << 32))))
    print(f"\nsoak: seed {seed}, {seconds:.0f} s (replay: TASKMAN_SOAK_SEED={seed})", flush=True)
    rng = random.Random(seed)
    # TASKMAN_SOAK_FAULTS=kill-queries,stall-node: only those (to work on one fault).
    only = [f for f in os.environ.get("TASKMAN_SOAK_FAULTS", "").split(",") if f]
    unknown = set(only) - set(FAULTS)
    assert not unknown, f"unknown faults {sorted(unknown)}: {', '.join(sorted(FAULTS))}"
    names = sorted(only or FAULTS)
    deadline = time.monotonic() + seconds
    liveness: list[str] = []
    round_no = 0
    hostile = 0
    while time.monotonic() < deadline:
        round_no += 1
        if not lab3.healthy():
            lab3.restore()
        name = rng.choice(names)
        s = Scenario(lab3, f"soak{round_no}-{name}", tasks=rng.randint(3, 10))
        s.submit()
        mix = HostileMix(lab3.base_dir, s.name, rng, rng.randint(1, 3))
        with live_client(lab3) as client:
            mix.submit(client)
        by_node = s.wait_running()
        fault = FAULTS[name](lab3, s, by_node, rng)
        try:
            s.check(fault)  # safety violations raise AssertionError and end the soak
        except BoundExceededError as exc:
            liveness.append(str(exc))  # counted and reported; the soak goes on
        problems = _check_hostile(lab3, mix)
        assert not problems, f"{s.name}: hostile tasks:\n" + "\n".join(problems)
        hostile += len(mix.tasks)
        with live_client(lab3) as client:
            wait_until(lambda: client.counts() is not None, 10, "the database")
    print(
        f"soak: {round_no} rounds, seed {seed}, {hostile} hostile tasks ended clean; "
        f"liveness misses: {len(liveness)}"
    )
    for line in liveness:
        print(f"  {line}")
