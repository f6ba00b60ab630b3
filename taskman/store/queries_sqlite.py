"""Every SQL statement taskman runs, by name, in SQLite's dialect (embedded mode).

The same names and the same parameter order as ``queries.py``, so a store takes
its statements from its database object (``db.q``) and runs either backend.
Placeholders stay ``%s``: ``SQLiteDatabase`` turns them into ``?`` (no statement
here holds another ``%``; LIKE patterns arrive as parameters). Fencing is the
same as on MySQL: every write about an attempt names its task and its token.

Time is TEXT in UTC, 'YYYY-MM-DD HH:MM:SS.ffffff' (fixed width, so text order is
time order). SQLite's own clock has milliseconds only (strftime '%f') and
julianday() resolves about 20 us, so ``SQLiteDatabase`` registers three
functions on each connection:

* ``tm_now()``: NOW(6). One value per statement, taken in Python with
  microseconds, like MySQL's NOW(6) which is fixed for a statement.
* ``tm_add_us(t, us)``: ``t + INTERVAL us MICROSECOND`` (seconds: ``us * 1e6``).
* ``tm_diff_us(a, b)``: TIMESTAMPDIFF(MICROSECOND, a, b).

The schema (schema_sqlite.sql) uses only built-in functions, so the file stays
writable from the sqlite3 shell.
"""

from __future__ import annotations

# Statements that read the same in both dialects are MySQL's own, not copies.
from taskman.store.queries import (  # noqa: F401 - re-exported: the store reads them from here
    ABORT_RUNNING,
    ADVANCE_SCHEDULE,
    BULK_COLUMNS,
    CANDIDATE_BLOCKED_KEYS,
    CANDIDATE_PLUGIN_TERM,
    COUNT_BY_STATE,
    DELETE_SCHEDULE,
    ENDED_ATTEMPTS,
    GET_ATTEMPTS,
    GET_SCHEDULE,
    GET_TASK,
    LEADER_GUARD,
    LEADERSHIP,
    LIST_FILTERS,
    LIST_ORDER,
    LIST_SCHEDULES,
    LIST_TASKS,
    PAUSE_SCHEDULE,
    QUEUED_PLACEMENTS,
    REPLACE_SCHEDULE,
    RESUME_SCHEDULE,
    RUNNING_OF_FUNCTION,
    RUNNING_STATUS,
    RUNNING_TASKS,
    RUNNING_WITH_CAP_KEY,
    SCHEDULE_COLUMNS,
    SCHEMA_VERSIONS,
    TASK_BY_IDEMPOTENCY_KEY,
    TASK_BY_REQUEST_ID,
    TASK_COLUMNS,
    TASK_ID_BY_KEY,
    TASK_STATE,
    TASKS_BY_IDEMPOTENCY_KEYS,
    UI_CREATED_AT,
    UI_LEADERSHIP,
    UI_LIST,
    UI_MAX_ID,
    UI_ORDER_ID,
    UI_ORDER_KEY,
    UI_ORDER_TIME,
    UI_ROW_COLUMNS,
    UI_RUNNING_OWNERS,
)

# -- sessions (SQLiteDatabase applies its PRAGMAs itself; these exist for parity) -----------
SESSION_SETUP = "PRAGMA foreign_keys = ON"
SESSION_GALERA_SYNC = "SELECT 1"
SESSION_IDLE_TRANSACTION_LIMIT = "SELECT %s"  # SQLite has no such setting (never sent)
HAS_WSREP = "SELECT 'wsrep_on' AS Variable_name, 'OFF' AS Value"
NOW = "SELECT tm_now() AS `NOW(6)`"

# -- migrations -------------------------------------------------------------
# A migration runs in one BEGIN IMMEDIATE transaction, which is the lock.
MIGRATION_LOCK = "SELECT 1 AS locked"
MIGRATION_UNLOCK = "SELECT 1"
SCHEMA_TABLE_EXISTS = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'taskman_schema'"
)
RECORD_VERSION = "INSERT INTO taskman_schema (version, name, applied_at) VALUES (%s, %s, tm_now())"
LIST_TABLES = (
    "SELECT name AS table_name FROM sqlite_master "
    "WHERE type = 'table' AND name NOT GLOB 'sqlite_*' ORDER BY name"
)
SHOW_CREATE_TABLE = (  # table names come from LIST_TABLES
    "SELECT sql AS `Create Table` FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
)

# -- client -----------------------------------------------------------------

# created_at/updated_at are set here, not by DEFAULT: the schema's defaults only
# have SQLite's millisecond clock.
INSERT_TASKS = (
    "INSERT INTO tasks (request_id, idempotency_key, plugin, plugin_version, `function`, args, "
    "kwargs, priority, datacenter, not_before, not_after, run_after, timeout_seconds, "
    "max_attempts, retry_backoff_seconds, limits, concurrency_key, concurrency_limit, state, "
    "created_at, updated_at) "
    "VALUES {rows}"
)
INSERT_TASKS_ROW = (
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, MAX(tm_now(), COALESCE(%s, tm_now())), "
    "%s, %s, %s, %s, %s, %s, 'queued', tm_now(), tm_now())"
)
INSERT_TASK = INSERT_TASKS.format(rows=INSERT_TASKS_ROW)
BULK_INSERT_TASKS = (
    "INSERT INTO tasks ({columns}, run_after, state, created_at, updated_at) VALUES "
)
BULK_TASK_ROW = "({values}, {run_after}, 'queued', tm_now(), tm_now())"
BULK_RUN_AFTER = "tm_now()"
BULK_RUN_AFTER_NOT_BEFORE = "MAX(tm_now(), COALESCE(%s, tm_now()))"
TASK_IDS_BY_REQUEST_ID_RANGE = (
    "SELECT group_concat(id || ':' || request_id) AS pairs FROM tasks "
    "WHERE request_id BETWEEN %s AND %s"
)

ABORT_QUEUED = (
    "UPDATE tasks SET state = 'aborted', abort_requested = 1, finished_at = tm_now(), "
    "error_type = 'Aborted', error_message = 'aborted before it started' "
    "WHERE id = %s AND state = 'queued'"
)
RETRY_TASK = (
    "UPDATE tasks SET state = 'queued', run_after = tm_now(), not_after = NULL, failures = 0, "
    "reclaims = 0, abort_requested = 0, owner = NULL, owner_datacenter = NULL, result = NULL, "
    "error_type = NULL, error_message = NULL, progress = NULL, progress_message = NULL, "
    "finished_at = NULL WHERE id = %s AND state IN ('failed', 'aborted', 'expired')"
)
# The largest token the database holds (fences and leader epochs): a local
# coordinator starts above it after a restart, so tokens only grow.
HIGHEST_FENCE_OR_EPOCH = (
    "SELECT MAX(COALESCE((SELECT MAX(fence) FROM tasks), 0), "
    "COALESCE((SELECT MAX(fence) FROM attempts), 0), "
    "COALESCE((SELECT MAX(epoch) FROM leadership), 0)) AS token"
)
# The same, cheap enough for every node start: the last leader's epoch and the
# fences of unfinished work (the tasks_claim index narrows it to those rows).
HIGHEST_LIVE_FENCE_OR_EPOCH = (
    "SELECT MAX(COALESCE((SELECT MAX(fence) FROM tasks "
    "WHERE state IN ('queued', 'running')), 0), "
    "COALESCE((SELECT MAX(epoch) FROM leadership), 0)) AS token"
)

# -- node: claims -----------------------------------------------------------
# No FORCE INDEX: SQLite's planner picks tasks_claim for this shape by itself.
CANDIDATES = (
    "SELECT id, attempt, plugin, plugin_version, `function`, concurrency_key, concurrency_limit, "
    "priority FROM tasks "
    "WHERE state = 'queued' AND run_after <= tm_now() "
    "AND (not_after IS NULL OR not_after > tm_now()) "
    "AND (datacenter IS NULL OR datacenter = %s) "
    "AND ({plugins}){blocked} "
    "ORDER BY priority DESC, run_after, id LIMIT %s"
)
# SQLite's row-value IN needs a subquery on the right: VALUES makes one of the list.
CANDIDATE_BLOCKED_FUNCTIONS = " AND (plugin, `function`) NOT IN (VALUES {pairs})"
NEXT_DUE = (
    "SELECT tm_diff_us(tm_now(), MIN(run_after)) AS due_us "
    "FROM tasks WHERE state = 'queued' AND run_after > tm_add_us(tm_now(), 0 - %s)"
)

CLAIM = (
    "UPDATE tasks SET state = 'running', fence = %s, owner = %s, owner_datacenter = %s, "
    "attempt = attempt + 1, heartbeat_at = tm_now(), started_at = COALESCE(started_at, tm_now()), "
    "progress = NULL, progress_message = NULL "
    "WHERE id = %s AND state = 'queued' AND attempt = %s AND fence < %s "
    "AND (not_after IS NULL OR not_after > tm_now())"
)
INSERT_OUR_ATTEMPTS = (
    "INSERT INTO attempts (task_id, attempt, fence, node, datacenter, plugin_version, started_at) "
    "SELECT id, attempt, fence, %s, %s, CASE id {versions} END, tm_now() FROM tasks "
    "WHERE id IN ({ids}) AND state = 'running' AND owner = %s AND fence = CASE id {fences} END"
)
CLAIM_WHEN = "WHEN %s THEN %s"
CLAIMED_TASKS = (  # {ids}: one %s per claimed task of a batch
    "SELECT id, attempt, fence, plugin, plugin_version, `function`, args, kwargs, "
    "timeout_seconds, max_attempts, failures, retry_backoff_seconds, abort_requested, limits, "
    "tm_diff_us(MAX(run_after, COALESCE("
    "(SELECT MAX(ended_at) FROM attempts WHERE attempts.task_id = tasks.id), run_after)), "
    "tm_now()) AS wait_us "
    "FROM tasks WHERE id IN ({ids})"
)

# -- node: fenced writes about a running attempt ------------------------------
# The heartbeat of every attempt without new progress, one statement, each row fenced
# on its own token: {ids} is one %s per attempt, {pairs} one (%s, %s) per (id, token).
HEARTBEATS = (
    "UPDATE tasks SET heartbeat_at = tm_now() WHERE id IN ({ids}) "
    "AND (id, fence) IN (VALUES {pairs}) AND state = 'running'"
)
PROGRESS = (
    "UPDATE tasks SET progress = %s, progress_message = %s, heartbeat_at = tm_now() "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
FINISH_SUCCEEDED = (
    "UPDATE tasks SET state = 'succeeded', result = %s, progress = 1.0, finished_at = tm_now(), "
    "error_type = NULL, error_message = NULL "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
FINISH_RETRY = (
    "UPDATE tasks SET state = 'queued', failures = failures + %s, reclaims = reclaims + %s, "
    "owner = NULL, owner_datacenter = NULL, "
    "run_after = CASE WHEN %s THEN tm_add_us(tm_now(), %s) ELSE run_after END, "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
FINISH_FAILED = (
    "UPDATE tasks SET state = %s, failures = failures + %s, finished_at = tm_now(), "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
# The attempts rows of a batch of endings (those whose task UPDATE matched), one
# statement, each row fenced on its own token: {when} is END_ATTEMPTS_WHEN once per
# ending (one CASE per column), {rows} END_ATTEMPTS_ROW once per ending, joined by " OR ".
END_ATTEMPTS = (
    "UPDATE attempts SET ended_at = tm_now(), outcome = CASE {when} END, "
    "error_type = CASE {when} END, error_message = CASE {when} END, "
    "traceback = CASE {when} END, output_tail = CASE {when} END "
    "WHERE outcome = 'running' AND ({rows})"
)
END_ATTEMPTS_WHEN = "WHEN task_id = %s AND attempt = %s THEN %s"
END_ATTEMPTS_ROW = "(task_id = %s AND attempt = %s AND fence = %s)"

# -- leader -----------------------------------------------------------------
# SQLite evaluates every SET expression on the old row (MySQL goes left to right);
# each one here reads only the old epoch, so both give the same row.
TAKE_LEADERSHIP = (
    "INSERT INTO leadership (name, epoch, node, since) VALUES (%s, %s, %s, tm_now()) "
    "ON CONFLICT (name) DO UPDATE SET "
    "node = CASE WHEN epoch < excluded.epoch THEN excluded.node ELSE node END, "
    "since = CASE WHEN epoch < excluded.epoch THEN tm_now() ELSE since END, "
    "epoch = MAX(epoch, excluded.epoch)"
)
RECLAIM = (
    "UPDATE tasks SET state = 'queued', reclaims = reclaims + 1, owner = NULL, "
    "owner_datacenter = NULL, error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND attempt = %s AND state = 'running'" + LEADER_GUARD
)
RECLAIM_GIVE_UP = (
    "UPDATE tasks SET state = 'failed', reclaims = reclaims + 1, finished_at = tm_now(), "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND attempt = %s AND state = 'running'" + LEADER_GUARD
)
END_LOST_ATTEMPT = (
    "UPDATE attempts SET ended_at = tm_now(), outcome = %s, error_type = %s, error_message = %s "
    "WHERE task_id = %s AND attempt = %s AND fence = %s AND outcome = 'running'"
)
# Debian's SQLite has no UPDATE/DELETE ... LIMIT: the batch is a subquery of ids.
EXPIRE_DUE = (
    "UPDATE tasks SET state = 'expired', finished_at = tm_now(), error_type = 'Expired', "
    "error_message = 'not_after passed before the task started' "
    "WHERE id IN (SELECT id FROM tasks "
    "WHERE state = 'queued' AND not_after IS NOT NULL AND not_after <= tm_now()"
    + LEADER_GUARD
    + " LIMIT %s)"
)
PRUNE_BATCH = (
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks "
    "WHERE state = %s AND finished_at < tm_add_us(tm_now(), -1000000.0 * %s)"
    + LEADER_GUARD
    + " LIMIT %s)"
)
PRUNE_COUNT = (
    "SELECT COUNT(*) AS n FROM tasks "
    "WHERE state = %s AND finished_at < tm_add_us(tm_now(), -1000000.0 * %s)"
)
OLDEST_QUEUED_WAIT = (
    "SELECT tm_diff_us(MIN(MAX(run_after, updated_at)), tm_now()) AS wait_us "
    "FROM tasks WHERE state = 'queued'"
)
FAIL_UNPLACEABLE = (
    "UPDATE tasks SET state = 'failed', finished_at = tm_now(), error_type = %s, "
    "error_message = %s "
    "WHERE state = 'queued' AND plugin = %s AND plugin_version IS %s AND datacenter IS %s "
    "AND run_after <= tm_add_us(tm_now(), 0 - %s)" + LEADER_GUARD
)

# -- schedules ------------------------------------------------------------------------------
# No FOR UPDATE: every read-write transaction is BEGIN IMMEDIATE, so it already
# holds the database's one write lock when it reads.
LOCK_SCHEDULE = GET_SCHEDULE
INSERT_SCHEDULE = (
    "INSERT INTO schedules (name, plugin, plugin_version, `function`, args, kwargs, cron, "
    "timezone, every_seconds, priority, timeout_seconds, max_attempts, retry_backoff_seconds, "
    "datacenter, misfire, max_catch_up, misfire_grace_seconds, overlap, paused, next_tick, "
    "created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "tm_now(), tm_now())"
)
SCHEDULE_LAG = (
    "SELECT tm_diff_us(MIN(next_tick), tm_now()) AS lag_us FROM schedules WHERE paused = 0"
)
DUE_SCHEDULES = (
    "SELECT name FROM schedules "
    "WHERE paused = 0 AND next_tick <= tm_now() ORDER BY next_tick LIMIT %s"
)
INSERT_TICK_TASK = (
    "INSERT INTO tasks (request_id, idempotency_key, plugin, plugin_version, `function`, args, "
    "kwargs, priority, datacenter, run_after, timeout_seconds, max_attempts, "
    "retry_backoff_seconds, state, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, tm_now(), %s, %s, %s, 'queued', "
    "tm_now(), tm_now())"
)
# MySQL's LIKE escapes with a backslash by default; SQLite needs ESCAPE. The
# connection sets case_sensitive_like, as utf8mb4_bin compares on MySQL.
TICK_TASKS = (
    "SELECT id, idempotency_key, state, created_at FROM tasks "
    "WHERE idempotency_key LIKE %s ESCAPE '\\' ORDER BY idempotency_key"
)

# -- web UI (read-only) -------------------------------------------------------------------------
UI_LIST_BY_TIME = UI_LIST
UI_FILTERS = {
    "state": " AND state = %s",
    "plugin": " AND plugin = %s",
    "function": " AND `function` = %s",
    "datacenter": " AND (owner_datacenter = %s OR datacenter = %s)",
    "since": " AND created_at >= %s",
    "until": " AND created_at < %s",
    "id_below": " AND id < %s",
    "id_from": " AND id >= %s",
    "time_cursor": " AND (created_at < %s OR (created_at = %s AND id < %s))",
    "id_is": " AND id = %s",
    "key_is": " AND idempotency_key = %s",
    "key_prefix": " AND idempotency_key LIKE %s ESCAPE '\\'",
}
# Integer division truncates toward zero, like TIMESTAMPDIFF(SECOND, ...) DIV n.
UI_THROUGHPUT = (
    "SELECT tm_diff_us(finished_at, tm_now()) / 1000000 / %s AS bucket, state, COUNT(*) AS n "
    "FROM tasks WHERE state IN ('succeeded', 'failed', 'aborted', 'expired') "
    "AND finished_at >= tm_add_us(tm_now(), -1000000 * %s) GROUP BY bucket, state"
)

# -- what nodes serve (see queries.py) ---------------------------------------------------
PUBLISH_SERVED = (
    "INSERT INTO served_plugins (node, datacenter, plugin, plugin_version, functions, "
    "concurrency, first_seen, last_seen) VALUES (%s, %s, %s, %s, %s, %s, tm_now(), tm_now()) "
    "ON CONFLICT (node, plugin, plugin_version) DO UPDATE SET datacenter = excluded.datacenter, "
    "functions = excluded.functions, concurrency = excluded.concurrency, last_seen = tm_now()"
)
SERVED = (
    "SELECT node, datacenter, plugin, plugin_version, functions, concurrency, last_seen, "
    "tm_diff_us(last_seen, tm_now()) AS age_us FROM served_plugins "
    "ORDER BY plugin, plugin_version, datacenter, node"
)

# Columns (result names) that hold times: SQLiteDatabase returns them as naive
# UTC datetimes, as PyMySQL does for DATETIME.
DATETIME_COLUMNS = frozenset(
    {
        "not_before",
        "not_after",
        "run_after",
        "heartbeat_at",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "ended_at",
        "since",
        "applied_at",
        "next_tick",
        "last_tick",
        "NOW(6)",
        "first_seen",
        "last_seen",
    }
)
