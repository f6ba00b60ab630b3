"""The thin client: submit, inspect, abort and wait for tasks. It needs only the database."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from taskman.bulk import build_batch
from taskman.errors import AccessDeniedError, SchemaError, UnservedError, WaitTimeoutError
from taskman.models import Task
from taskman.placement import Served, cap_of, queued_reasons, unserved
from taskman.schedules import (
    DEFAULT_MAX_CATCH_UP,
    DEFAULT_MISFIRE_GRACE,
    Misfire,
    Overlap,
    Schedule,
    build_spec,
)
from taskman.states import TaskState
from taskman.store import TaskStore, make_database
from taskman.store.bulk import BulkStore
from taskman.store.placement import PlacementStore
from taskman.store.schedules import ScheduleStore
from taskman.validation import DEFAULT_MAX_PAYLOAD, NewTask, build_task
from taskman.wakeup import Waker, database_key, notify, zookeeper_waker

# What nodes serve only grows ("ever served"), so a passing check may be reused a
# while; a refusal is always re-checked against a fresh read first.
SERVED_CACHE_SECONDS = 30.0
_T = TypeVar("_T")


class Client:
    """Talks to the task table only; any node in any datacenter will pick the work up.

    >>> client = Client("mysql://taskman:secret@127.0.0.1:3306/taskman")  # or "sqlite:///path"
    >>> task_id = client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    >>> client.wait(task_id, timeout=30).result
    5
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        retry_deadline: float = 30.0,
        zookeeper: str | None = None,
        cluster: str = "default",
    ) -> None:
        """``retry_deadline``: how long transient database errors are retried before giving up.

        ``zookeeper`` ("host:port,...", the nodes' ensemble) and ``cluster`` (their
        ``cluster`` key): after each commit that queues work, signal idle nodes to
        look at once (docs/architecture.md, "Waking idle nodes"). The signal is
        sent from a background thread: a ZooKeeper that is slow or down never fails
        or slows a submit; the nodes then find the task at their next idle poll.
        """
        self._store = TaskStore(make_database(dsn, retry_deadline=retry_deadline))
        self._wake_key = database_key(dsn)
        self._waker: Waker | None = None
        if zookeeper:
            self._waker = zookeeper_waker(zookeeper, cluster)
        self._schedules = ScheduleStore(self._store.db)
        self._placement = PlacementStore(self._store.db)
        self._bulk = BulkStore(self._store.db)
        self._served: tuple[float, list[Served]] | None = None  # (monotonic read time, rows)
        self._served_unreadable_until = 0.0  # no table, or no grant: unchecked until then
        self.max_payload = max_payload

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close(flush=0.5)  # a signal still pending goes out first (bounded)
        self._store.close()

    def wake_stats(self) -> dict[str, int]:
        """Wake-up signals through ZooKeeper: asked for, sent, failed (empty without ``zookeeper``).

        Signals asked for in quick succession are sent as one, so ``sent`` is at most
        ``requested``; a failed one costs only latency (the idle poll finds the task).
        """
        if self._waker is None:
            return {}
        stats = self._waker.stats
        return {"requested": stats.requested, "sent": stats.sent, "failed": stats.failed}

    def _wake(self, committed: _T) -> _T:
        """Work was just committed: wake idle nodes (never raises, never waits)."""
        notify(self._wake_key)
        if self._waker is not None:
            self._waker.bump()
        return committed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        function: str,
        *,
        plugin: str,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        version: str | None = None,
        priority: int = 0,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry_backoff: float | None = None,
        idempotency_key: str | None = None,
        datacenter: str | None = None,
        limits: dict[str, int] | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        allow_unserved: bool = False,
    ) -> int:
        """Queue ``function`` ("package.module:callable") of ``plugin``; return the task id.

        Once this returns, the task is durable and will reach a terminal state.

        A plugin, pinned version or datacenter that no node of the cluster has
        ever served, or a function outside every served version's ``functions``
        allowlist, raises UnservedError and stores nothing; ``allow_unserved=True``
        queues it anyway (deploy order: the node that will serve it starts later).
        Until some node has started once, nothing is refused.

        ``limits`` overrides the plugin's resource limits (memory_mb, cpu_seconds,
        open_files, output_bytes). ``concurrency_limit`` caps how many attempts
        sharing ``concurrency_key`` (default: this plugin and function) run at once
        across the whole cluster.
        """
        task = build_task(
            function,
            plugin=plugin,
            args=args,
            kwargs=kwargs,
            version=version,
            priority=priority,
            not_before=not_before,
            not_after=not_after,
            timeout=timeout,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            idempotency_key=idempotency_key,
            datacenter=datacenter,
            limits=limits,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            max_payload=self.max_payload,
        )
        if not allow_unserved:
            unserved = self._first_unserved([task])
            if unserved is not None:
                raise UnservedError(*unserved[1])
        return self._wake(self._store.insert(task))

    def submit_many(
        self, items: Iterable[Mapping[str, Any]], *, allow_unserved: bool = False
    ) -> builtins.list[int]:
        """Queue many tasks in one transaction; return their ids in item order.

        Each item is a mapping of ``submit``'s keyword arguments (``TaskRequest``):
        ``{"function": "demo.tasks:add", "plugin": "demo", "args": [2, 3]}``.
        Every item is validated as ``submit`` validates it (served plugins too,
        unless ``allow_unserved``) before anything is written, and the first bad
        one raises its ValidationError with ``item`` set to its index; then all
        tasks are inserted and committed together, or none is.

        An idempotency key that names an existing task with the same request gives
        that task's id; with a different request the batch fails. Within the
        batch, items with the same key and request share one task; the same key
        with different requests is an IdempotencyConflictError. At most
        ``MAX_BATCH_ITEMS`` (100,000) items and ``MAX_BATCH_PAYLOAD`` (64 MiB) of
        arguments per batch; an empty batch returns [].
        """
        batch = build_batch(items, max_payload=self.max_payload)
        if not allow_unserved:
            unserved = self._first_unserved(batch.tasks)
            if unserved is not None:
                index, problem = unserved
                raise UnservedError(*problem).at_item(index)
        ids = self._bulk.insert(batch)
        return self._wake(ids) if ids else ids

    def _first_unserved(self, tasks: Sequence[NewTask]) -> tuple[int, tuple[str, str]] | None:
        """(index, problem) of the first task no node has ever served; None if all are."""
        now = time.monotonic()
        cached = self._served
        # An empty read is never reused: the first node to start must count at once.
        if cached is None or not cached[1] or now - cached[0] > SERVED_CACHE_SECONDS:
            rows, reused = self._read_served(now), False
        else:
            rows, reused = cached[1], True
        passed: set[tuple[str, str | None, str | None, str]] = set()
        for index, task in enumerate(tasks):
            placement = (task.plugin, task.plugin_version, task.datacenter, task.function)
            if placement in passed:
                continue
            problem = self._unserved(task, rows)
            if problem is not None and reused:
                # Served rows only grow: what passed the older read passes this one too.
                rows, reused = self._read_served(now), False
                problem = self._unserved(task, rows)
            if problem is not None:
                return index, problem
            passed.add(placement)
        return None

    def _read_served(self, now: float) -> list[Served]:
        rows = self._served_rows() or []
        self._served = (now, rows)
        return rows

    def _served_rows(self) -> list[Served] | None:
        """What nodes serve; None if it cannot be read (a schema before version 6, no grant)."""
        if time.monotonic() < self._served_unreadable_until:
            return None
        try:
            return self._placement.served()
        except (AccessDeniedError, SchemaError):
            # A client upgraded before `taskman db migrate`, or an account granted before
            # version 6 (docs/security.md): submit unchecked, as before; look again later.
            # The leader still fails unplaceable work after unrunnable_grace.
            self._served_unreadable_until = time.monotonic() + SERVED_CACHE_SECONDS
            return None

    @staticmethod
    def _unserved(task: NewTask, rows: list[Served]) -> tuple[str, str] | None:
        return unserved(
            rows,
            plugin=task.plugin,
            version=task.plugin_version,
            datacenter=task.datacenter,
            function=task.function,
        )

    def get(self, task_id: int) -> Task:
        """The task with its attempts; raises TaskNotFoundError for an unknown id."""
        return self._store.get(task_id)

    def list(
        self,
        state: TaskState | str | None = None,
        plugin: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        created_after: datetime | None = None,
    ) -> list[Task]:
        """Newest first. Page with ``before_id=<last id of the previous page>``."""
        return self._store.list_tasks(
            state=state,
            plugin=plugin,
            limit=limit,
            before_id=before_id,
            created_after=created_after,
        )

    def abort(self, task_id: int) -> TaskState:
        """Abort a task: a queued one at once, a running one by its owner within about a second.

        Returns the state right after the request (ABORTED or RUNNING). Aborting a
        finished task raises TaskStateError.
        """
        return self._store.request_abort(task_id)

    def retry(self, task_id: int) -> None:
        """Re-queue a failed, aborted or expired task with a fresh set of attempts.

        Its attempt history stays; the next attempt gets a new, larger token.
        Retrying a queued, running or succeeded task raises TaskStateError.
        """
        self._store.retry(task_id)
        self._wake(task_id)

    def wait(self, task_id: int, timeout: float | None = None, poll: float = 0.2) -> Task:
        """Block until the task is terminal and return it; WaitTimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.05)
        while True:
            task = self._store.get(task_id)
            if task.state.terminal:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"task {task_id} is still {task.state.value} after {timeout} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, poll)

    def why_queued(self, task: Task | int) -> builtins.list[str]:
        """Why a queued task has not started yet, by what the database knows; [] if nothing.

        Each reason is one sentence: it is not due yet (not before T, retrying in
        N s), no live node serves its plugin or version, its datacenter has no
        live node, its concurrency cap is full. A task that is not queued has none.
        """
        if isinstance(task, int):
            task = self._store.get(task)
        if task.state is not TaskState.QUEUED:
            return []
        rows = self._served_rows()
        cap = cap_of(task, rows or [])
        running = (
            0 if cap is None else self._placement.running_under(cap, task.plugin, task.function)
        )
        return queued_reasons(task, rows, self._placement.now(), cap, running)

    def now(self) -> datetime:
        """The database's clock (aware UTC): every time of a task is written by it."""
        return self._placement.now()

    def counts(self) -> dict[str, int]:
        return self._store.count_by_state()

    # -- schedules (docs/schedules.md) ---------------------------------------------
    def add_schedule(
        self,
        name: str,
        function: str,
        *,
        plugin: str,
        cron: str | None = None,
        timezone: str = "UTC",
        every: int | None = None,
        args: builtins.list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        version: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry_backoff: float | None = None,
        datacenter: str | None = None,
        misfire: Misfire | str = Misfire.RUN_ONCE,
        max_catch_up: int = DEFAULT_MAX_CATCH_UP,
        misfire_grace: int = DEFAULT_MISFIRE_GRACE,
        overlap: Overlap | str = Overlap.ALLOW,
        paused: bool = False,
        replace: bool = False,
    ) -> Schedule:
        """Run ``function`` on a cron expression in ``timezone``, or ``every`` N seconds.

        Idempotent by name: adding the same definition again returns the stored
        schedule unchanged (paused or not). A different definition under the same
        name raises ScheduleConflictError unless ``replace=True``.
        """
        spec = build_spec(
            name,
            function,
            plugin=plugin,
            cron=cron,
            timezone=timezone,
            every=every,
            args=args,
            kwargs=kwargs,
            version=version,
            priority=priority,
            timeout=timeout,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            datacenter=datacenter,
            misfire=misfire,
            max_catch_up=max_catch_up,
            misfire_grace=misfire_grace,
            overlap=overlap,
            max_payload=self.max_payload,
        )
        return self._schedules.add(spec, paused=paused, replace=replace)

    def get_schedule(self, name: str) -> Schedule:
        """Raises ScheduleNotFoundError for an unknown name."""
        return self._schedules.get(name)

    def list_schedules(self) -> builtins.list[Schedule]:  # Client.list shadows list here
        return self._schedules.list_all()

    def pause_schedule(self, name: str) -> Schedule:
        """No new ticks fire until resumed; tasks already created are not touched."""
        return self._schedules.pause(name)

    def resume_schedule(self, name: str) -> Schedule:
        """Ticks resume from the first one after now; those while paused never run."""
        return self._schedules.resume(name)

    def remove_schedule(self, name: str) -> None:
        """Delete the schedule; tasks it already created stay."""
        self._schedules.remove(name)
