"""TaskStore: the one class that reads and writes tasks and attempts.

Every write about a running attempt takes its fencing token and returns whether
it was applied; ``False`` means a newer token owns the task (the caller is fenced).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from taskman.errors import (
    DuplicateKeyError,
    IdempotencyConflictError,
    TaskNotFoundError,
    TaskStateError,
    TransientStoreError,
    ValidationError,
)
from taskman.models import Attempt, Task, task_fields
from taskman.states import ALLOWED_TRANSITIONS, TaskState
from taskman.store.backend import Cursor, StoreDatabase, make_database
from taskman.store.bulk import insert_params
from taskman.store.leader import LeaderQueries
from taskman.store.records import (
    Candidate,
    Claim,
    ClaimRequest,
    Finish,
    RunningView,
    claim_from,
    storable,
)
from taskman.text import clean_text
from taskman.validation import NewTask

MAX_TAIL = 64 * 1024


# An idle node's read of the queue and its "when is the next one due" read are two
# statements: a task due in between is in neither, unless the second looks this far back.
DUE_GRACE = 1.0


class TaskStore(LeaderQueries):
    def __init__(self, db: StoreDatabase | str) -> None:
        self.db = make_database(db) if isinstance(db, str) else db
        self.q = self.db.q  # this backend's statements (queries or queries_sqlite)

    def close(self) -> None:
        self.db.close()

    # -- submit --------------------------------------------------------------
    def insert(self, task: NewTask) -> int:
        """Insert a queued task and return its id.

        A retried insert finds its own row by request id (exactly once even when
        the first commit's outcome was lost); the same idempotency key returns the
        existing task's id, or refuses a different request under that key.
        """

        def fn(cur: Cursor) -> int:
            try:
                cur.execute(self.q.INSERT_TASK, insert_params(task))
                return int(cur.lastrowid)
            except DuplicateKeyError:
                pass  # this request's row, or the idempotency key's: found below
            found = self._existing(cur, task)
            if found is None:  # the other row was deleted between our INSERT and SELECT
                raise TransientStoreError("duplicate key, but no row holds it; retrying")
            return found

        return self.db.run(fn, on_ambiguous=lambda cur: self._existing(cur, task))

    def _existing(self, cur: Cursor, task: NewTask) -> int | None:
        """The task this submission already created (or its idempotency twin); None if none."""
        cur.execute(self.q.TASK_BY_REQUEST_ID, (task.request_id,))
        row = cur.fetchone()
        if row:
            return int(row["id"])
        if task.idempotency_key is None:
            return None
        cur.execute(self.q.TASK_BY_IDEMPOTENCY_KEY, (task.idempotency_key,))
        row = cur.fetchone()
        if row is None:
            return None
        if not task.same_request(row):
            raise IdempotencyConflictError(
                f"idempotency key {task.idempotency_key!r} already names task {row['id']} "
                "with a different function, plugin or arguments"
            )
        return int(row["id"])

    # -- read ------------------------------------------------------------------
    def get(self, task_id: int, *, with_attempts: bool = True) -> Task:
        def fn(cur: Cursor) -> Task:
            cur.execute(self.q.GET_TASK, (task_id,))
            row = cur.fetchone()
            if row is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            attempts: tuple[Attempt, ...] = ()
            if with_attempts:
                cur.execute(self.q.GET_ATTEMPTS, (task_id,))
                attempts = tuple(Attempt.from_row(r) for r in cur.fetchall())
            return Task.from_row(row, attempts)

        return self.db.run(fn)

    def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        plugin: str | None = None,
        before_id: int | None = None,
        created_after: datetime | None = None,
        limit: int = 100,
    ) -> list[Task]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError(f"limit must be an integer from 1 to 10000, got {limit!r}")
        if state is not None and state not in {s.value for s in TaskState}:
            known = ", ".join(s.value for s in TaskState)
            raise ValidationError(f"unknown state {state!r}; known states: {known}")
        sql = self.q.LIST_TASKS
        args: list[Any] = []
        for name, value in (
            ("state", None if state is None else TaskState(state).value),
            ("plugin", plugin),
            ("before_id", before_id),
            ("created_after", created_after),
        ):
            if value is not None:
                sql += self.q.LIST_FILTERS[name]
                args.append(value)
        sql += self.q.LIST_ORDER
        args.append(limit)
        return [Task.from_row(r) for r in self.db.query(sql, args)]

    def count_by_state(self) -> dict[str, int]:
        return {r["state"]: int(r["COUNT(*)"]) for r in self.db.query(self.q.COUNT_BY_STATE)}

    # -- abort -----------------------------------------------------------------
    def request_abort(self, task_id: int) -> TaskState:
        """Abort a queued task at once; flag a running one for its owner. Returns the state now."""

        def fn(cur: Cursor) -> TaskState:
            if cur.execute(self.q.ABORT_QUEUED, (task_id,)):
                return TaskState.ABORTED
            if cur.execute(self.q.ABORT_RUNNING, (task_id,)):
                return TaskState.RUNNING
            cur.execute(self.q.TASK_STATE, (task_id,))
            row = cur.fetchone()
            if row is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            state = TaskState(row["state"])
            if state is TaskState.RUNNING:  # abort already requested; nothing changed
                return state
            raise TaskStateError(f"task {task_id} is already {state.value}; nothing to abort")

        def reread(cur: Cursor) -> TaskState | None:
            cur.execute(self.q.TASK_STATE, (task_id,))
            row = cur.fetchone()
            if row and row["state"] == TaskState.ABORTED.value:
                return TaskState.ABORTED
            if row and row["state"] == TaskState.RUNNING.value and row["abort_requested"]:
                return TaskState.RUNNING
            return None

        return self.db.run(fn, on_ambiguous=reread)

    def retry(self, task_id: int) -> None:
        """Re-queue a failed, aborted or expired task as a new attempt."""

        def fn(cur: Cursor) -> bool:
            if cur.execute(self.q.RETRY_TASK, (task_id,)):
                return True
            cur.execute(self.q.TASK_STATE, (task_id,))
            row = cur.fetchone()
            if row is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            raise TaskStateError(
                f"task {task_id} is {row['state']}; only failed, aborted or expired tasks "
                "can be retried"
            )

        def reread(cur: Cursor) -> bool | None:
            cur.execute(self.q.TASK_STATE, (task_id,))
            row = cur.fetchone()
            return True if row and row["state"] == TaskState.QUEUED.value else None

        self.db.run(fn, on_ambiguous=reread)

    # -- node: claims ----------------------------------------------------------
    def candidates(
        self,
        datacenter: str,
        plugins: dict[str, list[str]],
        limit: int,
        *,
        blocked_keys: frozenset[str] = frozenset(),
        blocked_functions: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[Candidate]:
        """Due queued tasks this node could run, best first, leaving out full concurrency caps."""
        if not plugins or limit <= 0:
            return []
        terms, args = [], [datacenter]
        for name, versions in sorted(plugins.items()):
            terms.append(
                self.q.CANDIDATE_PLUGIN_TERM.format(versions=", ".join(["%s"] * len(versions)))
            )
            args.extend([name, *versions])
        blocked = ""
        if blocked_keys:
            blocked += self.q.CANDIDATE_BLOCKED_KEYS.format(
                keys=", ".join(["%s"] * len(blocked_keys))
            )
            args.extend(sorted(blocked_keys))
        if blocked_functions:
            pairs = ", ".join(["(%s, %s)"] * len(blocked_functions))
            blocked += self.q.CANDIDATE_BLOCKED_FUNCTIONS.format(pairs=pairs)
            for pair in sorted(blocked_functions):
                args.extend(pair)
        sql = self.q.CANDIDATES.format(plugins=" OR ".join(terms), blocked=blocked)
        rows = self.db.query(sql, [*args, limit])
        return [Candidate(**task_fields(Candidate, r)) for r in rows]

    def next_due_in(self) -> float | None:
        """Seconds until the next queued task becomes due, by the database's clock; None if none.

        A task that became due in the last ``DUE_GRACE`` seconds is due now (0.0): it
        may have become due after the node's read of the queue, which did not see it.
        """
        due_us = self.db.query(self.q.NEXT_DUE, (int(DUE_GRACE * 1_000_000),))[0]["due_us"]
        return None if due_us is None else max(0.0, int(due_us) / 1e6)

    def claim(
        self,
        task_id: int,
        seen_attempt: int,
        fence: int,
        node: str,
        datacenter: str,
        plugin_version: str,
    ) -> Claim | None:
        """Move a queued task to running under ``fence``; None if someone else got there first."""
        request = ClaimRequest(task_id, seen_attempt, fence, plugin_version)
        return self.claim_many([request], node, datacenter)[0]

    def claim_many(
        self, requests: list[ClaimRequest], node: str, datacenter: str
    ) -> list[Claim | None]:
        """Claim a batch in one transaction: one COMMIT (one fsync) for the lot.

        Each request is fenced on its own; the answer for a task that someone else
        got first, or that was aborted or expired meanwhile, is None.
        """
        if not requests:
            return []
        ids = [r.task_id for r in requests]
        read_back = (self.q.CLAIMED_TASKS.format(ids=", ".join(["%s"] * len(ids))), ids)

        def claims(rows: Sequence[dict[str, Any]], won: list[bool]) -> list[Claim | None]:
            by_id = {int(row["id"]): row for row in rows}
            return [
                claim_from(by_id.get(r.task_id), r.fence) if ok else None
                for r, ok in zip(requests, won, strict=True)
            ]

        def fn(cur: Cursor) -> list[Claim | None]:
            # Each row fenced on its own; the UPDATEs, the attempts rows of those that
            # matched, the read-back and the COMMIT in one round trip.
            statements: list[tuple[str, Sequence[Any]]] = [
                self._claim_one(r, node, datacenter) for r in requests
            ]
            statements += [self._attempts_rows(requests, node, datacenter), read_back]
            counts = cur.execute_each_and_commit(statements)
            return claims(cur.fetchall(), [bool(n) for n in counts[: len(requests)]])

        def reread(cur: Cursor) -> list[Claim | None] | None:
            # A COMMIT is all or nothing: if any row carries its token, the batch
            # applied and the others were simply not ours; if none does, run it again.
            cur.execute(*read_back)
            found = claims(cur.fetchall(), [True] * len(requests))
            return found if any(c is not None for c in found) else None

        return self.db.run(fn, on_ambiguous=reread)

    def _claim_one(
        self, r: ClaimRequest, node: str, datacenter: str
    ) -> tuple[str, tuple[Any, ...]]:
        return self.q.CLAIM, (r.fence, node, datacenter, r.task_id, r.seen_attempt, r.fence)

    def _attempts_rows(
        self, requests: list[ClaimRequest], node: str, datacenter: str
    ) -> tuple[str, list[Any]]:
        """One INSERT of the attempts rows of the tasks the batch's UPDATEs moved: running,
        ours, with the claim's token (only a reclaimed, queued row keeps an old one)."""
        when = " ".join([self.q.CLAIM_WHEN] * len(requests))
        sql = self.q.INSERT_OUR_ATTEMPTS.format(
            versions=when, fences=when, ids=", ".join(["%s"] * len(requests))
        )
        params: list[Any] = [node, datacenter]
        for r in requests:
            params += [r.task_id, r.plugin_version]
        params += [r.task_id for r in requests]
        params.append(node)
        for r in requests:
            params += [r.task_id, r.fence]
        return sql, params

    # -- node: fenced writes ----------------------------------------------------
    def heartbeat(
        self,
        owned: list[tuple[int, int]],
        progress: dict[int, tuple[float, str]] | None = None,
    ) -> list[RunningView]:
        """Refresh heartbeats of (task id, fence) pairs; return the database's view of each.

        ``progress`` (task id to fraction and message) is written in the same
        transaction, fenced the same way: one COMMIT per beat for every attempt,
        and one statement for all the beats that carry no progress.
        """
        if not owned:
            return []
        progress = progress or {}

        def fn(cur: Cursor) -> list[RunningView]:
            beats = [(task_id, fence) for task_id, fence in owned if task_id not in progress]
            for task_id, fence in owned:
                if task_id in progress:
                    fraction, message = progress[task_id]
                    message = clean_text(message, 1000)
                    cur.execute(self.q.PROGRESS, (fraction, message, task_id, fence))
            if beats:
                # One statement for every beat without progress, each row on its own token.
                sql = self.q.HEARTBEATS.format(
                    ids=", ".join(["%s"] * len(beats)), pairs=", ".join(["(%s, %s)"] * len(beats))
                )
                cur.execute(sql, [t for t, _ in beats] + [v for beat in beats for v in beat])
            ids = [task_id for task_id, _ in owned]
            cur.execute(self.q.RUNNING_STATUS.format(ids=", ".join(["%s"] * len(ids))), ids)
            return [
                RunningView(
                    task_id=int(r["id"]),
                    fence=int(r["fence"]),
                    state=r["state"],
                    abort_requested=bool(r["abort_requested"]),
                )
                for r in cur.fetchall()
            ]

        return self.db.run(fn, deadline=5.0)

    def progress(self, task_id: int, fence: int, fraction: float, message: str) -> bool:
        return self.db.execute(self.q.PROGRESS, (fraction, message[:1000], task_id, fence)) == 1

    def finish(self, record: Finish) -> bool:
        """Record how one attempt ended, fenced; False when the token is stale (nothing written).

        An ending whose state is QUEUED means: run the task again after ``retry_delay``.
        """
        return self.finish_many([record])[0]

    def finish_many(self, records: list[Finish]) -> list[bool]:
        """Record a batch of endings in one transaction, each fenced on its own.

        ``False`` for a record means its token is stale: nothing of it was written.
        """
        if not records:
            return []
        for record in records:
            # FINISH_FAILED takes its state as a parameter: the table decides, not the caller.
            if record.ending.state not in ALLOWED_TRANSITIONS[TaskState.RUNNING]:
                raise ValidationError(
                    f"task {record.task_id}: an attempt cannot leave its task "
                    f"{record.ending.state.value}"
                )
        # Text from task code: one unstorable string must not fail the whole batch.
        records = [storable(record) for record in records]

        def fn(cur: Cursor) -> list[bool]:
            # Each row fenced on its own, the batch in one round trip.
            applied = [bool(n) for n in cur.execute_each([self._finish_one(r) for r in records])]
            self._end_attempts(cur, [r for r, ok in zip(records, applied, strict=True) if ok])
            return applied

        def reread(cur: Cursor) -> list[bool] | None:
            # After an ambiguous COMMIT: the batch applied (all or nothing) iff some
            # attempt row of ours ended with our outcome; otherwise write it again,
            # which the fences make harmless.
            ids = sorted({r.task_id for r in records})
            cur.execute(self.q.ENDED_ATTEMPTS.format(ids=", ".join(["%s"] * len(ids))), ids)
            ended = {
                (int(row["task_id"]), int(row["attempt"]), int(row["fence"])): row["outcome"]
                for row in cur.fetchall()
            }
            applied = [
                ended.get((r.task_id, r.attempt, r.fence)) == r.ending.outcome.value
                for r in records
            ]
            return applied if any(applied) else None

        return self.db.run(fn, on_ambiguous=reread)

    def _finish_one(self, r: Finish) -> tuple[str, tuple[Any, ...]]:
        """The fenced write of one ending on its task row."""
        e = r.ending
        if e.state is TaskState.SUCCEEDED:
            return self.q.FINISH_SUCCEEDED, (e.result_json, r.task_id, r.fence)
        if e.state is TaskState.QUEUED:
            micros = int((e.retry_delay or 0.0) * 1_000_000)
            # A failure of the task counts against max_attempts; an attempt the
            # node gave up (self-fencing, shutdown) counts as a reclaim instead.
            return self.q.FINISH_RETRY, (
                int(e.counts_as_failure),
                int(not e.counts_as_failure),
                int(e.counts_as_failure),  # only a failure waits a backoff ...
                micros,  # ... else run_after stays: the task keeps its place in line
                e.error_type,
                e.summary,
                r.task_id,
                r.fence,
            )
        return self.q.FINISH_FAILED, (
            e.state.value,
            int(e.counts_as_failure),
            e.error_type,
            e.summary,
            r.task_id,
            r.fence,
        )

    def _end_attempts(self, cur: Cursor, records: list[Finish]) -> None:
        """End the attempts rows of the endings whose task row took them, in one statement."""
        if not records:
            return
        columns: list[list[Any]] = [[] for _ in range(5)]
        fenced: list[Any] = []
        for r in records:
            e = r.ending
            tail = None if r.output_tail is None else r.output_tail[-MAX_TAIL:]
            values = (e.outcome.value, e.error_type, e.error_message, e.traceback, tail)
            for column, value in zip(columns, values, strict=True):
                column += [r.task_id, r.attempt, value]
            fenced += [r.task_id, r.attempt, r.fence]
        sql = self.q.END_ATTEMPTS.format(
            when=" ".join([self.q.END_ATTEMPTS_WHEN] * len(records)),
            rows=" OR ".join([self.q.END_ATTEMPTS_ROW] * len(records)),
        )
        cur.execute(sql, [v for column in columns for v in column] + fenced)
