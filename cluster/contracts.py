"""What a node needs from its coordinator, as typed contracts.

Two coordinators satisfy them: ``ZkCoordination`` (a ZooKeeper ensemble) and
``LocalCoordination`` (embedded mode, one process). mypy checks both against
these protocols (the end of coordination.py), so a change to either that the
node cannot use fails the type check, not a test run on real servers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol, TypeAlias

from taskman.cluster.concurrency import Cap, Permit
from taskman.store import Candidate

# What a member publishes about itself: JSON written by another process, so
# readers check each value's type before they use it.
JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
Member: TypeAlias = dict[str, JsonValue]
Blocked: TypeAlias = tuple[frozenset[str], frozenset[tuple[str, str]]]


class Pending(Protocol):
    """A request sent without waiting (kazoo's async result, or one already done)."""

    @property
    def value(self) -> object: ...

    def ready(self) -> bool: ...

    def successful(self) -> bool: ...


class SessionHealth(Protocol):
    """The node's session with its coordinator: when it was last confirmed, whether it ended."""

    lost: threading.Event  # set once the session has expired or closed

    @property
    def state(self) -> str: ...

    @property
    def session_id(self) -> int | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def silence(self) -> float:
        """Seconds since the last confirmed round trip."""
        ...

    def healthy(self, within: float) -> bool: ...


class Claims(Protocol):
    """One claim per (task, attempt); its token is the attempt's fencing token."""

    @property
    def marker(self) -> str:
        """This session's identity: a release sent under another one applies to nothing."""
        ...

    def acquire_many(self, attempts: list[tuple[int, int]]) -> list[int | None]:
        """A token for each attempt won, None for each some other node holds."""
        ...

    def acquire_and_release(
        self,
        attempts: list[tuple[int, int]],
        release: list[tuple[int, int]],
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[int | None], list[tuple[int, int]]]:
        """``acquire_many``, dropping claims of this session in the same write; the
        releases not done yet come back, to be sent again. ``meanwhile`` runs once
        while the write is in flight, and must not raise."""
        ...

    def release_many_async(self, attempts: list[tuple[int, int]]) -> Pending:
        """Drop claims of this session (the first result checks the session marker)."""
        ...

    def revoke(self, task_id: int, attempt: int) -> None:
        """The leader's unconditional drop of a claim whose owner is gone."""
        ...

    def live_claims(self) -> set[str]: ...


class Gate(Protocol):
    """Concurrency caps: a permit per running attempt of a capped key or function."""

    def try_acquire(self, cap: Cap, candidate: Candidate) -> Permit | None: ...

    def release(self, permit: Permit) -> None: ...

    def blocked(self) -> Blocked:
        """The keys and (plugin, function) pairs that are full now: not worth a claim."""
        ...

    def held(self) -> int: ...


class Election(Protocol):
    @property
    def is_leader(self) -> bool: ...

    def try_acquire(self, timeout: float) -> int | None:
        """The epoch this node leads under, or None if another node leads."""
        ...

    def resign(self) -> None: ...

    def current_leader(self) -> str | None: ...


class Coordinator(Protocol):
    """Claims and tokens, membership, election, concurrency caps, session health, drain."""

    @property
    def monitor(self) -> SessionHealth: ...

    @property
    def lease(self) -> Claims: ...

    @property
    def gate(self) -> Gate: ...

    # Published with each registration when set (wake_datagrams.py); None: no datagrams.
    wake_address: str | None

    def start(self) -> None: ...

    def close(self) -> None: ...

    def granted_session_timeout(self) -> float | None: ...

    def fresh_token(self) -> int | None:
        """A token the coordinator would issue now (None: it never issues one below the DB)."""
        ...

    def election(self) -> Election: ...

    def register(self, info: Mapping[str, JsonValue], *, wait_for: float) -> None: ...

    def update(self, info: Mapping[str, JsonValue]) -> None: ...

    def members(self) -> list[Member]: ...

    def watch_drain(self, on_request: Callable[[], None]) -> None: ...

    def watch_wake(self, on_wake: Callable[[], None]) -> None:
        """Call ``on_wake`` (from any thread, quickly) whenever someone signals due work."""
        ...

    def wakes_armed(self) -> bool:
        """Every signal sent from now on reaches this node: it may poll at its idle pace."""
        ...

    def bump(self) -> None:
        """Signal every node that work became due; returns at once, never raises."""
        ...
