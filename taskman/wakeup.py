"""Wake-up signals from the Client's side: tell idle nodes that work became due.

The Client signals after every COMMIT that queues work (submit, submit_many,
retry). Two ways, both hints that never fail or slow a submit:

* through ZooKeeper, when the Client is given the ensemble (``Client(dsn,
  zookeeper="host:port,...", cluster=...)``): kazoo lives in ``taskman.cluster``
  (``cluster/wake.py``), imported only then;
* in this process, for a node running in the same process on the same database
  (embedded mode, ``taskman dev``: the UI and Python code beside the node).

A node that misses a signal still finds the task at its next poll
(``idle_poll_interval``; docs/architecture.md, "Waking idle nodes").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from taskman.errors import TaskmanError


class WakeStats(Protocol):
    requested: int
    sent: int
    failed: int


class Waker(Protocol):
    """Sends wake-ups for a Client; ``bump`` returns at once and never raises."""

    @property
    def stats(self) -> WakeStats: ...

    def bump(self) -> None: ...

    def close(self, flush: float = 0.5) -> None: ...


def zookeeper_waker(hosts: str, cluster: str) -> Waker:
    """Bumps through the ensemble at ``hosts``: connects in the background, never blocks."""
    from taskman.cluster.wake import ClientWaker

    return ClientWaker(hosts, cluster)


# -- in this process ------------------------------------------------------------------

_listeners: dict[str, list[Callable[[], None]]] = {}
_lock = threading.Lock()


def database_key(dsn: str) -> str:
    """One name per database: a SQLite file by its resolved path, others by their DSN."""
    if dsn.startswith("sqlite:"):
        from taskman.store.sqlite import parse_sqlite_dsn

        try:
            return f"sqlite:{parse_sqlite_dsn(dsn).path}"
        except TaskmanError:
            return dsn
    return dsn


def listen(dsn: str, on_wake: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_wake`` when work is queued in ``dsn`` by this process; returns the undo."""
    key = database_key(dsn)
    with _lock:
        _listeners.setdefault(key, []).append(on_wake)

    def stop() -> None:
        with _lock:
            found = _listeners.get(key, [])
            if on_wake in found:
                found.remove(on_wake)
            if not found:
                _listeners.pop(key, None)

    return stop


def notify(key: str) -> None:
    """Wake every node of this process on the database ``key`` names (``database_key``)."""
    if not _listeners:
        return
    with _lock:
        found = list(_listeners.get(key, ()))
    for on_wake in found:
        on_wake()
