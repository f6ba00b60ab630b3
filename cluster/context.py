"""What the node's steps share: its configuration, servers, clock, events and attempts."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskman.cluster.attempts import ActiveAttempt, RunnerHandle
from taskman.cluster.contracts import Coordinator
from taskman.cluster.task_events import TaskEvents
from taskman.config import NodeConfig
from taskman.plugins import PluginRegistry
from taskman.runner import RunnerEvent, RunnerSpec, start_runner
from taskman.store import TaskStore


class RunnerFactory(Protocol):
    def __call__(self, spec: RunnerSpec, events: queue.Queue[RunnerEvent]) -> RunnerHandle: ...


@dataclass
class NodeContext:
    """One node's shared state. The main loop owns it; the guard thread reads it and
    kills runners (each ``list(active.values())`` is a snapshot for that reason)."""

    config: NodeConfig
    registry: PluginRegistry
    store: TaskStore
    coord: Coordinator
    events: TaskEvents
    log: Any  # structlog's bound logger
    clock: Callable[[], float] = time.monotonic
    runner_factory: RunnerFactory = start_runner
    runner_events: queue.Queue[RunnerEvent] = field(default_factory=queue.Queue)
    active: dict[int, ActiveAttempt] = field(default_factory=dict)

    def session_healthy(self) -> bool:
        """A round trip confirmed recently enough to act on the session's claims."""
        return self.coord.monitor.healthy(within=self.config.session_timeout / 3)
