"""The node's steps in this process: SQLite, the local coordinator, a fake clock, fake runners.

Nothing here starts a thread or a process. A test submits tasks with the real
client, calls a step, makes a fake runner speak or die, calls the next step,
and reads the database back: a race or an error path of the node, step by step,
in milliseconds.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from taskman import Client
from taskman.cluster.context import NodeContext
from taskman.cluster.coordination import LocalCoordination
from taskman.cluster.steps import NodeSteps
from taskman.cluster.task_events import node_events
from taskman.embedded import dev_config, sqlite_dsn, token_floor
from taskman.plugins import EXAMPLES_DIR, PluginRegistry
from taskman.runner import RunnerEvent, RunnerSpec
from taskman.store import TaskStore, make_database
from taskman.store.migrations import migrate


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMonitor:
    """A session the test controls: silent for a while, or lost."""

    state = "CONNECTED"
    session_id = 1

    def __init__(self) -> None:
        self.lost = threading.Event()
        self.quiet_for = 0.0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def silence(self) -> float:
        return self.quiet_for

    def healthy(self, within: float) -> bool:
        return not self.lost.is_set() and self.quiet_for < within


@dataclass
class FakeRunner:
    """Stands in for a runner process; the test makes it speak, stay silent or die."""

    spec: RunnerSpec
    events: queue.Queue[RunnerEvent]
    clock: FakeClock
    started_at: float = 0.0
    last_heard: float = 0.0
    longest_silence: float = 0.0
    output_exceeded: bool = False
    launched: bool = False
    killed: bool = False
    terminated: bool = False
    abort_requested: bool = False
    closed: bool = False
    pings: int = 0
    last_ping: float = 0.0
    calls: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.launched and not self.killed

    def launch(self) -> None:
        self.launched = True
        self.started_at = self.last_heard = self.last_ping = self.clock()

    def ping(self) -> None:
        now = self.clock()
        self.longest_silence = max(self.longest_silence, self.silence(now))
        self.last_ping = now
        self.pings += 1

    def silence(self, now: float) -> float:
        return now - self.last_ping

    def request_abort(self) -> None:
        self.abort_requested = True

    def terminate(self) -> None:
        self.terminated = True

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.closed = True

    def output_tail(self) -> str:
        return ""

    # -- what the child would say --------------------------------------------------
    def say(self, message: dict[str, Any]) -> None:
        self.last_heard = self.clock()
        self.events.put(RunnerEvent(self, message))  # type: ignore[arg-type]

    def succeed(self, value: Any) -> None:
        self.say({"t": "result", "value": value})
        self.exit(0)

    def exit(self, code: int | None) -> None:
        self.say({"t": "exit", "code": code})


@dataclass
class Recorded:
    """Every event the node emitted, in order."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        self.events.append((name, dict(fields)))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class InProcessNode:
    """One node's steps over a SQLite database in ``tmp``."""

    def __init__(self, tmp: Path, **options: Any) -> None:
        db = tmp / "taskman.sqlite3"
        self.dsn = sqlite_dsn(db)
        migrate(self.dsn)
        base = dev_config(db, [EXAMPLES_DIR], slots=options.pop("slots", 4))
        self.config = dataclasses.replace(base, **{"session_timeout": 6.0, **options})
        self.clock = FakeClock()
        self.coord = LocalCoordination(self.config, token_floor(self.dsn))
        self.monitor = FakeMonitor()
        self.coord.monitor = self.monitor  # type: ignore[assignment]
        self.store = TaskStore(make_database(self.dsn))
        self.recorded = Recorded()
        events, self.counters = node_events(structlog.get_logger("test"))
        events.listeners.append(self.recorded)
        self.runners: list[FakeRunner] = []
        self.ctx = NodeContext(
            config=self.config,
            registry=PluginRegistry.scan(self.config.plugin_dirs),
            store=self.store,
            coord=self.coord,
            events=events,
            log=structlog.get_logger("test"),
            clock=self.clock,
            runner_factory=self._runner,
        )
        self.steps = NodeSteps(self.ctx, lambda: {"node_id": self.config.node_id})
        self.coord.watch_wake(self.steps.pacer.signal)  # as Node does: this process's submits
        self.client = Client(self.dsn)

    def _runner(self, spec: RunnerSpec, events: queue.Queue[RunnerEvent]) -> FakeRunner:
        runner = FakeRunner(spec, events, self.clock)
        self.runners.append(runner)
        return runner

    def runner_of(self, task_id: int) -> FakeRunner:
        return self.ctx.active[task_id].runner  # type: ignore[return-value]

    def claim(self) -> int:
        claimed, _ = self.steps.claimer.claim()
        return claimed

    def settle(self) -> None:
        """What the loop does after runners spoke: handle, record, release."""
        self.steps.drain_events(timeout=0)
        self.steps.outcomes.record_pending()
        self.steps.releases.check()

    def heartbeat(self) -> None:
        self.steps.supervisor.heartbeat(self.clock())

    def close(self) -> None:
        self.client.close()
        self.coord.close()
        self.store.close()
