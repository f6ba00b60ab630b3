"""The store: every read and write of the task table. SQL lives in ``queries.py`` (MySQL)
and ``queries_sqlite.py`` (embedded mode); ``make_database`` picks the backend from the DSN."""

from taskman.store.backend import StoreDatabase, make_database
from taskman.store.connection import Database
from taskman.store.records import (
    Candidate,
    Claim,
    ClaimRequest,
    Ending,
    Finish,
    RunningTask,
    RunningView,
)
from taskman.store.sqlite import SQLiteDatabase
from taskman.store.tasks import TaskStore

__all__ = [
    "Candidate",
    "Claim",
    "ClaimRequest",
    "Database",
    "Ending",
    "Finish",
    "RunningTask",
    "RunningView",
    "SQLiteDatabase",
    "StoreDatabase",
    "TaskStore",
    "make_database",
]
