"""Runners: one subprocess per task attempt (``taskman.runner``).

``supervisor`` is the node side; ``child`` runs inside the plugin's interpreter
and needs only the standard library.
"""

from taskman.runner.pool import (
    PooledAttempt,
    RunnerPool,
    existing_runner_pool,
    shared_runner_pool,
    start_runner,
)
from taskman.runner.supervisor import (
    EXIT_ORPHANED,
    ORPHANED_EXITS,
    Runner,
    RunnerEvent,
    RunnerSpec,
    describe_exit,
)

__all__ = [
    "EXIT_ORPHANED",
    "ORPHANED_EXITS",
    "PooledAttempt",
    "Runner",
    "RunnerEvent",
    "RunnerPool",
    "RunnerSpec",
    "describe_exit",
    "existing_runner_pool",
    "shared_runner_pool",
    "start_runner",
]
