"""Concurrency caps under faults: changed caps, re-claimed tasks, a silent ZooKeeper, leaks.

Gate-level tests drive the node's own coordinator (ZkCoordination) against the
real ZooKeeper; end-to-end tests run real nodes. See docs/architecture.md,
"Concurrency caps", for the admission rule these tests pin down.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskman import Client, TaskState
from taskman.cluster.concurrency import Cap
from taskman.cluster.coordination import ZkCoordination
from taskman.plugins import EXAMPLES_DIR
from taskman.store import Candidate, TaskStore
from tests.faults.zk_support import node_config, proxy_to, watched_paths
from tests.integration.cluster_support import read_log, wait_state, wait_until
from tests.integration.conftest import StartNode

MakeCoord = Callable[..., ZkCoordination]


@pytest.fixture
def make_coord(zk_hosts: str, cluster_name: str) -> Iterator[MakeCoord]:
    made: list[ZkCoordination] = []

    def make(node_id: str = "n1", hosts: str | None = None) -> ZkCoordination:
        coord = ZkCoordination(node_config(hosts or zk_hosts, cluster_name, node_id))
        made.append(coord)
        return coord

    yield make
    for coord in made:
        coord.close()


_ids = iter(range(1, 1_000_000))


def candidate(key: str, limit: int) -> Candidate:
    return Candidate(next(_ids), 0, "demo", None, "demo.tasks:add", key, limit)


def admit(coord: ZkCoordination, key: str, limit: int) -> Any:
    return coord.gate.try_acquire(Cap(key, limit, True), candidate(key, limit))


# -- finding 1: a changed cap takes effect ------------------------------------------------


def test_a_new_cap_on_a_key_is_honoured_not_refused(make_coord: MakeCoord) -> None:
    """kazoo's Semaphore kept the first cap of a key in ZooKeeper and refused every other."""
    gate = make_coord()
    first = [admit(gate, "k", 2) for _ in range(3)]
    assert first[0] and first[1] and first[2] is None, "limit 2 admits two"
    for permit in first[:2]:
        gate.gate.release(permit)
    # A new plugin version raises the cap: three run at once, a fourth waits.
    raised = [admit(gate, "k", 3) for _ in range(4)]
    assert all(raised[:3]) and raised[3] is None
    # A lower cap: admitted only once fewer than 1 permit of the key is held.
    assert admit(gate, "k", 1) is None
    gate.gate.release(raised[0])
    gate.gate.release(raised[1])
    assert admit(gate, "k", 1) is None, "one limit-3 attempt still runs"
    gate.gate.release(raised[2])
    only = admit(gate, "k", 1)
    assert only
    # Every held attempt's own cap counts too: beside a limit-1 holder nothing else runs.
    assert admit(gate, "k", 5) is None
    gate.gate.release(only)
    assert admit(gate, "k", 5)


def test_any_valid_key_names_a_cap(make_coord: MakeCoord) -> None:
    gate = make_coord()
    for key in (".", "..", "a/b", "%2E", "ü ✓", "x" * 200):
        permit = admit(gate, key, 1)
        assert permit and admit(gate, key, 1) is None, key
        gate.gate.release(permit)


def test_two_nodes_racing_never_exceed_the_cap(make_coord: MakeCoord) -> None:
    coords = [make_coord(f"n{i}") for i in range(4)]
    held, most, admitted = 0, 0, 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def contend(coord: ZkCoordination) -> None:
        nonlocal held, most, admitted
        try:
            for _ in range(25):
                permit = admit(coord, "race", 2)
                if permit is None:
                    continue
                with lock:
                    held += 1
                    most = max(most, held)
                    admitted += 1
                time.sleep(0.005)
                with lock:
                    held -= 1
                coord.gate.release(permit)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(c,)) for c in coords for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    print(f"\nrace: {admitted} admissions, most held at once {most} (cap 2)")
    assert most == 2 and admitted > 10


def test_a_release_lost_with_its_connection_is_sent_again(
    make_coord: MakeCoord, zk_hosts: str
) -> None:
    other = make_coord("b")
    with proxy_to(zk_hosts) as proxy:
        coord = make_coord("a", hosts=proxy.hosts)
        permit = admit(coord, "resend", 1)
        assert permit
        proxy.freeze()
        coord.gate.release(permit)  # the delete waits in the proxy...
        time.sleep(0.2)
        proxy.cut()  # ...and is lost with the connection; the session lives on
        proxy.thaw()

        def admitted() -> Any:
            coord.gate.blocked()  # what the node calls on every claim pass
            return admit(other, "resend", 1)

        # Well before the session (4 s) could expire and take the permit with it.
        assert wait_until(admitted, 2.5, "the released permit to be gone")
        assert coord.client.client_id is not None


def test_a_lost_session_gives_its_permits_back(make_coord: MakeCoord) -> None:
    holder, other = make_coord("a"), make_coord("b")
    assert admit(holder, "lost", 1)
    assert admit(other, "lost", 1) is None
    holder.client.stop()  # the session ends: its ephemeral permits go with it
    assert wait_until(lambda: admit(other, "lost", 1), 5, "the permit to come back")


def test_tasks_still_run_after_their_cap_changes(start_node: StartNode, client: Client) -> None:
    start_node("a")
    for limit in (2, 3, 1):
        task_id = client.submit(
            "demo.tasks:add",
            plugin="demo",
            args=(limit, 1),
            concurrency_key="report",
            concurrency_limit=limit,
        )
        task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=10)
        assert task.result == limit + 1


def _plugin_version(root: Path, version: str, cap: int) -> None:
    folder = root / f"capped-{version}"
    shutil.copytree(EXAMPLES_DIR / "demo" / "src", folder / "src")
    (folder / "plugin.toml").write_text(
        f'name = "capped"\nversion = "{version}"\npath = ["src"]\nallow_root = true\n'
        f'[concurrency]\n"demo.tasks:add" = {cap}\n'
    )


def test_a_new_plugin_version_with_another_cap_runs(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    _plugin_version(plugins, "1.0", 2)
    _plugin_version(plugins, "2.0", 5)
    start_node("a", plugin_dirs=[str(plugins)])
    for version in ("1.0", "2.0", "1.0"):
        task_id = client.submit("demo.tasks:add", plugin="capped", version=version, args=(1, 1))
        wait_state(client, task_id, TaskState.SUCCEEDED, timeout=10)


# -- finding 2: a re-claimed task -------------------------------------------------------------


def _requeue_as_the_reaper_would(dsn: str, task_id: int) -> None:
    """What the leader does to an attempt it believes lost (RECLAIM, minus the epoch guard)."""
    store = TaskStore(dsn)
    try:
        changed = store.db.execute(
            "UPDATE tasks SET state = 'queued', reclaims = reclaims + 1, owner = NULL, "
            "owner_datacenter = NULL, run_after = NOW(6) WHERE id = %s AND state = 'running'",
            (task_id,),
        )
        assert changed == 1
    finally:
        store.close()


def test_a_task_reclaimed_from_a_live_owner_runs_once_at_a_time_and_leaks_no_permit(
    start_node: StartNode, client: Client, dsn: str, tmp_path: Path, make_coord: MakeCoord
) -> None:
    log = tmp_path / "exec.log"
    capped = {"concurrency_key": "reclaimed", "concurrency_limit": 2}
    start_node("a")
    task_id = client.submit(
        "demo.tasks:sleep", plugin="demo", args=(3.0, str(log)), max_attempts=3, **capped
    )
    wait_until(lambda: any(e == "start" for *_, e in read_log(log)), 15, "attempt 1 to start")
    _requeue_as_the_reaper_would(dsn, task_id)
    task = wait_state(client, task_id, TaskState.SUCCEEDED, timeout=20)
    assert task.attempt == 2
    rows = read_log(log)
    second_start = rows.index(next(r for r in rows if r[1] == 2 and r[4] == "start"))
    late = [r for r in rows[second_start:] if r[1] == 1]
    assert not late, f"attempt 1 ran on beside attempt 2: {late}"
    # Both permits of the key must be free again: two tasks of cap 2 run side by side.
    ids = [
        client.submit("demo.tasks:sleep", plugin="demo", args=(2.5,), **capped) for _ in range(2)
    ]
    wait_until(
        lambda: all(client.get(i).state is TaskState.RUNNING for i in ids),
        4,
        "both tasks of cap 2 to run at once (a leaked permit leaves room for one)",
    )
    for i in ids:
        wait_state(client, i, TaskState.SUCCEEDED)
    observer = make_coord("observer")
    permits = f"{observer.paths.caps}/reclaimed"
    wait_until(lambda: not observer.client.get_children(permits), 5, "every permit to be returned")


# -- finding 3: deadlines on the claim path -------------------------------------------------------


def test_claim_path_calls_end_within_a_deadline_when_zookeeper_goes_silent(
    make_coord: MakeCoord, zk_hosts: str
) -> None:
    with proxy_to(zk_hosts) as proxy:
        coord = make_coord(hosts=proxy.hosts)
        session = coord.config.session_timeout
        held = admit(coord, "silent", 3)
        assert held
        proxy.freeze()
        took: dict[str, float] = {}

        def timed(name: str, call: Callable[[], Any]) -> None:
            started = time.monotonic()
            with contextlib.suppress(Exception):  # failing is fine; hanging is not
                call()
            took[name] = time.monotonic() - started

        calls: list[tuple[str, Callable[[], Any]]] = [
            ("try_acquire", lambda: admit(coord, "silent", 3)),
            ("release", lambda: coord.gate.release(held)),
            ("claim", lambda: coord.lease.acquire_many([(next(_ids), 1) for _ in range(5)])),
        ]
        for name, call in calls:
            thread = threading.Thread(target=timed, args=(name, call), daemon=True)
            thread.start()
            thread.join(session)
            assert not thread.is_alive(), f"{name} still blocked after {session} s"
        proxy.thaw()
        coord.close()  # while the proxy still forwards: a clean goodbye, not a 5 s timeout
    print(
        f"\nclaim-path calls with ZooKeeper silent: { {k: round(v, 2) for k, v in took.items()} }"
    )
    # Well under the session timeout, so the main loop goes on serving its runners.
    assert max(took.values()) < session / 3


def test_a_silent_zookeeper_does_not_stall_the_node_loop(
    start_node: StartNode, client: Client, zk_hosts: str
) -> None:
    """The loop that admits capped tasks also records outcomes: it must not hang on a cap."""
    with proxy_to(zk_hosts) as proxy:
        node = start_node("a", zookeeper=proxy.hosts, session_timeout=8.0)
        short = client.submit("demo.tasks:sleep", plugin="demo", args=(2.5,))
        wait_state(client, short, TaskState.RUNNING)
        time.sleep(1.2)  # membership (slots used) published: the next ZooKeeper call is a cap's
        proxy.freeze()
        frozen = time.monotonic()
        # A capped candidate for the next claim pass, which asks ZooKeeper for a permit.
        client.submit(
            "demo.tasks:add", plugin="demo", args=(1, 2), concurrency_key="q", concurrency_limit=1
        )
        # The task ends about 1.3 s into the silence; self-fencing would start at 5.2 s.
        wait_state(client, short, TaskState.SUCCEEDED, timeout=4.0)
        print(f"\noutcome recorded {time.monotonic() - frozen:.2f} s into the silence")
        proxy.thaw()
        node.stop(timeout=15)


# -- finding 4: nothing accumulates per call ------------------------------------------------------


def _watch_count(coord: ZkCoordination) -> int:
    client: Any = coord.client
    return sum(len(v) for v in client._data_watchers.values()) + sum(
        len(v) for v in client._child_watchers.values()
    )


def test_the_gate_leaves_no_listener_or_watch_behind(make_coord: MakeCoord, zk_hosts: str) -> None:
    coord, rival = make_coord("a"), make_coord("b")
    blocker = admit(rival, "flat", 1)  # half the tries below are refused: both paths are counted
    session = coord.client.client_id[0]

    def footprint() -> tuple[int, int, int]:
        return (
            len(coord.client.state_listeners),
            _watch_count(coord),
            len(watched_paths(zk_hosts, session)),
        )

    before = footprint()
    for n in range(40):
        if n == 20:
            rival.gate.release(blocker)
        permit = admit(coord, "flat", 1)
        assert (permit is None) == (n < 20)
        if permit is not None:
            coord.gate.release(permit)
    after = footprint()
    print(f"\ngate footprint (listeners, client watches, server watches): {before} -> {after}")
    assert after == before


def test_a_waiting_contender_keeps_one_znode_and_adds_no_watch(
    make_coord: MakeCoord, zk_hosts: str
) -> None:
    leader_coord, waiter_coord = make_coord("a"), make_coord("b")
    leader, waiter = leader_coord.election(), waiter_coord.election()
    assert leader.try_acquire(timeout=2.0) is not None
    session = waiter_coord.client.client_id[0]
    client: Any = waiter_coord.client
    contenders = leader_coord.paths.leader

    assert waiter.try_acquire(timeout=0.1) is None
    before = (len(client.state_listeners), _watch_count(waiter_coord))
    seen = set(client.get_children(contenders))
    for _ in range(30):
        assert waiter.try_acquire(timeout=0.05) is None
    after = (len(client.state_listeners), _watch_count(waiter_coord))
    server_watches = watched_paths(zk_hosts, session)
    print(f"\nwaiting contender: {before} -> {after}, server watches {server_watches}")
    assert after == before and len(server_watches) <= 1
    assert set(client.get_children(contenders)) == seen, "the contender queue churned"
    # Still quick to take over once the leader goes.
    resigned = time.monotonic()
    leader.resign()
    epoch = waiter.try_acquire(timeout=3.0)
    assert epoch is not None and time.monotonic() - resigned < 1.0
