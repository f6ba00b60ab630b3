"""taskman: a reliable multi-datacenter task scheduler.

Folders map into this one namespace: ``cluster/`` -> ``taskman.cluster``,
``runner/`` -> ``taskman.runner``, ``plugins/`` -> ``taskman.plugins``,
``config/`` -> ``taskman.config``.
"""

from taskman.bulk import TaskRequest
from taskman.client import Client
from taskman.errors import (
    AmbiguousCommitError,
    ConfigError,
    CoordinationError,
    FencedError,
    IdempotencyConflictError,
    PayloadTooLargeError,
    PluginError,
    RunnerError,
    SchemaError,
    StoreError,
    TaskmanError,
    TaskNotFoundError,
    TaskStateError,
    TransientStoreError,
    UnservedError,
    ValidationError,
    WaitTimeoutError,
)
from taskman.models import Attempt, Task
from taskman.states import Outcome, TaskState

__version__ = "0.1.0"

__all__ = [
    "AmbiguousCommitError",
    "Attempt",
    "Client",
    "ConfigError",
    "CoordinationError",
    "FencedError",
    "IdempotencyConflictError",
    "Outcome",
    "PayloadTooLargeError",
    "PluginError",
    "RunnerError",
    "SchemaError",
    "StoreError",
    "Task",
    "TaskNotFoundError",
    "TaskRequest",
    "TaskState",
    "TaskStateError",
    "TaskmanError",
    "TransientStoreError",
    "UnservedError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
]
