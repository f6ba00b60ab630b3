"""Fencing at the SQL level: every write about an attempt names its token, and a stale one changes nothing.

Tokens are explicit numbers here (a node gets them from ZooKeeper). Rows are read
through a separate connection, and "changes nothing" means the whole task row and
every attempt row compare equal before and after. A contract test: every test runs
on MariaDB and on SQLite (``store_dsn``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskman import Client, Outcome, TaskState, ValidationError
from taskman.store import ClaimRequest, Ending, Finish, RunningTask, TaskStore
from tests.integration.backends import raw as _raw
from tests.integration.backends import seconds_from_now, shift

FN = "demo.tasks:add"
PLUGINS = {"demo": ["1.0"]}
DC = "dc1"


@pytest.fixture
def dsn(store_dsn: str) -> str:
    return store_dsn


def _rows(dsn: str, task_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole task row and all its attempt rows, as stored."""
    with _raw(dsn) as cur:
        cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        task = cur.fetchone()
        cur.execute("SELECT * FROM attempts WHERE task_id = %s ORDER BY attempt", (task_id,))
        attempts = list(cur.fetchall())
    assert task is not None
    return task, attempts


def _leadership(dsn: str, name: str) -> dict[str, Any] | None:
    with _raw(dsn) as cur:
        cur.execute("SELECT epoch, node FROM leadership WHERE name = %s", (name,))
        row = cur.fetchone()
    return None if row is None else dict(row)


@pytest.fixture
def store(dsn: str) -> Iterator[TaskStore]:
    s = TaskStore(dsn)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def task_id(dsn: str) -> int:
    with Client(dsn) as client:
        return client.submit(FN, plugin="demo", args=[1, 2], max_attempts=5)


def _candidate_ids(store: TaskStore) -> list[int]:
    return [c.task_id for c in store.candidates(DC, PLUGINS, 100)]


def _claim_100(store: TaskStore, task_id: int) -> None:
    (cand,) = store.candidates(DC, PLUGINS, 10)
    assert cand.task_id == task_id
    assert cand.attempt == 0
    claim = store.claim(task_id, 0, 100, "n-a", DC, "1.0")
    assert claim is not None
    assert (claim.attempt, claim.fence) == (1, 100)


def _running(store: TaskStore, task_id: int) -> RunningTask:
    (found,) = [t for t in store.running() if t.task_id == task_id]
    return found


# -- claim ------------------------------------------------------------------------------------


def test_claim_moves_to_running_and_records_the_attempt(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    (cand,) = store.candidates(DC, PLUGINS, 10)
    assert (cand.task_id, cand.attempt, cand.plugin, cand.function) == (task_id, 0, "demo", FN)

    claim = store.claim(task_id, 0, 100, "n-a", DC, "1.0")
    assert claim is not None
    assert claim.task_id == task_id
    assert claim.attempt == 1
    assert claim.fence == 100
    assert claim.function == FN
    assert claim.args == [1, 2]
    assert claim.kwargs == {}
    assert claim.max_attempts == 5
    assert claim.failures == 0
    assert claim.abort_requested is False

    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "running"
    assert task["fence"] == 100
    assert task["attempt"] == 1
    assert task["owner"] == "n-a"
    assert task["owner_datacenter"] == DC
    assert task["heartbeat_at"] is not None
    assert task["started_at"] is not None
    assert len(attempts) == 1
    (att,) = attempts
    assert att["attempt"] == 1
    assert att["fence"] == 100
    assert att["node"] == "n-a"
    assert att["datacenter"] == DC
    assert att["plugin_version"] == "1.0"
    assert att["outcome"] == "running"
    assert att["ended_at"] is None
    assert _candidate_ids(store) == []


def test_a_second_claim_of_the_same_attempt_loses(dsn: str, store: TaskStore, task_id: int) -> None:
    _claim_100(store, task_id)
    before = _rows(dsn, task_id)
    other = TaskStore(dsn)
    try:
        # A larger token does not help: the task is no longer queued at attempt 0.
        assert other.claim(task_id, 0, 200, "n-b", DC, "1.0") is None
        assert other.claim(task_id, 1, 200, "n-b", DC, "1.0") is None
    finally:
        other.close()
    assert _rows(dsn, task_id) == before


def test_claim_of_an_unknown_task_returns_none(store: TaskStore, task_id: int) -> None:
    assert store.claim(task_id + 1000, 0, 100, "n-a", DC, "1.0") is None


# -- fenced writes with the right token -------------------------------------------------------


def test_heartbeat_progress_and_finish_apply_with_the_right_token(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    _claim_100(store, task_id)
    claimed, _ = _rows(dsn, task_id)

    (view,) = store.heartbeat([(task_id, 100)])
    assert (view.task_id, view.fence, view.state, view.abort_requested) == (
        task_id,
        100,
        "running",
        False,
    )
    beat, _ = _rows(dsn, task_id)
    assert beat["heartbeat_at"] > claimed["heartbeat_at"]

    assert store.progress(task_id, 100, 0.5, "half way") is True
    task, _ = _rows(dsn, task_id)
    assert task["progress"] == 0.5
    assert task["progress_message"] == "half way"
    assert task["heartbeat_at"] >= beat["heartbeat_at"]

    assert store.finish(
        Finish(
            task_id,
            1,
            100,
            Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"sum": 3}'),
            output_tail="3\n",
        )
    )
    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "succeeded"
    assert task["result"] == '{"sum": 3}'
    assert task["finished_at"] is not None
    assert task["progress"] == 1.0
    assert task["fence"] == 100
    (att,) = attempts
    assert att["outcome"] == "succeeded"
    assert att["ended_at"] is not None
    assert att["output_tail"] == "3\n"


# -- fenced writes with a wrong token -----------------------------------------------------------


@pytest.mark.parametrize("wrong", [99, 101, 0])
def test_writes_with_a_wrong_token_change_nothing(
    dsn: str, store: TaskStore, task_id: int, wrong: int
) -> None:
    _claim_100(store, task_id)
    before = _rows(dsn, task_id)

    # The heartbeat reports the database's token, which is not the caller's.
    (view,) = store.heartbeat([(task_id, wrong)])
    assert view.fence == 100
    assert view.fence != wrong
    assert view.state == "running"
    assert _rows(dsn, task_id) == before

    assert store.progress(task_id, wrong, 0.9, "stale") is False
    assert _rows(dsn, task_id) == before

    for state, outcome in (
        (TaskState.SUCCEEDED, Outcome.SUCCEEDED),
        (TaskState.QUEUED, Outcome.ERROR),
        (TaskState.FAILED, Outcome.ERROR),
        (TaskState.ABORTED, Outcome.ABORTED),
    ):
        applied = store.finish(
            Finish(
                task_id,
                1,
                wrong,
                Ending(
                    outcome,
                    state,
                    result_json='{"stale": true}',
                    error_type="Stale",
                    error_message="from a fenced node",
                    retry_delay=0.0,
                ),
            )
        )
        assert applied is False, state
        assert _rows(dsn, task_id) == before, state

    # The owner with the right token is unaffected by all that.
    assert store.progress(task_id, 100, 0.25, "mine") is True


def test_an_ending_the_transition_table_forbids_is_refused_and_writes_nothing(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    # FINISH_FAILED takes the task's next state as a parameter: the store checks it
    # against states.ALLOWED_TRANSITIONS before anything of the batch is written.
    _claim_100(store, task_id)
    before = _rows(dsn, task_id)
    ok = Finish(task_id, 1, 100, Ending(Outcome.ERROR, TaskState.FAILED, "E"))
    for state in (TaskState.RUNNING, TaskState.EXPIRED):
        wrong = Finish(task_id, 1, 100, Ending(Outcome.ERROR, state, "E"))
        with pytest.raises(ValidationError, match=f"cannot leave its task {state.value}"):
            store.finish_many([ok, wrong])
        assert _rows(dsn, task_id) == before, state
    assert store.finish(ok) is True


# -- reclaim ------------------------------------------------------------------------------------


def test_reclaim_requeues_and_fences_the_old_owner(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    _claim_100(store, task_id)
    assert store.take_leadership("reaper", 5, "n1") is True
    lost = _running(store, task_id)
    assert (lost.attempt, lost.fence, lost.owner, lost.reclaims) == (1, 100, "n-a", 0)

    assert store.reclaim(
        lost,
        outcome=Outcome.NODE_LOST,
        reason="n-a's session expired",
        give_up=False,
        role="reaper",
        epoch=5,
    )
    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "queued"
    assert task["owner"] is None
    assert task["owner_datacenter"] is None
    assert task["fence"] == 100  # tokens never go down
    assert task["attempt"] == 1
    assert task["reclaims"] == 1
    assert task["failures"] == 0
    assert task["error_type"] == "NodeLost"
    assert task["finished_at"] is None
    (att,) = attempts
    assert att["outcome"] == "node_lost"
    assert att["ended_at"] is not None
    assert att["error_message"] == "n-a's session expired"
    assert store.running() == []
    (cand,) = store.candidates(DC, PLUGINS, 10)
    assert (cand.task_id, cand.attempt) == (task_id, 1)

    # Reclaiming the same attempt twice does nothing.
    after_reclaim = _rows(dsn, task_id)
    assert (
        store.reclaim(
            lost,
            outcome=Outcome.NODE_LOST,
            reason="again",
            give_up=False,
            role="reaper",
            epoch=5,
        )
        is False
    )
    assert _rows(dsn, task_id) == after_reclaim

    # The old owner wakes up and reports: fenced, nothing written.
    assert (
        store.finish(
            Finish(
                task_id,
                1,
                100,
                Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"late": true}'),
            )
        )
        is False
    )
    assert store.progress(task_id, 100, 0.5, "late") is False
    assert _rows(dsn, task_id) == after_reclaim

    # A new claim needs a larger token than any the task has had.
    assert store.claim(task_id, 1, 50, "n-b", DC, "1.0") is None
    assert store.claim(task_id, 1, 100, "n-b", DC, "1.0") is None
    assert _rows(dsn, task_id) == after_reclaim
    claim = store.claim(task_id, 1, 300, "n-b", DC, "1.0")
    assert claim is not None
    assert (claim.attempt, claim.fence) == (2, 300)
    task, attempts = _rows(dsn, task_id)
    assert (task["state"], task["fence"], task["attempt"], task["owner"]) == (
        "running",
        300,
        2,
        "n-b",
    )
    assert [(a["attempt"], a["fence"], a["outcome"]) for a in attempts] == [
        (1, 100, "node_lost"),
        (2, 300, "running"),
    ]

    # The old owner is still fenced while the new attempt runs.
    running_again = _rows(dsn, task_id)
    (view,) = store.heartbeat([(task_id, 100)])
    assert view.fence == 300
    assert (
        store.finish(
            Finish(task_id, 1, 100, Ending(Outcome.ERROR, TaskState.FAILED, error_type="Late"))
        )
        is False
    )
    assert (
        store.reclaim(
            lost,
            outcome=Outcome.NODE_LOST,
            reason="stale view",
            give_up=False,
            role="reaper",
            epoch=5,
        )
        is False
    )
    assert _rows(dsn, task_id) == running_again

    # The new owner finishes normally.
    assert store.finish(
        Finish(task_id, 2, 300, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="3"))
    )
    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "succeeded"
    assert task["result"] == "3"
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (1, "node_lost"),
        (2, "succeeded"),
    ]


def test_reclaim_give_up_fails_the_task(dsn: str, store: TaskStore, task_id: int) -> None:
    _claim_100(store, task_id)
    assert store.take_leadership("reaper", 1, "n1")
    lost = _running(store, task_id)
    assert store.reclaim(
        lost,
        outcome=Outcome.HEARTBEAT_TIMEOUT,
        reason="no heartbeat for 30 s",
        give_up=True,
        role="reaper",
        epoch=1,
    )
    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "failed"
    assert task["finished_at"] is not None
    assert task["error_type"] == "HeartbeatTimeout"
    assert "gave up after 1 reclaims" in task["error_message"]
    assert attempts[0]["outcome"] == "heartbeat_timeout"
    assert store.candidates(DC, PLUGINS, 10) == []


# -- the leader guard ------------------------------------------------------------------------------


def test_a_deposed_leader_can_neither_reclaim_nor_take_leadership_back(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    assert store.take_leadership("reaper", 10, "a") is True
    assert _leadership(dsn, "reaper") == {"epoch": 10, "node": "a"}
    # Taking it again at the same epoch is a no-op that still answers True.
    assert store.take_leadership("reaper", 10, "a") is True
    _claim_100(store, task_id)
    lost = _running(store, task_id)

    assert store.take_leadership("reaper", 20, "b") is True
    assert _leadership(dsn, "reaper") == {"epoch": 20, "node": "b"}
    before = _rows(dsn, task_id)

    assert (
        store.reclaim(
            lost,
            outcome=Outcome.NODE_LOST,
            reason="old leader",
            give_up=False,
            role="reaper",
            epoch=10,
        )
        is False
    )
    assert (
        store.reclaim(
            lost,
            outcome=Outcome.NODE_LOST,
            reason="old leader gives up",
            give_up=True,
            role="reaper",
            epoch=10,
        )
        is False
    )
    assert _rows(dsn, task_id) == before

    assert store.take_leadership("reaper", 10, "a") is False
    assert store.take_leadership("reaper", 19, "a") is False
    assert _leadership(dsn, "reaper") == {"epoch": 20, "node": "b"}

    # An epoch for another role does not count for this one.
    assert store.take_leadership("expirer", 30, "c") is True
    assert (
        store.reclaim(
            lost,
            outcome=Outcome.NODE_LOST,
            reason="wrong role",
            give_up=False,
            role="reaper",
            epoch=30,
        )
        is False
    )
    assert _rows(dsn, task_id) == before

    # The current leader's reclaim applies.
    assert store.reclaim(
        lost,
        outcome=Outcome.NODE_LOST,
        reason="new leader",
        give_up=False,
        role="reaper",
        epoch=20,
    )
    task, _ = _rows(dsn, task_id)
    assert task["state"] == "queued"
    assert task["reclaims"] == 1


def test_expire_due_is_leader_guarded(dsn: str, store: TaskStore) -> None:
    with Client(dsn) as client:
        task_id = client.submit(
            FN, plugin="demo", not_after=datetime.now(UTC) + timedelta(milliseconds=300)
        )
    shift(dsn, task_id, "not_after", -1.0)  # let not_after pass without sleeping
    assert store.candidates(DC, PLUGINS, 10) == []
    assert store.claim(task_id, 0, 100, "n-a", DC, "1.0") is None
    assert store.take_leadership("reaper", 2, "a")
    assert store.take_leadership("reaper", 3, "b")
    assert store.expire_due(role="reaper", epoch=2) == 0
    assert _rows(dsn, task_id)[0]["state"] == "queued"
    assert store.expire_due(role="reaper", epoch=3) == 1
    task, _ = _rows(dsn, task_id)
    assert task["state"] == "expired"
    assert task["finished_at"] is not None


# -- finish: retry and at-most-once success -------------------------------------------------------


def test_finish_queued_requeues_after_the_retry_delay(
    dsn: str, store: TaskStore, task_id: int
) -> None:
    with Client(dsn) as client:
        soon = client.submit(FN, plugin="demo", args=["soon"])
    claim = store.claim(task_id, 0, 100, "n-a", DC, "1.0")
    assert claim is not None
    claim_soon = store.claim(soon, 0, 101, "n-a", DC, "1.0")
    assert claim_soon is not None

    assert store.finish(
        Finish(
            task_id,
            1,
            100,
            Ending(
                Outcome.ERROR,
                TaskState.QUEUED,
                error_type="ValueError",
                error_message="bad input",
                traceback="Traceback ...",
                retry_delay=60.0,
            ),
        )
    )
    task, attempts = _rows(dsn, task_id)
    assert task["state"] == "queued"
    assert task["failures"] == 1
    assert task["reclaims"] == 0
    assert task["owner"] is None
    assert task["fence"] == 100
    assert task["attempt"] == 1
    assert task["error_type"] == "ValueError"
    assert task["finished_at"] is None
    (att,) = attempts
    assert att["outcome"] == "error"
    assert att["traceback"] == "Traceback ..."
    assert 50 < seconds_from_now(dsn, task_id, "run_after") <= 61

    # A node giving the attempt up (not the task's fault) counts a reclaim, not a failure,
    # and with no delay the task is due again at once.
    assert store.finish(
        Finish(
            soon,
            1,
            101,
            Ending(Outcome.FENCED, TaskState.QUEUED, retry_delay=0.0, counts_as_failure=False),
        )
    )
    soon_row, _ = _rows(dsn, soon)
    assert (soon_row["state"], soon_row["failures"], soon_row["reclaims"]) == ("queued", 0, 1)

    # Only the task without a delay is a candidate now.
    assert _candidate_ids(store) == [soon]


def test_success_is_recorded_at_most_once(dsn: str, store: TaskStore, task_id: int) -> None:
    _claim_100(store, task_id)
    assert store.finish(
        Finish(
            task_id, 1, 100, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json='{"x": 1}')
        )
    )
    done = _rows(dsn, task_id)
    assert done[0]["state"] == "succeeded"
    for state, outcome in (
        (TaskState.SUCCEEDED, Outcome.SUCCEEDED),
        (TaskState.FAILED, Outcome.ERROR),
        (TaskState.QUEUED, Outcome.ERROR),
    ):
        assert (
            store.finish(
                Finish(
                    task_id, 1, 100, Ending(outcome, state, result_json='{"x": 2}', retry_delay=0.0)
                )
            )
            is False
        ), state
    assert _rows(dsn, task_id) == done
    assert done[0]["result"] == '{"x": 1}'
    assert store.progress(task_id, 100, 0.1, "after the end") is False
    assert store.claim(task_id, 1, 500, "n-b", DC, "1.0") is None
    assert _rows(dsn, task_id) == done


def test_a_claim_batch_takes_what_it_can_and_fences_each_task_on_its_own(
    dsn: str, store: TaskStore
) -> None:
    with Client(dsn) as client:
        free, taken, gone = (client.submit(FN, plugin="demo", args=[i, i]) for i in range(3))
        client.abort(gone)
    assert store.claim(taken, 0, 500, "n-other", DC, "1.0") is not None
    batch = [
        ClaimRequest(free, 0, 100, "1.0"),
        ClaimRequest(taken, 0, 100, "1.0"),  # someone else holds it with a larger token
        ClaimRequest(gone, 0, 100, "1.0"),  # aborted while queued
    ]
    claims = store.claim_many(batch, "n-a", DC)
    assert [c is not None for c in claims] == [True, False, False]
    assert claims[0] is not None and (claims[0].task_id, claims[0].fence) == (free, 100)
    assert claims[0].args == [0, 0]
    assert _rows(dsn, taken)[0]["fence"] == 500
    assert _rows(dsn, taken)[0]["owner"] == "n-other"
    assert _rows(dsn, gone)[0]["state"] == "aborted"
    assert [a["fence"] for a in _rows(dsn, free)[1]] == [100]
    # Attempts rows only for the claims whose UPDATE matched.
    assert [(a["node"], a["fence"]) for a in _rows(dsn, taken)[1]] == [("n-other", 500)]
    assert _rows(dsn, gone)[1] == []


def test_a_finish_batch_writes_the_current_owners_and_nothing_of_the_stale(
    dsn: str, store: TaskStore
) -> None:
    with Client(dsn) as client:
        ids = [client.submit(FN, plugin="demo", args=[i, i], max_attempts=3) for i in range(3)]
    claims = store.claim_many([ClaimRequest(t, 0, 100 + t, "1.0") for t in ids], "n-a", DC)
    assert all(c is not None for c in claims)
    stale = ids[1]
    assert store.take_leadership("reaper", 1, "n1")
    lost = _running(store, stale)
    assert store.reclaim(
        lost, outcome=Outcome.NODE_LOST, reason="r", give_up=False, role="reaper", epoch=1
    )
    before_stale = _rows(dsn, stale)
    records = [
        Finish(
            ids[0], 1, 100 + ids[0], Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="1")
        ),
        Finish(
            stale, 1, 100 + stale, Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="2")
        ),
        Finish(
            ids[2],
            1,
            100 + ids[2],
            Ending(
                Outcome.ERROR,
                TaskState.QUEUED,
                error_type="ValueError",
                error_message="boom",
                retry_delay=5.0,
            ),
        ),
    ]
    assert store.finish_many(records) == [True, False, True]
    assert _rows(dsn, stale) == before_stale
    done, attempts = _rows(dsn, ids[0])
    assert (done["state"], done["result"], attempts[0]["outcome"]) == (
        "succeeded",
        "1",
        "succeeded",
    )
    retry, attempts = _rows(dsn, ids[2])
    assert (retry["state"], retry["failures"], retry["error_type"]) == ("queued", 1, "ValueError")
    assert attempts[0]["outcome"] == "error"


def test_a_claim_batch_under_one_shared_token_records_each_attempt(
    dsn: str, store: TaskStore
) -> None:
    # One ZooKeeper multi gives its claims one token: tasks may share it.
    with Client(dsn) as client:
        ids = [client.submit(FN, plugin="demo", args=[i, i]) for i in range(3)]
    claims = store.claim_many([ClaimRequest(t, 0, 300, "1.0") for t in ids], "n-a", DC)
    assert [(c.task_id, c.fence) if c else None for c in claims] == [(t, 300) for t in ids]
    for t in ids:
        task, attempts = _rows(dsn, t)
        assert (task["state"], task["fence"], task["attempt"]) == ("running", 300, 1)
        assert [(a["attempt"], a["fence"], a["node"]) for a in attempts] == [(1, 300, "n-a")]


def test_a_heartbeat_batch_refreshes_each_attempt_only_under_its_own_token(
    dsn: str, store: TaskStore
) -> None:
    with Client(dsn) as client:
        ids = [client.submit(FN, plugin="demo", args=[i, i]) for i in range(3)]
    store.claim_many([ClaimRequest(t, 0, 100 + i, "1.0") for i, t in enumerate(ids)], "n-a", DC)
    with _raw(dsn) as cur:  # an old beat, so that a new one shows
        cur.execute("UPDATE tasks SET heartbeat_at = %s", (datetime(2000, 1, 1),))
    before = {t: _rows(dsn, t) for t in ids}
    # ids[1] with another task's token, ids[2] with progress: its own statement.
    views = store.heartbeat(
        [(ids[0], 100), (ids[1], 100), (ids[2], 102)], progress={ids[2]: (0.5, "half")}
    )
    assert sorted((v.task_id, v.fence) for v in views) == [(t, 100 + i) for i, t in enumerate(ids)]
    assert _rows(dsn, ids[1]) == before[ids[1]]  # a wrong token changes nothing
    beaten, _ = _rows(dsn, ids[0])
    assert beaten["heartbeat_at"] > before[ids[0]][0]["heartbeat_at"]
    progressed, _ = _rows(dsn, ids[2])
    assert (progressed["progress"], progressed["progress_message"]) == (0.5, "half")
    assert progressed["heartbeat_at"] > before[ids[2]][0]["heartbeat_at"]


def test_a_finish_batch_ends_each_attempt_row_with_its_own_texts(
    dsn: str, store: TaskStore
) -> None:
    # The attempts rows of a batch are ended in one statement: each must get its own.
    with Client(dsn) as client:
        ids = [client.submit(FN, plugin="demo", args=[i, i], max_attempts=1) for i in range(3)]
    store.claim_many([ClaimRequest(t, 0, 100, "1.0") for t in ids], "n-a", DC)
    endings = [
        Ending(Outcome.SUCCEEDED, TaskState.SUCCEEDED, result_json="0"),
        Ending(Outcome.ERROR, TaskState.FAILED, "KeyError", "no key", "Traceback: k"),
        Ending(Outcome.TIMEOUT, TaskState.FAILED, "TimeoutError", "too slow"),
    ]
    records = [
        Finish(t, 1, 100, e, output_tail=f"tail {i}")
        for i, (t, e) in enumerate(zip(ids, endings, strict=True))
    ]
    stale = Finish(ids[0], 1, 99, endings[1], output_tail="stale")  # an older token
    assert store.finish_many([stale, *records]) == [False, True, True, True]
    got = [_rows(dsn, t)[1][0] for t in ids]
    assert [
        (a["outcome"], a["error_type"], a["error_message"], a["traceback"], a["output_tail"])
        for a in got
    ] == [
        ("succeeded", None, None, None, "tail 0"),
        ("error", "KeyError", "no key", "Traceback: k", "tail 1"),
        ("timeout", "TimeoutError", "too slow", None, "tail 2"),
    ]
    assert all(a["ended_at"] is not None and a["fence"] == 100 for a in got)
