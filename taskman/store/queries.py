"""Every SQL statement taskman runs, by name.

Writes about a running attempt are fenced: they name the task id AND the fencing
token it was claimed with, in the same statement. A write whose token is stale
matches 0 rows, and the caller learns it was fenced.
"""

from __future__ import annotations

# -- sessions ---------------------------------------------------------------
# UTC everywhere; wsrep_sync_wait=1 makes reads causal on Galera (a read sees
# every write committed anywhere in the cluster before it started).
# group_concat_max_len: TASK_IDS_BY_REQUEST_ID_RANGE's reply (MariaDB's default; MySQL's is 1 kB).
SESSION_SETUP = "SET time_zone = '+00:00', group_concat_max_len = 1048576"
SESSION_GALERA_SYNC = "SET SESSION wsrep_sync_wait = 1"
# MariaDB ends a transaction left idle this long (seconds), and with it its row locks.
SESSION_IDLE_TRANSACTION_LIMIT = "SET SESSION idle_transaction_timeout = %s"
HAS_WSREP = "SHOW GLOBAL VARIABLES LIKE 'wsrep_on'"  # empty on servers built without wsrep
NOW = "SELECT NOW(6)"

# -- migrations -------------------------------------------------------------
MIGRATION_LOCK = "SELECT GET_LOCK(CONCAT('taskman_migrate:', DATABASE()), 60) AS locked"
MIGRATION_UNLOCK = "SELECT RELEASE_LOCK(CONCAT('taskman_migrate:', DATABASE()))"
SCHEMA_TABLE_EXISTS = (
    "SELECT COUNT(*) FROM information_schema.tables "
    "WHERE table_schema = DATABASE() AND table_name = 'taskman_schema'"
)
SCHEMA_VERSIONS = "SELECT version FROM taskman_schema ORDER BY version"
RECORD_VERSION = "INSERT INTO taskman_schema (version, name) VALUES (%s, %s)"
LIST_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = DATABASE() ORDER BY table_name"
)
SHOW_CREATE_TABLE = "SHOW CREATE TABLE `{table}`"  # table names come from LIST_TABLES

# -- client -----------------------------------------------------------------
TASK_COLUMNS = (
    "id, request_id, idempotency_key, plugin, plugin_version, `function`, args, kwargs, "
    "priority, datacenter, not_before, not_after, run_after, timeout_seconds, max_attempts, "
    "retry_backoff_seconds, limits, concurrency_key, concurrency_limit, state, fence, owner, "
    "owner_datacenter, attempt, failures, reclaims, "
    "heartbeat_at, progress, progress_message, abort_requested, result, error_type, "
    "error_message, created_at, started_at, finished_at, updated_at"
)

# A submit inserts one row (INSERT_TASK, params: store/bulk.py insert_params).
INSERT_TASKS = (
    "INSERT INTO tasks (request_id, idempotency_key, plugin, plugin_version, `function`, args, "
    "kwargs, priority, datacenter, not_before, not_after, run_after, timeout_seconds, "
    "max_attempts, retry_backoff_seconds, limits, concurrency_key, concurrency_limit, state) "
    "VALUES {rows}"
)
INSERT_TASKS_ROW = (
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, GREATEST(NOW(6), COALESCE(%s, NOW(6))), "
    "%s, %s, %s, %s, %s, %s, 'queued')"
)
INSERT_TASK = INSERT_TASKS.format(rows=INSERT_TASKS_ROW)
TASK_BY_REQUEST_ID = "SELECT id FROM tasks WHERE request_id = %s"
TASK_BY_IDEMPOTENCY_KEY = (
    "SELECT id, plugin, plugin_version, `function`, args, kwargs FROM tasks "
    "WHERE idempotency_key = %s"
)
# submit_many inserts a chunk of tasks per statement: BULK_INSERT_TASKS, then
# BULK_TASK_ROW once per task, joined by ", ". {columns} are those of BULK_COLUMNS
# some task of the chunk sets; a column left out keeps its default, NULL (less for
# the server to parse). {values} is one %s per column; {run_after} BULK_RUN_AFTER,
# or BULK_RUN_AFTER_NOT_BEFORE (one more %s: the task's not_before) when a task of
# the chunk has a not_before. NOW(6) is one value per statement, so a chunk's tasks
# are due together and claimed in id order, which is item order.
BULK_INSERT_TASKS = "INSERT INTO tasks ({columns}, run_after, state) VALUES "
BULK_TASK_ROW = "({values}, {run_after}, 'queued')"
BULK_RUN_AFTER = "NOW(6)"
BULK_RUN_AFTER_NOT_BEFORE = "GREATEST(NOW(6), COALESCE(%s, NOW(6)))"
# Column -> NewTask attribute, in statement order. A column every task of a chunk
# leaves None is left out (NOT NULL ones never are).
BULK_COLUMNS = {
    "request_id": "request_id",
    "idempotency_key": "idempotency_key",
    "plugin": "plugin",
    "plugin_version": "plugin_version",
    "`function`": "function",
    "args": "args_json",
    "kwargs": "kwargs_json",
    "priority": "priority",
    "datacenter": "datacenter",
    "not_before": "not_before",
    "not_after": "not_after",
    "timeout_seconds": "timeout",
    "max_attempts": "max_attempts",
    "retry_backoff_seconds": "retry_backoff",
    "limits": "limits_json",
    "concurrency_key": "concurrency_key",
    "concurrency_limit": "concurrency_limit",
}
# The same lookups for a batch. Its request ids share a prefix (taskman/bulk.py): one
# range of the unique index holds them all. {keys} is one %s per key of a chunk. The
# ids come back as one text of "id:request_id" pairs joined by "," (in no order): one
# row to read instead of one per task. At most BulkStore's READ_BACK_ITEMS per range,
# so that the text stays under group_concat_max_len (SESSION_SETUP).
TASK_IDS_BY_REQUEST_ID_RANGE = (
    "SELECT GROUP_CONCAT(id, ':', request_id) AS pairs FROM tasks "
    "WHERE request_id BETWEEN %s AND %s"
)
TASKS_BY_IDEMPOTENCY_KEYS = (
    "SELECT id, idempotency_key, plugin, plugin_version, `function`, args, kwargs FROM tasks "
    "WHERE idempotency_key IN ({keys})"
)
GET_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s"
GET_ATTEMPTS = (
    "SELECT task_id, attempt, fence, node, datacenter, plugin_version, started_at, ended_at, "
    "outcome, error_type, error_message, traceback, output_tail "
    "FROM attempts WHERE task_id = %s ORDER BY attempt"
)
# Filters are appended from LIST_FILTERS only; values always go through parameters.
LIST_TASKS = f"SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1"
LIST_FILTERS = {
    "state": " AND state = %s",
    "plugin": " AND plugin = %s",
    "before_id": " AND id < %s",
    "created_after": " AND created_at >= %s",
}
LIST_ORDER = " ORDER BY id DESC LIMIT %s"
COUNT_BY_STATE = "SELECT state, COUNT(*) FROM tasks GROUP BY state"

ABORT_QUEUED = (
    "UPDATE tasks SET state = 'aborted', abort_requested = 1, finished_at = NOW(6), "
    "error_type = 'Aborted', error_message = 'aborted before it started' "
    "WHERE id = %s AND state = 'queued'"
)
ABORT_RUNNING = "UPDATE tasks SET abort_requested = 1 WHERE id = %s AND state = 'running'"
# An operator's retry: a finished-unsuccessfully task goes back to the queue with a
# fresh set of attempts; its history (attempt rows, fences) stays.
RETRY_TASK = (
    "UPDATE tasks SET state = 'queued', run_after = NOW(6), not_after = NULL, failures = 0, "
    "reclaims = 0, abort_requested = 0, owner = NULL, owner_datacenter = NULL, result = NULL, "
    "error_type = NULL, error_message = NULL, progress = NULL, progress_message = NULL, "
    "finished_at = NULL WHERE id = %s AND state IN ('failed', 'aborted', 'expired')"
)
TASK_STATE = "SELECT state, fence, attempt, owner, abort_requested FROM tasks WHERE id = %s"
# The largest token the database holds (fences and leader epochs): a local
# coordinator starts above it after a restart, so tokens only grow.
HIGHEST_FENCE_OR_EPOCH = (
    "SELECT GREATEST(COALESCE((SELECT MAX(fence) FROM tasks), 0), "
    "COALESCE((SELECT MAX(fence) FROM attempts), 0), "
    "COALESCE((SELECT MAX(epoch) FROM leadership), 0)) AS token"
)
# The same, cheap enough for every node start: the last leader's epoch and the
# fences of unfinished work (the tasks_claim index narrows it to those rows).
HIGHEST_LIVE_FENCE_OR_EPOCH = (
    "SELECT GREATEST(COALESCE((SELECT MAX(fence) FROM tasks "
    "WHERE state IN ('queued', 'running')), 0), "
    "COALESCE((SELECT MAX(epoch) FROM leadership), 0)) AS token"
)

# -- node: claims -----------------------------------------------------------
# Candidates: queued, due, not past not_after, runnable in this datacenter, for
# a plugin (and pinned version) this node has. The plugin filter is built from
# CANDIDATE_PLUGIN_TERM, one term per installed plugin.
CANDIDATES = (
    "SELECT id, attempt, plugin, plugin_version, `function`, concurrency_key, concurrency_limit, "
    "priority FROM tasks FORCE INDEX (tasks_claim) "
    "WHERE state = 'queued' AND run_after <= NOW(6) "
    "AND (not_after IS NULL OR not_after > NOW(6)) "
    "AND (datacenter IS NULL OR datacenter = %s) "
    "AND ({plugins}){blocked} "
    "ORDER BY priority DESC, run_after, id LIMIT %s"
)
# Tasks whose concurrency cap is full right now are left out, so they do not
# hide the rest of the queue from this node.
CANDIDATE_BLOCKED_KEYS = " AND (concurrency_key IS NULL OR concurrency_key NOT IN ({keys}))"
CANDIDATE_BLOCKED_FUNCTIONS = " AND (plugin, `function`) NOT IN ({pairs})"
CANDIDATE_PLUGIN_TERM = (
    "(plugin = %s AND (plugin_version IS NULL OR plugin_version IN ({versions})))"
)
# How long until the next queued task becomes due (NULL: none waits): an idle node
# whose wake-ups are armed sleeps until then at most. Read only after a poll found
# nothing, so the index-only scan of the queued range runs at the idle pace.
NEXT_DUE = (  # %s: the grace, in microseconds (TaskStore.next_due_in)
    "SELECT TIMESTAMPDIFF(MICROSECOND, NOW(6), MIN(run_after)) AS due_us "
    "FROM tasks FORCE INDEX (tasks_claim) WHERE state = 'queued' "
    "AND run_after > NOW(6) - INTERVAL %s MICROSECOND"
)

# The claim: one conditional UPDATE moves the task to running under the new
# token. `attempt = %s` pins the attempt the claimer saw, and `fence < %s`
# makes tokens only ever grow for a task.
CLAIM = (
    "UPDATE tasks SET state = 'running', fence = %s, owner = %s, owner_datacenter = %s, "
    "attempt = attempt + 1, heartbeat_at = NOW(6), started_at = COALESCE(started_at, NOW(6)), "
    "progress = NULL, progress_message = NULL "
    "WHERE id = %s AND state = 'queued' AND attempt = %s AND fence < %s "
    "AND (not_after IS NULL OR not_after > NOW(6))"
)
# The attempts rows of a claim batch, one statement in the claim's packet: a row for
# each task whose UPDATE just moved it, known by its claim's token on a running row
# of this node (a reclaimed row keeps its old token, queued). {ids} is one %s per
# claim; {versions} and {fences} CLAIM_WHEN once per claim.
INSERT_OUR_ATTEMPTS = (
    "INSERT INTO attempts (task_id, attempt, fence, node, datacenter, plugin_version) "
    "SELECT id, attempt, fence, %s, %s, CASE id {versions} END FROM tasks "
    "WHERE id IN ({ids}) AND state = 'running' AND owner = %s AND fence = CASE id {fences} END"
)
CLAIM_WHEN = "WHEN %s THEN %s"
# The wait runs from when the task was due or, for a reclaimed one (whose run_after
# is its old place in line), from when its last attempt ended.
CLAIMED_TASKS = (  # {ids}: one %s per claimed task of a batch
    "SELECT id, attempt, fence, plugin, plugin_version, `function`, args, kwargs, "
    "timeout_seconds, max_attempts, failures, retry_backoff_seconds, abort_requested, limits, "
    "TIMESTAMPDIFF(MICROSECOND, GREATEST(run_after, COALESCE("
    "(SELECT MAX(ended_at) FROM attempts WHERE attempts.task_id = tasks.id), run_after)), "
    "NOW(6)) AS wait_us "
    "FROM tasks WHERE id IN ({ids})"
)

# -- node: fenced writes about a running attempt ------------------------------
# The heartbeat of every attempt without new progress, one statement, each row fenced
# on its own token: {ids} is one %s per attempt, {pairs} one (%s, %s) per (id, token).
HEARTBEATS = (
    "UPDATE tasks SET heartbeat_at = NOW(6) WHERE id IN ({ids}) "
    "AND (id, fence) IN ({pairs}) AND state = 'running'"
)
RUNNING_STATUS = "SELECT id, fence, state, abort_requested FROM tasks WHERE id IN ({ids})"
PROGRESS = (
    "UPDATE tasks SET progress = %s, progress_message = %s, heartbeat_at = NOW(6) "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
FINISH_SUCCEEDED = (
    "UPDATE tasks SET state = 'succeeded', result = %s, progress = 1.0, finished_at = NOW(6), "
    "error_type = NULL, error_message = NULL "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
# A failure either goes back to the queue after a backoff, or ends the task. An
# attempt the node gave up for its own trouble (not the task's failure: the CASE
# flag is 0) keeps run_after, and so its place in line, as a reclaim does.
FINISH_RETRY = (
    "UPDATE tasks SET state = 'queued', failures = failures + %s, reclaims = reclaims + %s, "
    "owner = NULL, owner_datacenter = NULL, "
    "run_after = CASE WHEN %s THEN NOW(6) + INTERVAL %s MICROSECOND ELSE run_after END, "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
FINISH_FAILED = (
    "UPDATE tasks SET state = %s, failures = failures + %s, finished_at = NOW(6), "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND state = 'running'"
)
# The attempts rows of a batch of endings (those whose task UPDATE matched), one
# statement, each row fenced on its own token: {when} is END_ATTEMPTS_WHEN once per
# ending (one CASE per column), {rows} END_ATTEMPTS_ROW once per ending, joined by " OR ".
END_ATTEMPTS = (
    "UPDATE attempts SET ended_at = NOW(6), outcome = CASE {when} END, "
    "error_type = CASE {when} END, error_message = CASE {when} END, "
    "traceback = CASE {when} END, output_tail = CASE {when} END "
    "WHERE outcome = 'running' AND ({rows})"
)
END_ATTEMPTS_WHEN = "WHEN task_id = %s AND attempt = %s THEN %s"
END_ATTEMPTS_ROW = "(task_id = %s AND attempt = %s AND fence = %s)"

# After an ambiguous COMMIT of a batch of endings: which attempts ended, and how.
ENDED_ATTEMPTS = "SELECT task_id, attempt, fence, outcome FROM attempts WHERE task_id IN ({ids})"

# -- leader -----------------------------------------------------------------
# The leader's ZooKeeper epoch only grows; a stale leader's UPDATE matches 0 rows.
TAKE_LEADERSHIP = (
    "INSERT INTO leadership (name, epoch, node) VALUES (%s, %s, %s) "
    "ON DUPLICATE KEY UPDATE node = IF(epoch < VALUES(epoch), VALUES(node), node), "
    "since = IF(epoch < VALUES(epoch), NOW(6), since), "
    "epoch = GREATEST(epoch, VALUES(epoch))"
)
LEADERSHIP = "SELECT epoch, node FROM leadership WHERE name = %s"
LEADER_GUARD = " AND EXISTS (SELECT 1 FROM leadership WHERE name = %s AND epoch = %s)"
RUNNING_TASKS = (
    "SELECT id, attempt, fence, owner, heartbeat_at, reclaims FROM tasks "
    "WHERE state = 'running' ORDER BY id"
)
# Re-queue an attempt whose owner is gone: fenced on the old token, guarded by the
# leader's epoch. The next claim gets a larger token. run_after stays as it was:
# the task keeps its place in line, ahead of everything submitted after it.
RECLAIM = (
    "UPDATE tasks SET state = 'queued', reclaims = reclaims + 1, owner = NULL, "
    "owner_datacenter = NULL, error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND attempt = %s AND state = 'running'" + LEADER_GUARD
)
RECLAIM_GIVE_UP = (
    "UPDATE tasks SET state = 'failed', reclaims = reclaims + 1, finished_at = NOW(6), "
    "error_type = %s, error_message = %s "
    "WHERE id = %s AND fence = %s AND attempt = %s AND state = 'running'" + LEADER_GUARD
)
END_LOST_ATTEMPT = (
    "UPDATE attempts SET ended_at = NOW(6), outcome = %s, error_type = %s, error_message = %s "
    "WHERE task_id = %s AND attempt = %s AND fence = %s AND outcome = 'running'"
)
EXPIRE_DUE = (
    "UPDATE tasks SET state = 'expired', finished_at = NOW(6), error_type = 'Expired', "
    "error_message = 'not_after passed before the task started' "
    "WHERE state = 'queued' AND not_after IS NOT NULL AND not_after <= NOW(6)"
    + LEADER_GUARD
    + " LIMIT %s"
)
# Retention: finished tasks older than their state's age go, in small batches, oldest
# first; attempts follow through the foreign key. Only terminal states match, so a
# batch never touches a row a node is claiming.
PRUNE_BATCH = (
    "DELETE FROM tasks WHERE state = %s AND finished_at < NOW(6) - INTERVAL %s SECOND"
    + LEADER_GUARD
    + " LIMIT %s"  # no ORDER BY: with it the optimizer picks a filesort, 50x slower
)
PRUNE_COUNT = (
    "SELECT COUNT(*) AS n FROM tasks WHERE state = %s AND finished_at < NOW(6) - INTERVAL %s SECOND"
)
# What queued work needs, by placement: the leader checks each against the live members.
QUEUED_PLACEMENTS = (
    "SELECT DISTINCT plugin, plugin_version, datacenter FROM tasks WHERE state = 'queued'"
)
# How long the longest-waiting due task has been queued (the leader's metric): from
# when it became due, or, for a reclaimed or requeued one whose run_after is its old
# place in line, from when it went back to the queue (updated_at). Negative: none due.
OLDEST_QUEUED_WAIT = (
    "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(GREATEST(run_after, updated_at)), NOW(6)) "
    "AS wait_us FROM tasks WHERE state = 'queued'"
)
# Fail the queued tasks of one placement no live node has served for the grace (the
# leader times that); a task due for less than the grace waits its own grace first.
FAIL_UNPLACEABLE = (
    "UPDATE tasks SET state = 'failed', finished_at = NOW(6), error_type = %s, "
    "error_message = %s "
    "WHERE state = 'queued' AND plugin = %s AND plugin_version <=> %s AND datacenter <=> %s "
    "AND run_after <= NOW(6) - INTERVAL %s MICROSECOND" + LEADER_GUARD
)

# -- what nodes serve (taskman/store/placement.py, taskman/placement.py) -----------------
# One row per (node, plugin, version), upserted at node start and on every refresh. Nodes
# never delete rows: the client refuses only what no node has EVER served, and last_seen
# tells whether anything serves it now.
PUBLISH_SERVED = (
    "INSERT INTO served_plugins (node, datacenter, plugin, plugin_version, functions, "
    "concurrency, first_seen, last_seen) VALUES (%s, %s, %s, %s, %s, %s, NOW(6), NOW(6)) "
    "ON DUPLICATE KEY UPDATE datacenter = VALUES(datacenter), functions = VALUES(functions), "
    "concurrency = VALUES(concurrency), last_seen = NOW(6)"
)
# Ages by the database's clock: no client clock is compared with a node's.
SERVED = (
    "SELECT node, datacenter, plugin, plugin_version, functions, concurrency, last_seen, "
    "TIMESTAMPDIFF(MICROSECOND, last_seen, NOW(6)) AS age_us FROM served_plugins "
    "ORDER BY plugin, plugin_version, datacenter, node"
)
# Running attempts that hold a permit of one cap key (cluster/concurrency.py cap_for): a
# task's own key when it sets a limit, else plugin:function.
RUNNING_WITH_CAP_KEY = (
    "SELECT COUNT(*) AS n FROM tasks WHERE state = 'running' AND concurrency_key = %s "
    "AND concurrency_limit IS NOT NULL"
)
RUNNING_OF_FUNCTION = (
    "SELECT COUNT(*) AS n FROM tasks WHERE state = 'running' AND plugin = %s "
    "AND `function` = %s AND (concurrency_key IS NULL OR concurrency_limit IS NULL)"
)

# -- schedules (recurring tasks; see taskman/schedules.py and docs/schedules.md) --------
SCHEDULE_COLUMNS = (
    "name, plugin, plugin_version, `function`, args, kwargs, cron, timezone, every_seconds, "
    "priority, timeout_seconds, max_attempts, retry_backoff_seconds, datacenter, misfire, "
    "max_catch_up, misfire_grace_seconds, overlap, paused, next_tick, last_tick, last_task_id, "
    "ticks_fired, ticks_skipped, created_at, updated_at"
)
GET_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = %s"
LOCK_SCHEDULE = GET_SCHEDULE + " FOR UPDATE"
LIST_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
INSERT_SCHEDULE = (
    "INSERT INTO schedules (name, plugin, plugin_version, `function`, args, kwargs, cron, "
    "timezone, every_seconds, priority, timeout_seconds, max_attempts, retry_backoff_seconds, "
    "datacenter, misfire, max_catch_up, misfire_grace_seconds, overlap, paused, next_tick) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# A replaced definition starts ticking from now; its counters and history stay.
REPLACE_SCHEDULE = (
    "UPDATE schedules SET plugin = %s, plugin_version = %s, `function` = %s, args = %s, "
    "kwargs = %s, cron = %s, timezone = %s, every_seconds = %s, priority = %s, "
    "timeout_seconds = %s, max_attempts = %s, retry_backoff_seconds = %s, datacenter = %s, "
    "misfire = %s, max_catch_up = %s, misfire_grace_seconds = %s, overlap = %s, next_tick = %s "
    "WHERE name = %s"
)
PAUSE_SCHEDULE = "UPDATE schedules SET paused = 1 WHERE name = %s"
# Resuming starts from the next tick after now: ticks while paused are not misfires.
RESUME_SCHEDULE = "UPDATE schedules SET paused = 0, next_tick = %s WHERE name = %s AND paused = 1"
DELETE_SCHEDULE = "DELETE FROM schedules WHERE name = %s"
# What is due is decided by the database's clock, never a node's.
DUE_SCHEDULES = (
    "SELECT name FROM schedules FORCE INDEX (schedules_due) "
    "WHERE paused = 0 AND next_tick <= NOW(6) ORDER BY next_tick LIMIT %s"
)
# How far the most overdue unpaused schedule's next tick is behind the database's
# clock (the leader's metric; negative: none due). MIN on schedules_due is one probe.
SCHEDULE_LAG = (
    "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(next_tick), NOW(6)) AS lag_us "
    "FROM schedules WHERE paused = 0"
)
# The leader's advance of one schedule: optimistic on the next tick it read (a
# concurrent pause, replace or second leader makes it match 0 rows) and guarded
# by the leader's epoch. The tick tasks are inserted in the same transaction.
ADVANCE_SCHEDULE = (
    "UPDATE schedules SET next_tick = %s, last_tick = COALESCE(%s, last_tick), "
    "last_task_id = COALESCE(%s, last_task_id), ticks_fired = ticks_fired + %s, "
    "ticks_skipped = ticks_skipped + %s "
    "WHERE name = %s AND next_tick = %s AND paused = 0" + LEADER_GUARD
)
# One task per (schedule, tick): the UNIQUE idempotency_key refuses a second one,
# whichever leader tries. Not INSERT_TASK: the tick's task is due at once.
INSERT_TICK_TASK = (
    "INSERT INTO tasks (request_id, idempotency_key, plugin, plugin_version, `function`, args, "
    "kwargs, priority, datacenter, run_after, timeout_seconds, max_attempts, "
    "retry_backoff_seconds, state) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NOW(6), %s, %s, %s, 'queued')"
)
TASK_ID_BY_KEY = "SELECT id FROM tasks WHERE idempotency_key = %s"
TICK_TASKS = (
    "SELECT id, idempotency_key, state, created_at FROM tasks "
    "WHERE idempotency_key LIKE %s ORDER BY idempotency_key"
)

# -- web UI (read-only; taskman/store/dashboard.py, docs/ui.md) --------------------------
# The task list reads narrow rows: no args, kwargs or result (LONGTEXT) per line.
UI_ROW_COLUMNS = (
    "id, state, plugin, plugin_version, `function`, datacenter, owner, owner_datacenter, "
    "attempt, max_attempts, failures, reclaims, progress, progress_message, abort_requested, "
    "idempotency_key, error_type, error_message, created_at, started_at, finished_at"
)
UI_LIST = f"SELECT {UI_ROW_COLUMNS} FROM tasks WHERE 1 = 1"
# Time filters walk tasks_created, which is (created_at, id): range and order in one
# index, so LIMIT stops early however far back the window lies.
UI_LIST_BY_TIME = f"SELECT {UI_ROW_COLUMNS} FROM tasks FORCE INDEX (tasks_created) WHERE 1 = 1"
# Appended from here only; values always go through parameters.
UI_FILTERS = {
    "state": " AND state = %s",
    "plugin": " AND plugin = %s",
    "function": " AND `function` = %s",
    "datacenter": " AND (owner_datacenter = %s OR datacenter = %s)",  # ran in, or pinned to
    "since": " AND created_at >= %s",
    "until": " AND created_at < %s",
    "id_below": " AND id < %s",
    "id_from": " AND id >= %s",
    "time_cursor": " AND (created_at < %s OR (created_at = %s AND id < %s))",
    "id_is": " AND id = %s",
    "key_is": " AND idempotency_key = %s",
    "key_prefix": " AND idempotency_key LIKE %s",
}
UI_ORDER_ID = " ORDER BY id DESC LIMIT %s"
UI_ORDER_TIME = " ORDER BY created_at DESC, id DESC LIMIT %s"
UI_ORDER_KEY = " ORDER BY idempotency_key LIMIT %s"  # the unique index's order: no filesort
UI_MAX_ID = "SELECT MAX(id) AS id FROM tasks"
UI_CREATED_AT = "SELECT created_at FROM tasks WHERE id = %s"
# Finished tasks per 5-minute bucket over the last hour, by the database's clock;
# bucket 0 is the latest. tasks_finished (state, finished_at) covers it.
UI_THROUGHPUT = (
    "SELECT TIMESTAMPDIFF(SECOND, finished_at, NOW(6)) DIV %s AS bucket, state, COUNT(*) AS n "
    "FROM tasks WHERE state IN ('succeeded', 'failed', 'aborted', 'expired') "
    "AND finished_at >= NOW(6) - INTERVAL %s SECOND GROUP BY bucket, state"
)
UI_RUNNING_OWNERS = (
    "SELECT owner, owner_datacenter, COUNT(*) AS n FROM tasks WHERE state = 'running' "
    "GROUP BY owner, owner_datacenter"
)
UI_LEADERSHIP = "SELECT epoch, node, since FROM leadership WHERE name = 'reaper'"
