"""The store: every read and write of the task table. SQL lives in ``queries.py``."""

from taskman.store.connection import Database
from taskman.store.tasks import Candidate, Claim, RunningTask, RunningView, TaskStore

__all__ = ["Candidate", "Claim", "Database", "RunningTask", "RunningView", "TaskStore"]
