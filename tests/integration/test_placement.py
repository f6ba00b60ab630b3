"""What nodes serve, in the database: published by nodes, read by the thin client.

The store and the client's refusals run on both backends (MariaDB, SQLite); a
real node shows it publishes at start and keeps its rows fresh.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman import Client, TaskState, UnservedError
from taskman.cluster.served import ServedPublisher, offers_of
from taskman.placement import Cap
from taskman.plugins import EXAMPLES_DIR, PluginRegistry, load_manifest
from taskman.store import make_database
from taskman.store.migrations import applied_versions, latest_version, migrate
from taskman.store.placement import Offer, PlacementStore
from tests.integration.backends import raw
from tests.integration.conftest import StartNode

DEMO = Offer("demo", "1.0", ("demo.tasks:*",), {"demo.tasks:settle": 2})
GREETER = Offer("greeter", "2.0", None, {})


@pytest.fixture
def placement(store_dsn: str) -> Iterator[PlacementStore]:
    store = PlacementStore(make_database(store_dsn))
    yield store
    store.db.close()


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))

    warning = info


def test_publish_upserts_one_row_per_node_and_version(placement: PlacementStore) -> None:
    assert placement.served() == []
    placement.publish("n1", "dc1", [DEMO, GREETER])
    placement.publish("n2", "dc2", [DEMO])
    rows = placement.served()
    assert [(r.plugin, r.version, r.datacenter, r.node) for r in rows] == [
        ("demo", "1.0", "dc1", "n1"),
        ("demo", "1.0", "dc2", "n2"),
        ("greeter", "2.0", "dc1", "n1"),
    ]
    assert rows[0].functions == ("demo.tasks:*",) and rows[0].concurrency == {
        "demo.tasks:settle": 2
    }
    assert rows[2].functions is None and rows[2].concurrency == {}
    assert all(0 <= r.age < 5 and r.live for r in rows)

    # A refresh moves last_seen and takes the node's current manifest and datacenter.
    time.sleep(0.3)
    before = {r.node: r.age for r in placement.served() if r.plugin == "demo"}
    placement.publish("n1", "dc3", [Offer("demo", "1.0", ("demo.*:*",), {})])
    after = {r.node: r for r in placement.served() if r.plugin == "demo"}
    assert after["n1"].age < before["n1"] and after["n2"].age >= before["n2"]
    assert after["n1"].datacenter == "dc3" and after["n1"].functions == ("demo.*:*",)
    assert len(placement.served()) == 3  # upserted, not added


def test_ages_come_from_the_database_clock(store_dsn: str, placement: PlacementStore) -> None:
    placement.publish("n1", "dc1", [DEMO])
    old = placement.now().replace(tzinfo=None)
    with raw(store_dsn) as cur:
        cur.execute(
            "UPDATE served_plugins SET last_seen = %s WHERE node = 'n1'",
            (old.replace(year=old.year - 1),),
        )
    (row,) = placement.served()
    assert 364 * 86_400 < row.age < 367 * 86_400 and not row.live


def test_running_attempts_under_a_cap(store_dsn: str, placement: PlacementStore) -> None:
    with Client(store_dsn) as client:
        keyed = [
            client.submit("demo.tasks:add", plugin="demo", concurrency_key="k", concurrency_limit=2)
            for _ in range(2)
        ]
        plain = client.submit("demo.tasks:settle", plugin="demo")
        own = client.submit(
            "demo.tasks:settle", plugin="demo", concurrency_key="x", concurrency_limit=5
        )
    with raw(store_dsn) as cur:
        for task_id in [*keyed, plain, own]:
            cur.execute("UPDATE tasks SET state = 'running' WHERE id = %s", (task_id,))
    assert placement.running_under(Cap("k", 2, by_key=True), "demo", "demo.tasks:add") == 2
    # plugin:function holders: tasks without a key of their own; "own" holds key x instead.
    assert (
        placement.running_under(
            Cap("demo:demo.tasks:settle", 2, False), "demo", "demo.tasks:settle"
        )
        == 1
    )


def test_the_client_refuses_what_no_node_ever_served(
    store_dsn: str, placement: PlacementStore
) -> None:
    with Client(store_dsn) as client:
        # A database no node has published to refuses nothing (a fresh install).
        first = client.submit("x.y:z", plugin="nope")
        placement.publish("n1", "dc1", [DEMO, GREETER])
        # The empty read was not reused: the node counts at once.
        with pytest.raises(UnservedError, match="no node has ever served plugin 'nope'") as caught:
            client.submit("x.y:z", plugin="nope")
        assert caught.value.served == "plugins demo 1.0; greeter 2.0"
        with pytest.raises(UnservedError, match=r"version 1\.0"):
            client.submit("greeter:greet", plugin="greeter", version="1.0")
        with pytest.raises(UnservedError, match="datacenter 'dc2'"):
            client.submit("demo.tasks:add", plugin="demo", datacenter="dc2")
        with pytest.raises(UnservedError, match="does not allow os:getcwd"):
            client.submit("os:getcwd", plugin="demo")
        assert [t.id for t in client.list()] == [first]  # nothing stored by the refusals

        queued = client.submit("x.y:z", plugin="nope", allow_unserved=True)
        assert client.get(queued).state is TaskState.QUEUED
        assert client.submit("demo.tasks:add", plugin="demo", datacenter="dc1") > queued

        # A refusal is re-checked against a fresh read: a node started since counts.
        placement.publish("n2", "dc2", [Offer("nope", "1.0", None, {})])
        assert client.submit("x.y:z", plugin="nope", datacenter="dc2") > queued


def test_a_client_newer_than_the_schema_submits_unchecked(store_dsn: str) -> None:
    """Upgraded before `taskman db migrate`: no served_plugins yet, submits work as before."""
    with raw(store_dsn) as cur:
        cur.execute("DROP TABLE served_plugins")
    with Client(store_dsn) as client:
        task_id = client.submit("x.y:z", plugin="nope")
        assert client.submit("x.y:z", plugin="nope", datacenter="dc9") > task_id
        assert client.why_queued(task_id) == []


def test_a_publisher_writes_at_once_then_on_its_interval_or_a_change(
    placement: PlacementStore, tmp_path: Path
) -> None:
    registry = PluginRegistry.scan([EXAMPLES_DIR])
    log = _Log()
    publisher = ServedPublisher(placement, "n1", "dc1", registry, log, interval=10.0)
    assert publisher.publish_due(100.0)
    assert {(r.plugin, r.version) for r in placement.served()} == {
        ("demo", "1.0"),
        ("greeter", "1.0"),
        ("greeter", "2.0"),
    }
    assert log.events == [
        ("node.published", {"plugins": ["demo 1.0", "greeter 1.0", "greeter 2.0"]})
    ]
    assert not publisher.publish_due(105.0)
    assert publisher.publish_due(110.0)  # the refresh: no new log line
    assert len(log.events) == 1
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "plugin.toml").write_text('name = "extra"\nversion = "0.1"\nallow_root = true\n')
    registry.add(load_manifest(extra))
    assert offers_of(registry)[-1].plugin == "extra"
    assert publisher.publish_due(111.0)  # what it serves changed: at once
    assert ("extra", "0.1") in {(r.plugin, r.version) for r in placement.served()}


def test_a_failed_write_is_logged_and_tried_again(
    store_dsn: str, placement: PlacementStore
) -> None:
    log = _Log()
    publisher = ServedPublisher(placement, "n1", "dc1", PluginRegistry.scan([EXAMPLES_DIR]), log)
    with raw(store_dsn) as cur:
        cur.execute("ALTER TABLE served_plugins RENAME TO served_away")
    assert not publisher.publish_due(0.0)
    assert [name for name, _ in log.events] == ["node.publish_failed"]
    assert not publisher.publish_due(1.0)  # the next try waits for the interval
    with raw(store_dsn) as cur:
        cur.execute("ALTER TABLE served_away RENAME TO served_plugins")
    assert publisher.publish_due(1000.0)
    assert [name for name, _ in log.events] == ["node.publish_failed", "node.published"]


def test_an_embedded_file_of_version_5_gets_the_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    assert migrate(url, target=5) == [1, 2, 3, 4, 5]  # what taskman dev made before version 6
    assert migrate(url) == [6]
    db = make_database(url)
    try:
        assert applied_versions(db) == list(range(1, latest_version() + 1))
        PlacementStore(db).publish("dev", "local", [DEMO])
        assert len(PlacementStore(db).served()) == 1
    finally:
        db.close()


def test_a_node_publishes_what_it_serves_at_start(dsn: str, start_node: StartNode) -> None:
    start_node("a", datacenter="dc2")
    store = PlacementStore(make_database(dsn))
    try:
        rows = store.served()  # written before node.started
        assert {(r.node, r.datacenter, r.plugin, r.version) for r in rows} == {
            ("a", "dc2", "demo", "1.0"),
            ("a", "dc2", "greeter", "1.0"),
            ("a", "dc2", "greeter", "2.0"),
        }
        demo = next(r for r in rows if r.plugin == "demo")
        assert demo.functions == ("demo.tasks:*",) and demo.concurrency == {"demo.tasks:settle": 2}
        assert all(r.live for r in rows)
    finally:
        store.db.close()
    with Client(dsn) as client, pytest.raises(UnservedError, match="datacenter 'dc1'"):
        client.submit("demo.tasks:add", plugin="demo", datacenter="dc1")
