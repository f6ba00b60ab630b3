"""Schedules on a real cluster: real node processes, MariaDB and ZooKeeper; leaders killed."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from typing import Any

from taskman import Client, TaskState
from taskman.store import Database
from taskman.store.schedules import ScheduleStore, TickTask
from tests.integration.cluster_support import wait_until
from tests.integration.conftest import StartNode

# Short sessions make failovers quick; the ratios stay valid (see NodeConfig checks).
QUICK = {"session_timeout": 3.0, "heartbeat_timeout": 3.0}  # the shortest session allowed
SECOND = timedelta(seconds=1)


def leadership(db: Database) -> tuple[int, str] | None:
    rows = db.query("SELECT epoch, node FROM leadership WHERE name = 'reaper'")
    return (int(rows[0]["epoch"]), rows[0]["node"]) if rows else None


def consecutive(ticks: list[datetime]) -> bool:
    return all(b - a == SECOND for a, b in itertools.pairwise(ticks))


def lateness(task: TickTask) -> float:
    return (task.created_at - task.tick).total_seconds()


def test_killing_and_pausing_the_leader_gives_exactly_one_task_per_tick(
    start_node: StartNode, client: Client, dsn: str
) -> None:
    nodes = {n: start_node(n, dc, **QUICK) for n, dc in (("a", "dc1"), ("b", "dc2"), ("c", "dc3"))}
    added = client.add_schedule("pulse", "demo.tasks:add", plugin="demo", args=(1, 1), every=1)
    store = ScheduleStore(dsn)
    try:
        epochs: list[int] = []
        # SIGKILL, then SIGSTOP (a zombie leader that wakes after its successor took
        # office and must write nothing), then SIGKILL again.
        for fault in ("kill", "pause", "kill"):
            epoch, leader = wait_until(
                lambda: (found := leadership(store.db)) and found[0] not in epochs and found,
                20,
                "a new leader",
            )
            epochs.append(epoch)
            # Let this leader fire a couple of ticks, then kill it mid-stride.
            fired = len(store.tick_tasks("pulse"))
            wait_until(lambda: len(store.tick_tasks("pulse")) >= fired + 2, 10, "ticks fired")  # noqa: B023
            nodes[leader].kill() if fault == "kill" else nodes[leader].pause()
            wait_until(
                lambda: (found := leadership(store.db)) and found[0] != epoch,  # noqa: B023
                20,
                "the next leader after a kill",
            )
            if fault == "kill":
                nodes[leader].start()  # the killed node comes back as a follower
            else:
                nodes[leader].resume()
        time.sleep(2)
        client.pause_schedule("pulse")
        time.sleep(1)  # a pass that read the schedule before the pause has committed by now
        done = store.tick_tasks("pulse")
        schedule = client.get_schedule("pulse")
    finally:
        store.close()
    ticks = [t.tick for t in done]
    # Exactly one task per tick (the UNIQUE key), and no gap: every outage was shorter
    # than the default 60 s misfire grace, so the next leader caught every tick up.
    assert ticks[0] == added.next_tick
    assert consecutive(ticks), [t.isoformat() for t in ticks]
    assert len({t.task_id for t in done}) == len(done) == schedule.ticks_fired
    assert sum(client.counts().values()) == len(done)  # no task without its tick key either
    assert schedule.ticks_skipped == 0 and schedule.last_tick == ticks[-1]
    # The test exercised failovers: ticks were fired late, by several leaders.
    assert len(epochs) == 3 and epochs == sorted(epochs)
    assert max(lateness(t) for t in done) > 1.5
    # Whole log files: events() forgets what a node logged before its restart.
    firing_nodes = {
        n for n, node in nodes.items() if '"schedule.fired"' in node.log_path.read_text()
    }
    assert len(firing_nodes) >= 2, firing_nodes
    for task in done:
        assert client.wait(task.task_id, timeout=30).result == 2
    print(
        f"\n{len(ticks)} ticks over {len(epochs)} leader failovers: "
        f"max lateness {max(lateness(t) for t in done):.2f} s, none lost, none doubled"
    )


def test_misfire_policies_and_overlap_on_a_live_cluster(
    start_node: StartNode, client: Client, dsn: str
) -> None:
    grace = 2
    first: dict[str, datetime] = {}
    for name, policy in (("skip", "skip"), ("once", "run_once"), ("catch", "catch_up")):
        options: dict[str, Any] = {"misfire": policy, "max_catch_up": 2, "misfire_grace": grace}
        schedule = client.add_schedule(
            name, "demo.tasks:add", plugin="demo", args=(0, 0), every=1, **options
        )
        first[name] = schedule.next_tick
    time.sleep(grace + 3)  # no node at all: at least 3 ticks become misfires
    start_node("a", **QUICK)
    # A slow task every second, with overlap control: runs must never overlap.
    client.add_schedule(
        "slow", "demo.tasks:sleep", plugin="demo", args=(1.5,), every=1, overlap="skip"
    )
    store = ScheduleStore(dsn)
    try:
        wait_until(lambda: len(store.tick_tasks("slow")) >= 3, 30, "three slow runs")
        for name in ("skip", "once", "catch", "slow"):
            client.pause_schedule(name)
        time.sleep(1)
        done = {name: store.tick_tasks(name) for name in ("skip", "once", "catch", "slow")}
        skipped = {name: client.get_schedule(name).ticks_skipped for name in done}
    finally:
        store.close()

    # skip: no task for the missed ticks; every tick since the leader came is there.
    ticks = [t.tick for t in done["skip"]]
    assert ticks[0] >= first["skip"] + 2 * SECOND and consecutive(ticks)
    assert skipped["skip"] == (ticks[0] - first["skip"]) // SECOND
    assert lateness(done["skip"][0]) <= grace + 1
    # run_once: one task for all missed ticks, keyed by the first of them.
    ticks = [t.tick for t in done["once"]]
    assert ticks[0] == first["once"] and ticks[1] >= first["once"] + 2 * SECOND
    assert consecutive(ticks[1:])
    assert skipped["once"] == (ticks[1] - first["once"]) // SECOND - 1
    # catch_up 2: the two most recent missed ticks run (late), then every tick.
    ticks = [t.tick for t in done["catch"]]
    assert consecutive(ticks) and ticks[0] >= first["catch"] + SECOND
    assert lateness(done["catch"][0]) > grace and lateness(done["catch"][1]) > grace
    assert skipped["catch"] == (ticks[0] - first["catch"]) // SECOND
    # overlap skip: each run was created only after the previous one had finished.
    slow = [client.get(t.task_id) for t in done["slow"]]
    for before, after in itertools.pairwise(slow):
        assert before.finished_at is not None and before.state is TaskState.SUCCEEDED
        assert after.created_at is not None and after.created_at >= before.finished_at
    assert skipped["slow"] >= 2
