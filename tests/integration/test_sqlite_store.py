"""The SQLite backend's own behaviour: WAL concurrency, busy retry, times, migrations.

The store contract (claims, fencing, the client) is tested on both backends in
test_store_fencing.py and test_client.py; this file covers what only SQLite has.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskman import Client, Outcome, TaskState, TransientStoreError
from taskman.store import Ending, Finish, SQLiteDatabase, TaskStore
from taskman.store.backend import Cursor
from taskman.store.migrations import applied_versions, latest_version, migrate
from taskman.store.schedules import ScheduleStore
from tests.integration.backends import raw, sqlite_database

FN = "demo.tasks:add"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)


def _hold_write_lock(url: str, seconds: float, started: threading.Event) -> threading.Thread:
    """A thread whose SQLiteDatabase keeps a write transaction open for ``seconds``."""

    def hold() -> None:
        db = SQLiteDatabase(url)
        try:

            def fn(cur: Cursor) -> None:
                cur.execute("UPDATE tasks SET priority = priority + 1")
                started.set()
                time.sleep(seconds)

            db.run_once(fn)
        finally:
            db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread


def test_the_file_is_in_wal_mode_with_foreign_keys(url: str) -> None:
    db = SQLiteDatabase(url)
    try:
        assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        assert db.query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
        assert db.ping()
    finally:
        db.close()


def test_readers_do_not_wait_for_a_writer_and_see_the_last_commit(url: str) -> None:
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo", priority=1)
    reader = SQLiteDatabase(url)
    try:
        started = threading.Event()
        writer = _hold_write_lock(url, 1.0, started)
        t0 = time.monotonic()
        # A SELECT through query() reads the snapshot before the writer's change, at once.
        sql = "SELECT priority FROM tasks WHERE id = %s"
        assert reader.query(sql, (task_id,)) == [{"priority": 1}]
        assert time.monotonic() - t0 < 0.5
        writer.join(10)
        assert reader.query(sql, (task_id,)) == [{"priority": 2}]
    finally:
        reader.close()


def test_a_second_writer_waits_for_the_lock_then_applies(url: str) -> None:
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo")
        started = threading.Event()
        writer = _hold_write_lock(url, 0.5, started)
        t0 = time.monotonic()
        assert client.abort(task_id) is TaskState.ABORTED
        assert time.monotonic() - t0 >= 0.3
        writer.join(10)
    with raw(url) as cur:
        cur.execute("SELECT state, priority FROM tasks WHERE id = %s", (task_id,))
        assert cur.fetchone() == {"state": "aborted", "priority": 1}


def test_busy_past_the_timeout_is_transient_and_retried(url: str) -> None:
    impatient = SQLiteDatabase(url, busy_timeout=0.05, retry_deadline=10.0)
    hasty = SQLiteDatabase(url, busy_timeout=0.05, retry_deadline=0.2)
    try:
        started = threading.Event()
        writer = _hold_write_lock(url, 1.0, started)
        with pytest.raises(TransientStoreError):
            hasty.execute("UPDATE tasks SET priority = 0")
        # SQLITE_BUSY is retried with jitter until the writer is done.
        assert impatient.execute("UPDATE tasks SET priority = 0") == 0
        writer.join(10)
    finally:
        impatient.close()
        hasty.close()


def test_one_database_object_serves_two_threads(url: str) -> None:
    db = SQLiteDatabase(url)
    store = TaskStore(db)
    try:
        with Client(url) as client:
            ids = [client.submit(FN, plugin="demo", args=[i]) for i in range(40)]

        def claim_half(offset: int) -> int:
            got = 0
            for n, task_id in enumerate(ids[offset::2]):
                if store.claim(task_id, 0, 1000 + offset * 100 + n, "n", "dc1", "1.0"):
                    got += 1
                store.heartbeat([(task_id, 1000 + offset * 100 + n)])
            return got

        with ThreadPoolExecutor(2) as pool:
            assert sum(pool.map(claim_half, [0, 1])) == 40
        assert len(store.running()) == 40
    finally:
        store.close()


def test_concurrent_claims_from_two_files_handles_make_one_winner(url: str) -> None:
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo")
    stores = [TaskStore(url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def claim(i: int) -> bool:
        barrier.wait()
        return stores[i].claim(task_id, 0, 10 + i, f"n{i}", "dc1", "1.0") is not None

    try:
        with ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(claim, range(4))) == [False, False, False, True]
    finally:
        for s in stores:
            s.close()


def test_another_process_submits_while_this_one_claims(url: str) -> None:
    """The embedded shape: `taskman submit` in one process, the node in another, one file."""
    script = (
        "import sys\n"
        "from taskman import Client\n"
        "with Client(sys.argv[1]) as c:\n"
        "    for i in range(100):\n"
        "        c.submit('demo.tasks:add', plugin='demo', args=[i], idempotency_key=f'k{i}')\n"
    )
    submitter = subprocess.Popen([sys.executable, "-c", script, url])
    store = TaskStore(url)
    claimed: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(claimed) < 100 and time.monotonic() < deadline:
            for cand in store.candidates("dc1", {"demo": ["1.0"]}, 10):
                assert store.claim(cand.task_id, 0, 1 + cand.task_id, "n", "dc1", "1.0")
                claimed.add(cand.task_id)
        assert submitter.wait(30) == 0
    finally:
        if submitter.poll() is None:
            submitter.kill()
        store.close()
    assert len(claimed) == 100
    with raw(url) as cur:
        cur.execute("SELECT COUNT(*) AS n FROM attempts")
        assert cur.fetchone() == {"n": 100}


def test_datetimes_round_trip_as_naive_utc_with_microseconds(url: str) -> None:
    plus_two = timezone(timedelta(hours=2))
    not_before = datetime(2099, 1, 2, 3, 4, 5, 6, tzinfo=plus_two)
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo", not_before=not_before)
        task = client.get(task_id)
    assert task.not_before == not_before
    assert task.run_after == not_before
    assert task.created_at is not None
    assert abs(task.created_at - datetime.now(UTC)) < timedelta(seconds=5)
    db = SQLiteDatabase(url)
    try:
        (row,) = db.query("SELECT not_before, created_at FROM tasks WHERE id = %s", (task_id,))
        assert row["not_before"] == datetime(2099, 1, 2, 1, 4, 5, 6)
        assert row["not_before"].tzinfo is None
        assert isinstance(row["created_at"], datetime)
        now = db.query(db.q.NOW)[0]["NOW(6)"]
        assert isinstance(now, datetime)
        assert abs(now - datetime.now(UTC).replace(tzinfo=None)) < timedelta(seconds=5)
    finally:
        db.close()
    with raw(url) as cur:  # stored as fixed-width UTC text
        cur.execute("SELECT CAST(not_before AS BLOB) AS t FROM tasks WHERE id = %s", (task_id,))
        assert cur.fetchone() == {"t": b"2099-01-02 01:04:05.000006"}


def test_now_is_one_value_per_statement_and_strictly_later_next_time(url: str) -> None:
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo")
    store = TaskStore(url)
    try:
        claim = store.claim(task_id, 0, 5, "n", "dc1", "1.0")
        assert claim is not None
        task = store.get(task_id)
        assert task.heartbeat_at == task.started_at  # one NOW for the whole claim
        store.heartbeat([(task_id, 5)])
        later = store.get(task_id)
        assert later.heartbeat_at is not None
        assert task.heartbeat_at is not None
        assert later.heartbeat_at > task.heartbeat_at
    finally:
        store.close()


def test_prune_deletes_attempts_with_their_task_and_respects_the_guard(url: str) -> None:
    with Client(url) as client:
        task_id = client.submit(FN, plugin="demo")
    store = TaskStore(url)
    try:
        assert store.claim(task_id, 0, 7, "n", "dc1", "1.0")
        assert store.finish(
            Finish(task_id, 1, 7, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="1"))
        )
        assert store.take_leadership("reaper", 3, "n")
        assert store.max_token() == 7  # the largest of fences and epochs
        assert store.count_prunable(TaskState.SUCCEEDED, -60) == 1
        assert store.prune(TaskState.SUCCEEDED, -60, role="reaper", epoch=2, batch=10) == 0
        assert store.prune(TaskState.SUCCEEDED, -60, role="reaper", epoch=3, batch=10) == 1
        assert store.max_token() == 3  # a pruned task's fence guards nothing any more
    finally:
        store.close()
    with raw(url) as cur:
        cur.execute("SELECT COUNT(*) AS n FROM attempts")
        assert cur.fetchone() == {"n": 0}


def test_tick_task_lookup_is_case_sensitive_and_escapes_wildcards(url: str) -> None:
    with Client(url) as client:
        for name in ("a_b", "aXb", "A_B"):
            client.add_schedule(name, FN, plugin="demo", every=3600)
    db = SQLiteDatabase(url)
    schedules = ScheduleStore(db)
    try:
        assert TaskStore(db).take_leadership("reaper", 1, "n")
        with raw(url) as cur:
            due = datetime.now(UTC) - timedelta(seconds=1)
            cur.execute("UPDATE schedules SET next_tick = %s", (due,))
        for name in ("a_b", "aXb", "A_B"):
            fired = schedules.fire(name, role="reaper", epoch=1)
            assert fired is not None
            assert len(fired.task_ids) == 1
        assert len(schedules.tick_tasks("a_b")) == 1
        assert len(schedules.tick_tasks("A_B")) == 1
    finally:
        db.close()


def test_migrate_is_idempotent_and_safe_to_run_concurrently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(url), range(4)))
    assert sorted(map(tuple, results)) == [(), (), (), tuple(range(1, latest_version() + 1))]
    assert migrate(url) == []
    db = SQLiteDatabase(url)
    try:
        assert applied_versions(db) == list(range(1, latest_version() + 1))
    finally:
        db.close()


def test_relative_dsn_is_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    migrate("sqlite:///./rel.sqlite3")
    with Client("sqlite:///./rel.sqlite3") as client:
        monkeypatch.chdir(tmp_path.parent)
        task_id = client.submit(FN, plugin="demo")
        assert client.get(task_id).state is TaskState.QUEUED
    assert (tmp_path / "rel.sqlite3").is_file()
