"""Named exit codes of the taskman command (sysexits-style where one fits)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    TASK_FAILED = 1  # --wait saw the task end failed, aborted or expired
    USAGE = 2  # bad arguments (argparse uses 2 too)
    NOT_FOUND = 3  # no such task
    STATE = 4  # the task's state does not allow it (e.g. abort of a finished task)
    TIMEOUT = 5  # --wait gave up before the task finished
    INVALID = 65  # EX_DATAERR: the submission was refused by validation
    UNAVAILABLE = 69  # EX_UNAVAILABLE: database or ZooKeeper unreachable
    SOFTWARE = 70  # EX_SOFTWARE: an unexpected error
    CONFIG = 78  # EX_CONFIG: bad configuration
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C stopped `wait` / `submit --wait`; the task goes on
