"""Where a task can run, as the database tells it: pure functions over what nodes serve.

Every node publishes one row per plugin version it serves (``served_plugins``:
its datacenter, the manifest's ``functions`` allowlist and ``[concurrency]``
caps, and when it last refreshed the row). The thin client reads those rows to

* refuse a submit that no node has EVER served (``unserved``): a misspelt plugin,
  version, datacenter or a function outside every allowlist fails at once
  instead of waiting out ``unrunnable_grace`` in the queue;
* say why a queued task has not started (``queued_reasons``): no live node
  serves it, its datacenter has no live node, its concurrency cap is full, it
  is not due yet.

"Live" means refreshed within ``LIVE_WITHIN`` seconds by the database's clock.
A database where no node has published anything yet (a fresh install) refuses
nothing: there is nothing to compare with.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from taskman.models import Task
from taskman.states import Outcome

PUBLISH_INTERVAL = 10.0  # seconds between a node's refreshes of its rows
LIVE_WITHIN = 3 * PUBLISH_INTERVAL  # a row refreshed this recently is served now

# Outcomes after which a queued task waits for its backoff (the task's failure).
_FAILURES = frozenset({Outcome.ERROR, Outcome.CRASHED, Outcome.TIMEOUT})


def function_allowed(patterns: Iterable[str] | None, function: str) -> bool:
    """A manifest's ``functions`` allowlist: None allows every function."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(function, pattern) for pattern in patterns)


def cap_for_function(caps: Mapping[str, int], function: str) -> int | None:
    """A manifest's ``[concurrency]`` cap for ``function``: an exact name first, then patterns."""
    if function in caps:
        return caps[function]
    for pattern, cap in caps.items():
        if fnmatch.fnmatchcase(function, pattern):
            return cap
    return None


@dataclass(frozen=True)
class Served:
    """One node's row for one plugin version."""

    node: str
    datacenter: str
    plugin: str
    version: str
    functions: tuple[str, ...] | None = None  # None: any function
    concurrency: dict[str, int] = field(default_factory=dict)
    age: float = 0.0  # seconds since the node last refreshed it, by the database's clock

    @property
    def live(self) -> bool:
        return self.age <= LIVE_WITHIN

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Served:
        functions = None if row["functions"] is None else tuple(json.loads(row["functions"]))
        caps = {} if row["concurrency"] is None else dict(json.loads(row["concurrency"]))
        return cls(
            node=row["node"],
            datacenter=row["datacenter"],
            plugin=row["plugin"],
            version=row["plugin_version"],
            functions=functions,
            concurrency={str(k): int(v) for k, v in caps.items()},
            age=max(0.0, int(row["age_us"] or 0) / 1e6),
        )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _what(plugin: str, version: str | None) -> str:
    return f"plugin {plugin!r}" + (f" version {version}" if version else "")


def _plugins_of(rows: Iterable[Served]) -> str:
    versions: dict[str, set[str]] = {}
    for r in rows:
        versions.setdefault(r.plugin, set()).add(r.version)
    return "; ".join(
        f"{name} {', '.join(sorted(vs, key=_version_key))}" for name, vs in sorted(versions.items())
    )


def _datacenters_of(rows: Iterable[Served]) -> str:
    return ", ".join(sorted({r.datacenter for r in rows}))


def unserved(
    rows: list[Served],
    *,
    plugin: str,
    version: str | None,
    datacenter: str | None,
    function: str,
) -> tuple[str, str] | None:
    """(what is missing, what is served) if no node has ever served this submit; else None.

    Only what is certain is refused: with the version unpinned, a function that
    any served version allows passes (the claiming node may run that one).
    """
    if not rows:
        return None  # no node has published yet: a fresh cluster refuses nothing
    matching = [r for r in rows if r.plugin == plugin]
    if not matching:
        return f"no node has ever served plugin {plugin!r}", f"plugins {_plugins_of(rows)}"
    if version is not None:
        served_versions = matching
        matching = [r for r in matching if r.version == version]
        if not matching:
            return (
                f"no node has ever served {_what(plugin, version)}",
                f"plugin {_plugins_of(served_versions)}",
            )
    what = _what(plugin, version)
    if datacenter is not None:
        problem = _unserved_in(datacenter, rows, matching, what)
        if problem is not None:
            return problem
        matching = [r for r in matching if r.datacenter == datacenter]
    if not any(function_allowed(r.functions, function) for r in matching):
        patterns = sorted({p for r in matching for p in r.functions or ()})
        return f"{what} does not allow {function}", f"functions {', '.join(patterns)}"
    return None


def _unserved_in(
    datacenter: str, rows: list[Served], matching: list[Served], what: str
) -> tuple[str, str] | None:
    if not any(r.datacenter == datacenter for r in rows):
        return (
            f"no node has ever run in datacenter {datacenter!r}",
            f"datacenters {_datacenters_of(rows)}",
        )
    if not any(r.datacenter == datacenter for r in matching):
        return (
            f"no node in datacenter {datacenter!r} has ever served {what}",
            f"{what} in datacenters {_datacenters_of(matching)}",
        )
    return None


@dataclass(frozen=True)
class Cap:
    """The concurrency cap a task is subject to, as the nodes would apply it."""

    key: str
    limit: int
    by_key: bool  # the task named its key; else the key is plugin:function


def cap_of(task: Task, rows: list[Served]) -> Cap | None:
    """The task's own cap, else its plugin's (from the version a node would run)."""
    default_key = f"{task.plugin}:{task.function}"
    if task.concurrency_limit:
        key = task.concurrency_key or default_key
        return Cap(key, task.concurrency_limit, task.concurrency_key is not None)
    serving = [r for r in rows if r.live and r.plugin == task.plugin]
    if task.plugin_version is not None:
        serving = [r for r in serving if r.version == task.plugin_version]
    if not serving:
        return None
    newest = max(serving, key=lambda r: _version_key(r.version))
    limit = cap_for_function(newest.concurrency, task.function)
    return Cap(default_key, limit, False) if limit else None


def within(seconds: float) -> str:
    """A short human duration to come, rounded up: "retrying in 1 s", never "in 0 s"."""
    return ago(math.ceil(max(0.0, seconds)))


def ago(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3 h, 2 d."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} d"


def _last_seen(rows: list[Served]) -> str:
    if not rows:
        return "never served"
    latest = min(rows, key=lambda r: r.age)
    return f"last seen {ago(latest.age)} ago on {latest.node}"


def _placement_reason(task: Task, rows: list[Served]) -> str | None:
    if not rows:
        return "no node has published what it serves yet: is any node running?"
    plugin, version, datacenter = task.plugin, task.plugin_version, task.datacenter
    what = _what(plugin, version)
    serving = [r for r in rows if r.plugin == plugin and (version is None or r.version == version)]
    if datacenter is not None:
        in_dc = [r for r in rows if r.datacenter == datacenter]
        if not any(r.live for r in in_dc):
            seen = _last_seen(in_dc) if in_dc else "no node has ever run there"
            return f"its datacenter {datacenter!r} has no live node ({seen})"
        serving = [r for r in serving if r.datacenter == datacenter]
        if not any(r.live for r in serving):
            return (
                f"no live node in datacenter {datacenter!r} serves {what} ({_last_seen(serving)})"
            )
        return None
    if not any(r.live for r in serving):
        return f"no live node serves {what} ({_last_seen(serving)})"
    return None


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def queued_reasons(
    task: Task, rows: list[Served] | None, now: datetime, cap: Cap | None = None, running: int = 0
) -> list[str]:
    """Why a queued task has not started, by the database's view at ``now`` (aware UTC).

    ``rows`` is None when what nodes serve is unknown (the account may not read
    it). ``running`` is how many attempts hold ``cap`` right now. An empty list
    means nothing stands in its way but a free slot on a node that serves it.
    """
    reasons = []
    # Due within a second is due: a short backoff is no reason worth a line.
    if task.run_after is not None and task.run_after > now + timedelta(seconds=1):
        left = within((task.run_after - now).total_seconds())
        last = task.attempts[-1] if task.attempts else None
        if last is not None and last.outcome in _FAILURES:
            reasons.append(f"retrying in {left} (backoff after attempt {last.attempt} failed)")
        else:
            reasons.append(f"not before {_time(task.run_after)} (in {left})")
    placement = None if rows is None else _placement_reason(task, rows)
    if placement:
        reasons.append(placement)
    if cap is not None and running >= cap.limit:
        key = f"key {cap.key!r}" if cap.by_key else cap.key
        reasons.append(f"its concurrency cap is full: {running} of {cap.limit} running ({key})")
    return reasons
