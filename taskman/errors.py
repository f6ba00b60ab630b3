"""Every error taskman raises descends from TaskmanError.

Errors that retrying could fix carry ``retryable = True``; the store's retry
policy (``taskman.store.connection.retry_policy``) retries only those, with
jitter and a deadline.
"""

from __future__ import annotations

from typing import Self


class TaskmanError(Exception):
    """Root of every taskman error."""

    retryable: bool = False


class ConfigError(TaskmanError):
    """A configuration file or value is invalid; the message names the key and the file."""


class ValidationError(TaskmanError):
    """An application passed bad input (arguments, times, sizes, references).

    Raised by ``Client.submit_many`` for one item of the batch, it names that item:
    ``item`` is its index (None for a single submit or the batch as a whole), the
    message starts with "item N: ", and ``reason`` is the message without it.
    """

    item: int | None = None
    _reason: str | None = None

    @property
    def reason(self) -> str:
        return self._reason if self._reason is not None else str(self)

    def at_item(self, index: int) -> Self:
        """This error, as the error of item ``index`` of a batch: same kind, message prefixed."""
        self._reason = self.reason
        self.item = index
        self.args = (f"item {index}: {self._reason}",)
        return self


class UnservedError(ValidationError):
    """A submit names a plugin, version, datacenter or function no node has ever served.

    ``missing`` says what is missing; ``served`` what the cluster has served. Pass
    ``allow_unserved=True`` (``--allow-unserved``) to queue it anyway, e.g. before
    the first node with a new plugin starts.
    """

    def __init__(self, missing: str, served: str) -> None:
        super().__init__(
            f"{missing} (served: {served}); pass allow_unserved=True (--allow-unserved) "
            "to queue it anyway"
        )
        self.missing = missing
        self.served = served


class PayloadTooLargeError(ValidationError):
    """Arguments or a result exceed the configured size limit."""


class IdempotencyConflictError(ValidationError):
    """The idempotency key is already used by a task with a different request."""


class TaskNotFoundError(TaskmanError):
    """No task has this id."""


class TaskStateError(TaskmanError):
    """The task is in a state that does not allow the operation (e.g. aborting a finished task)."""


class StoreError(TaskmanError):
    """The database failed in a way that is not the caller's fault."""


class AccessDeniedError(StoreError):
    """The database refused the account: a login, or a privilege on a table (docs/security.md)."""


class TransientStoreError(StoreError):
    """Lost connection, deadlock, Galera certification failure: retrying may succeed."""

    retryable = True


class DuplicateKeyError(StoreError):
    """A write hit a UNIQUE key that another row holds (MySQL 1062, SQLite UNIQUE).

    The store raises it per statement, whatever the backend, so that the stores
    can find the row that holds the key inside the same transaction.
    """


class AmbiguousCommitError(TransientStoreError):
    """The commit's outcome is unknown (MySQL 1180, lost connection during COMMIT): re-read first."""


class SchemaError(StoreError):
    """The database schema is missing or newer than this code understands."""


class PluginError(TaskmanError):
    """A plugin manifest is invalid, or a task names a plugin, version or function that is not installed."""


class CoordinationError(TaskmanError):
    """ZooKeeper could not be reached, or this node lost its session."""

    retryable = True


class FencedError(TaskmanError):
    """A write about an attempt was refused because a newer fencing token owns the task."""


class RunnerError(TaskmanError):
    """A runner subprocess could not be started or supervised."""


class WaitTimeoutError(TaskmanError):
    """``Client.wait`` gave up before the task reached a terminal state."""
