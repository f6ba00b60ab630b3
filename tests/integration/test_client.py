"""taskman.Client against a real MariaDB and a SQLite file: submit, get, list, abort and wait.

Rows are checked through a separate connection (PyMySQL, or the sqlite3 module),
never through the client under test, so a client that lied about what it stored
would be caught. A contract test: every test runs on both backends (``store_dsn``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from taskman import (
    Client,
    IdempotencyConflictError,
    Outcome,
    PayloadTooLargeError,
    Task,
    TaskNotFoundError,
    TaskState,
    TaskStateError,
    ValidationError,
    WaitTimeoutError,
)
from taskman.store import Ending, Finish, TaskStore
from tests.integration.backends import db_now, payload_bytes
from tests.integration.backends import raw as _raw

FN = "demo.tasks:add"
PLUGINS = {"demo": ["1.0"]}


# -- helpers: an independent view of the database --------------------------------


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


def _count(dsn: str, where: str = "1 = 1", args: Any = None) -> int:
    with _raw(dsn) as cur:
        cur.execute(f"SELECT COUNT(*) AS n FROM tasks WHERE {where}", args)
        row = cur.fetchone()
        assert row is not None
        return int(row["n"])


def _db_now(dsn: str) -> datetime:
    return db_now(dsn)


def _claim(dsn: str, task_id: int, fence: int, node: str = "node-a") -> None:
    """Move a queued task to running the way a node does: candidates, then a fenced claim."""
    store = TaskStore(dsn)
    try:
        found = [c for c in store.candidates("dc1", PLUGINS, 100) if c.task_id == task_id]
        assert len(found) == 1, f"task {task_id} is not a candidate"
        claim = store.claim(task_id, found[0].attempt, fence, node, "dc1", "1.0")
        assert claim is not None
        assert claim.fence == fence
    finally:
        store.close()


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c


# -- submit / get ---------------------------------------------------------------------


def test_submit_then_get_round_trips_every_field(client: Client, dsn: str) -> None:
    before = _db_now(dsn)
    plus_two = timezone(timedelta(hours=2))
    not_before = datetime(2099, 1, 2, 3, 4, 5, 678901, tzinfo=plus_two)
    not_after = datetime(2099, 6, 7, 8, 9, 10, 123456, tzinfo=UTC)
    task_id = client.submit(
        FN,
        plugin="demo",
        args=(2, "drei", [4.5, None], {"é": "✓"}),
        kwargs={"scale": 10, "label": "naïve 🐍"},
        version="1.2",
        priority=7,
        not_before=not_before,
        not_after=not_after,
        timeout=12.5,
        max_attempts=5,
        retry_backoff=0.25,
        datacenter="dc-east",
    )
    assert isinstance(task_id, int)
    assert task_id > 0

    task = client.get(task_id)
    assert isinstance(task, Task)
    assert task.id == task_id
    assert task.state is TaskState.QUEUED
    assert task.function == FN
    assert task.plugin == "demo"
    assert task.plugin_version == "1.2"
    assert task.args == [2, "drei", [4.5, None], {"é": "✓"}]
    assert task.kwargs == {"scale": 10, "label": "naïve 🐍"}
    assert task.priority == 7
    assert task.datacenter == "dc-east"
    assert task.timeout == 12.5
    assert task.max_attempts == 5
    assert task.retry_backoff == 0.25
    assert task.idempotency_key is None
    # Aware UTC datetimes come back, the same instants to the microsecond.
    assert task.not_before == not_before
    assert task.not_before is not None
    assert task.not_before.utcoffset() == timedelta(0)
    assert task.not_before.hour == 1  # 03:04 at +02:00 is 01:04 UTC
    assert task.not_after == not_after
    assert task.not_after is not None
    assert task.not_after.utcoffset() == timedelta(0)
    # run_after starts at not_before when that is in the future.
    assert task.run_after == not_before
    assert task.attempts == ()
    assert task.attempt == 0
    assert task.fence == 0
    assert task.owner is None
    assert task.result is None
    assert task.abort_requested is False
    assert task.started_at is None
    assert task.finished_at is None
    assert task.created_at is not None
    assert task.created_at.utcoffset() == timedelta(0)
    assert before <= task.created_at <= _db_now(dsn)

    # The raw row agrees (naive UTC in DATETIME columns).
    with _raw(dsn) as cur:
        cur.execute(
            "SELECT state, not_before, not_after, args FROM tasks WHERE id = %s", (task_id,)
        )
        row = cur.fetchone()
    assert row is not None
    assert row["state"] == "queued"
    assert row["not_before"] == datetime(2099, 1, 2, 1, 4, 5, 678901)
    assert row["not_after"] == datetime(2099, 6, 7, 8, 9, 10, 123456)


def test_submit_defaults(client: Client, dsn: str) -> None:
    task_id = client.submit(FN, plugin="demo")
    task = client.get(task_id)
    assert task.args == []
    assert task.kwargs == {}
    assert task.plugin_version is None
    assert task.priority == 0
    assert task.datacenter is None
    assert task.not_before is None
    assert task.not_after is None
    assert task.timeout is None
    assert task.max_attempts == 3
    assert task.retry_backoff is None  # the claiming node's default applies
    # Without not_before the task is due at once: a node sees it as a candidate.
    assert task.run_after is not None
    assert task.run_after <= _db_now(dsn)
    store = TaskStore(dsn)
    try:
        assert [c.task_id for c in store.candidates("dc1", PLUGINS, 10)] == [task_id]
    finally:
        store.close()


def test_get_unknown_id_raises_not_found(client: Client) -> None:
    task_id = client.submit(FN, plugin="demo")
    with pytest.raises(TaskNotFoundError):
        client.get(task_id + 1000)


def test_submit_ids_are_distinct_and_increasing(client: Client, dsn: str) -> None:
    ids = [client.submit(FN, plugin="demo", args=[i]) for i in range(5)]
    assert ids == sorted(set(ids))
    assert _count(dsn) == 5
    assert [client.get(i).args for i in ids] == [[0], [1], [2], [3], [4]]


# -- list -------------------------------------------------------------------------------


def test_list_filters_newest_first_and_pages(client: Client) -> None:
    alpha = [client.submit(FN, plugin="alpha", args=[i]) for i in range(4)]
    beta = [client.submit(FN, plugin="beta", args=[i]) for i in range(3)]
    aborted = alpha[1]
    assert client.abort(aborted) is TaskState.ABORTED
    everything = sorted(alpha + beta, reverse=True)

    assert [t.id for t in client.list()] == everything
    assert [t.id for t in client.list(plugin="alpha")] == sorted(alpha, reverse=True)
    assert [t.id for t in client.list(plugin="beta")] == sorted(beta, reverse=True)
    assert [t.id for t in client.list(plugin="gamma")] == []
    assert [t.id for t in client.list(state=TaskState.ABORTED)] == [aborted]
    assert [t.id for t in client.list(state="aborted")] == [aborted]
    queued = [t.id for t in client.list(state=TaskState.QUEUED)]
    assert queued == [i for i in everything if i != aborted]
    assert all(t.state is TaskState.QUEUED for t in client.list(state="queued"))
    assert [t.id for t in client.list(state="queued", plugin="alpha")] == sorted(
        (i for i in alpha if i != aborted), reverse=True
    )
    assert client.list(state=TaskState.RUNNING) == []

    # Pages of 3, newest first, each page continuing below the last id seen.
    pages: list[list[int]] = []
    before_id: int | None = None
    while True:
        page = [t.id for t in client.list(limit=3, before_id=before_id)]
        if not page:
            break
        assert len(page) <= 3
        pages.append(page)
        before_id = page[-1]
    assert pages == [everything[0:3], everything[3:6], everything[6:7]]
    assert [t.id for t in client.list(plugin="alpha", limit=2, before_id=alpha[3])] == [
        alpha[2],
        alpha[1],
    ]


def test_list_rows_carry_their_fields(client: Client) -> None:
    task_id = client.submit(FN, plugin="alpha", args=[1, 2], kwargs={"k": "v"}, priority=3)
    (task,) = client.list()
    assert task.id == task_id
    assert task.args == [1, 2]
    assert task.kwargs == {"k": "v"}
    assert task.priority == 3
    assert task.state is TaskState.QUEUED


# -- abort --------------------------------------------------------------------------------


def test_abort_queued_task_is_immediate_and_final(client: Client, dsn: str) -> None:
    task_id = client.submit(FN, plugin="demo")
    other = client.submit(FN, plugin="demo")
    assert client.abort(task_id) is TaskState.ABORTED

    task = client.get(task_id)
    assert task.state is TaskState.ABORTED
    assert task.done
    assert task.abort_requested is True
    assert task.finished_at is not None
    assert task.finished_at.utcoffset() == timedelta(0)
    assert task.finished_at <= _db_now(dsn)
    assert task.attempts == ()
    # The other task is untouched, and the aborted one is no longer a candidate.
    assert client.get(other).state is TaskState.QUEUED
    store = TaskStore(dsn)
    try:
        assert [c.task_id for c in store.candidates("dc1", PLUGINS, 10)] == [other]
    finally:
        store.close()

    with pytest.raises(TaskStateError):
        client.abort(task_id)
    assert client.get(task_id).state is TaskState.ABORTED


def test_abort_unknown_task_raises_not_found(client: Client, dsn: str) -> None:
    task_id = client.submit(FN, plugin="demo")
    with pytest.raises(TaskNotFoundError):
        client.abort(task_id + 1000)
    assert _count(dsn) == 1
    assert client.get(task_id).state is TaskState.QUEUED


def test_abort_running_task_flags_it_for_the_owner(client: Client, dsn: str) -> None:
    task_id = client.submit(FN, plugin="demo")
    _claim(dsn, task_id, fence=7)
    running = client.get(task_id)
    assert running.state is TaskState.RUNNING
    assert running.abort_requested is False

    assert client.abort(task_id) is TaskState.RUNNING
    task = client.get(task_id)
    assert task.state is TaskState.RUNNING
    assert task.abort_requested is True
    assert task.finished_at is None
    assert task.fence == 7
    assert task.owner == "node-a"
    # The owner learns of it through its heartbeat.
    store = TaskStore(dsn)
    try:
        (view,) = store.heartbeat([(task_id, 7)])
        assert view.abort_requested is True
        assert view.fence == 7
    finally:
        store.close()
    # Asking again changes nothing and is not an error while it still runs.
    assert client.abort(task_id) is TaskState.RUNNING
    assert client.get(task_id).state is TaskState.RUNNING

    # Once the owner has stopped it, a further abort is refused.
    store = TaskStore(dsn)
    try:
        assert store.finish(
            Finish(task_id, 1, 7, Ending(Outcome.ABORTED, TaskState.ABORTED, error_type="Aborted"))
        )
    finally:
        store.close()
    assert client.get(task_id).state is TaskState.ABORTED
    with pytest.raises(TaskStateError):
        client.abort(task_id)


# -- wait ---------------------------------------------------------------------------------


def test_wait_returns_the_task_another_thread_finishes(
    client: Client, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = client.submit(FN, plugin="demo", args=[2, 3])
    seen: list[TaskState] = []
    wait_has_polled = threading.Event()
    real_get: Callable[..., Task] = client._store.get

    def spying_get(tid: int, **kw: Any) -> Task:
        task = real_get(tid, **kw)
        seen.append(task.state)
        if not task.state.terminal:
            wait_has_polled.set()
        return task

    monkeypatch.setattr(client._store, "get", spying_get)
    errors: list[BaseException] = []

    def node() -> None:
        store = TaskStore(dsn)
        try:
            # Finish only once wait() has seen the task unfinished.
            assert wait_has_polled.wait(30)
            (cand,) = store.candidates("dc1", PLUGINS, 10)
            claim = store.claim(task_id, cand.attempt, 11, "node-b", "dc1", "1.0")
            assert claim is not None
            assert store.finish(
                Finish(
                    task_id,
                    claim.attempt,
                    11,
                    Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"x": 1}'),
                )
            )
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            store.close()

    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    try:
        task = client.wait(task_id, timeout=30, poll=0.05)
    finally:
        thread.join(30)
    assert not errors
    assert seen[0] is TaskState.QUEUED
    assert seen[-1] is TaskState.SUCCEEDED
    assert task.state is TaskState.SUCCEEDED
    assert task.result == {"x": 1}
    assert task.finished_at is not None
    assert task.fence == 11
    assert task.attempt == 1
    (attempt,) = task.attempts
    assert attempt.outcome is Outcome.SUCCEEDED
    assert attempt.node == "node-b"
    assert attempt.fence == 11
    assert attempt.ended_at is not None


def test_wait_times_out_on_an_unfinished_task(client: Client) -> None:
    task_id = client.submit(FN, plugin="demo")
    with pytest.raises(WaitTimeoutError, match=str(task_id)):
        client.wait(task_id, timeout=0.3, poll=0.05)
    assert client.get(task_id).state is TaskState.QUEUED


def test_wait_on_a_finished_task_returns_at_once(client: Client) -> None:
    task_id = client.submit(FN, plugin="demo")
    client.abort(task_id)
    task = client.wait(task_id, timeout=0)
    assert task.state is TaskState.ABORTED


def test_wait_on_unknown_task_raises_not_found(client: Client) -> None:
    with pytest.raises(TaskNotFoundError):
        client.wait(424242, timeout=1)


# -- validation ------------------------------------------------------------------------------

_NAIVE = datetime(2099, 1, 1, 12, 0, 0)  # naive on purpose
_SOON = datetime(2099, 1, 1, 12, 0, 0, tzinfo=UTC)

INVALID_SUBMISSIONS: dict[str, tuple[dict[str, Any], type[ValidationError]]] = {
    "function_without_colon": ({"function": "demo.tasks.add"}, ValidationError),
    "function_with_space": ({"function": "demo tasks:add"}, ValidationError),
    "function_empty": ({"function": ""}, ValidationError),
    "function_not_a_string": ({"function": 42}, ValidationError),
    "args_not_json": ({"args": [object()]}, ValidationError),
    "args_a_set": ({"args": [{1, 2}]}, ValidationError),
    "args_nan": ({"args": [float("nan")]}, ValidationError),
    "kwargs_not_json": ({"kwargs": {"when": datetime.now(UTC)}}, ValidationError),
    "kwargs_non_string_key": ({"kwargs": {1: "x"}}, ValidationError),
    "args_a_string": ({"args": "abc"}, ValidationError),
    "args_over_limit": ({"args": ["x" * 995]}, PayloadTooLargeError),
    "kwargs_over_limit": ({"kwargs": {"k": "y" * 1000}}, PayloadTooLargeError),
    "not_after_before_not_before": (
        {"not_before": _SOON + timedelta(hours=1), "not_after": _SOON},
        ValidationError,
    ),
    "not_after_equal_not_before": ({"not_before": _SOON, "not_after": _SOON}, ValidationError),
    "not_after_in_the_past": (
        {"not_after": datetime.now(UTC) - timedelta(seconds=1)},
        ValidationError,
    ),
    "naive_not_before": ({"not_before": _NAIVE}, ValidationError),
    "naive_not_after": ({"not_after": _NAIVE}, ValidationError),
    "bad_plugin": ({"plugin": "no spaces"}, ValidationError),
    "bad_version": ({"version": "v1"}, ValidationError),
    "bad_priority": ({"priority": 2**31}, ValidationError),
    "bad_datacenter": ({"datacenter": "dc east"}, ValidationError),
    "empty_idempotency_key": ({"idempotency_key": ""}, ValidationError),
    "zero_max_attempts": ({"max_attempts": 0}, ValidationError),
    "negative_timeout": ({"timeout": -1}, ValidationError),
}


@pytest.mark.parametrize("case", sorted(INVALID_SUBMISSIONS))
def test_invalid_submission_raises_and_inserts_nothing(dsn: str, case: str) -> None:
    overrides, expected = INVALID_SUBMISSIONS[case]
    request: dict[str, Any] = {"function": FN, "plugin": "demo", "args": [1]}
    request.update(overrides)
    function = request.pop("function")
    with Client(dsn, max_payload=1000) as client:
        existing = client.submit(FN, plugin="demo", args=["kept"])
        before = _count(dsn)
        assert before == 1
        with pytest.raises(expected) as info:
            client.submit(function, **request)
        assert isinstance(info.value, ValidationError)
        assert str(info.value)  # says what is wrong
        assert _count(dsn) == before
        assert client.get(existing).args == ["kept"]


def test_payload_limit_is_inclusive(dsn: str) -> None:
    # ["x...x"] is n + 4 bytes of JSON and {} is 2: n = 994 is exactly 1000 bytes.
    with Client(dsn, max_payload=1000) as client:
        task_id = client.submit(FN, plugin="demo", args=["x" * 994])
        assert client.get(task_id).args == ["x" * 994]
        with pytest.raises(PayloadTooLargeError):
            client.submit(FN, plugin="demo", args=["x" * 995])
        # Multi-byte characters count as bytes, not characters.
        with pytest.raises(PayloadTooLargeError):
            client.submit(FN, plugin="demo", args=["é" * 498])
    assert _count(dsn) == 1


def test_large_payload_round_trips_intact(client: Client, dsn: str) -> None:
    blob = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(850_000))
    args = [blob, {"nested": ["ü" * 10_000, "🐍" * 5_000, list(range(1000))]}]
    kwargs = {"tail": "\u2603" * 1000, "quote": "'\"\\%s;--"}
    task_id = client.submit(FN, plugin="demo", args=args, kwargs=kwargs)
    task = client.get(task_id)
    assert task.args == args
    assert task.kwargs == kwargs
    assert 900_000 < payload_bytes(dsn, task_id) <= 1024 * 1024
    (listed,) = client.list()
    assert listed.args == args


# -- idempotency -------------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_task(client: Client, dsn: str) -> None:
    first = client.submit(FN, plugin="demo", args=[1, 2], kwargs={"a": 1}, idempotency_key="k-1")
    assert _count(dsn) == 1
    again = client.submit(FN, plugin="demo", args=(1, 2), kwargs={"a": 1}, idempotency_key="k-1")
    assert again == first
    assert _count(dsn) == 1
    assert client.get(first).idempotency_key == "k-1"
    # Another key is another task.
    other = client.submit(FN, plugin="demo", args=[1, 2], kwargs={"a": 1}, idempotency_key="k-2")
    assert other != first
    assert _count(dsn) == 2
    # The same key still returns the first task after it finished.
    client.abort(first)
    assert (
        client.submit(FN, plugin="demo", args=[1, 2], kwargs={"a": 1}, idempotency_key="k-1")
        == first
    )
    assert _count(dsn) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"args": [1, 3]},
        {"kwargs": {"a": 2}},
        {"function": "demo.tasks:mul"},
        {"plugin": "other"},
        {"version": "2.0"},
    ],
    ids=["args", "kwargs", "function", "plugin", "version"],
)
def test_same_key_with_a_different_request_conflicts(
    client: Client, dsn: str, change: dict[str, Any]
) -> None:
    request: dict[str, Any] = {
        "function": FN,
        "plugin": "demo",
        "args": [1, 2],
        "kwargs": {"a": 1},
        "idempotency_key": "shared",
    }
    first = client.submit(request.pop("function"), **request)
    changed = {"function": FN, **request, **change}
    with pytest.raises(IdempotencyConflictError) as info:
        client.submit(changed.pop("function"), **changed)
    assert isinstance(info.value, ValidationError)
    assert str(first) in str(info.value)
    assert _count(dsn) == 1
    task = client.get(first)
    assert task.args == [1, 2]
    assert task.kwargs == {"a": 1}
    assert task.function == FN


def test_keys_differing_by_trailing_spaces_are_different_keys(client: Client, dsn: str) -> None:
    plain = client.submit(FN, plugin="demo", args=[1], idempotency_key="order-1")
    padded = client.submit(FN, plugin="demo", args=[1], idempotency_key="order-1 ")
    # Today the second submit silently returns the first task (created nothing).
    assert padded != plain
    assert _count(dsn) == 2
    assert client.get(padded).idempotency_key == "order-1 "


def _submit_at_barrier(client: Client, barrier: threading.Barrier, key: str) -> int:
    barrier.wait()
    return client.submit(FN, plugin="demo", args=[key], idempotency_key=key)


def test_concurrent_submits_with_one_key_make_one_task(dsn: str) -> None:
    threads_per_round = 8
    rounds = 4
    clients = [Client(dsn) for _ in range(threads_per_round)]
    try:
        for c in clients:  # connect up front so the barrier lines up the INSERTs
            c.counts()
        with ThreadPoolExecutor(max_workers=threads_per_round) as pool:
            for round_no in range(rounds):
                key = f"race-{round_no}"
                barrier = threading.Barrier(threads_per_round, timeout=30)
                futures = [pool.submit(_submit_at_barrier, c, barrier, key) for c in clients]
                ids = [f.result(timeout=60) for f in futures]  # re-raises any error
                assert len(set(ids)) == 1, f"round {round_no}: ids {ids}"
                assert _count(dsn, "idempotency_key = %s", (key,)) == 1
                with _raw(dsn) as cur:
                    cur.execute("SELECT id, args FROM tasks WHERE idempotency_key = %s", (key,))
                    assert list(cur.fetchall()) == [{"id": ids[0], "args": f'["{key}"]'}]
        assert _count(dsn) == rounds
    finally:
        for c in clients:
            c.close()


def test_counts_by_state(client: Client, dsn: str) -> None:
    a = client.submit(FN, plugin="demo")
    client.submit(FN, plugin="demo")
    b = client.submit(FN, plugin="demo")
    client.abort(a)
    _claim(dsn, b, fence=3)
    assert client.counts() == {"queued": 1, "aborted": 1, "running": 1}
