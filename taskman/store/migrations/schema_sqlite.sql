-- The SQLite schema (embedded mode), applied in one transaction to an empty file.
-- It equals MySQL schema version 5 (schema.sql); later changes are NNNN_name.sqlite.sql.
-- (served_plugins, version 6, is 0006_served_plugins.sqlite.sql.)
-- Times are TEXT 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC. taskman writes every time itself
-- (microseconds); the DEFAULTs and triggers below only serve hand-made rows, with
-- SQLite's millisecond clock padded to the same width.
-- A trigger must stay on one line: statements are split at a ';' that ends a line.
CREATE TABLE taskman_schema (
    version INTEGER NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')
);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids of pruned tasks never come back
    request_id TEXT NOT NULL,
    idempotency_key TEXT NULL,  -- BINARY collation: trailing spaces are significant
    plugin TEXT NOT NULL,
    plugin_version TEXT NULL,
    `function` TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    datacenter TEXT NULL,
    not_before TEXT NULL,
    not_after TEXT NULL,
    run_after TEXT NOT NULL,
    timeout_seconds REAL NULL,
    max_attempts INTEGER NOT NULL,
    retry_backoff_seconds REAL NULL,
    limits TEXT NULL,
    concurrency_key TEXT NULL,
    concurrency_limit INTEGER NULL,
    state TEXT NOT NULL,
    fence INTEGER NOT NULL DEFAULT 0,
    owner TEXT NULL,
    owner_datacenter TEXT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    reclaims INTEGER NOT NULL DEFAULT 0,
    heartbeat_at TEXT NULL,
    progress REAL NULL,
    progress_message TEXT NULL,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    result TEXT NULL,
    error_type TEXT NULL,
    error_message TEXT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    started_at TEXT NULL,
    finished_at TEXT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')
);
CREATE UNIQUE INDEX tasks_request_id ON tasks (request_id);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key);
CREATE INDEX tasks_claim ON tasks (state, priority DESC, run_after, id);
CREATE INDEX tasks_expiry ON tasks (state, not_after);
CREATE INDEX tasks_owner ON tasks (owner, state);
CREATE INDEX tasks_plugin ON tasks (plugin, state);
CREATE INDEX tasks_created ON tasks (created_at);
CREATE INDEX tasks_finished ON tasks (state, finished_at);
-- MySQL's ON UPDATE NOW(6). Triggers do not count in changes(), so row counts stay the statement's.
CREATE TRIGGER tasks_updated_at AFTER UPDATE ON tasks FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at BEGIN UPDATE tasks SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') || '000' WHERE id = NEW.id; END;

CREATE TABLE attempts (
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    node TEXT NOT NULL,
    datacenter TEXT NOT NULL,
    plugin_version TEXT NULL,
    started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    ended_at TEXT NULL,
    outcome TEXT NOT NULL DEFAULT 'running',
    error_type TEXT NULL,
    error_message TEXT NULL,
    traceback TEXT NULL,
    output_tail TEXT NULL,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE leadership (
    name TEXT NOT NULL PRIMARY KEY,
    epoch INTEGER NOT NULL,
    node TEXT NOT NULL,
    since TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')
);

CREATE TABLE schedules (
    name TEXT NOT NULL PRIMARY KEY,
    plugin TEXT NOT NULL,
    plugin_version TEXT NULL,
    `function` TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    cron TEXT NULL,
    timezone TEXT NOT NULL,
    every_seconds INTEGER NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout_seconds REAL NULL,
    max_attempts INTEGER NOT NULL,
    retry_backoff_seconds REAL NULL,  -- NULL: the claiming node's default
    datacenter TEXT NULL,
    misfire TEXT NOT NULL,
    max_catch_up INTEGER NOT NULL,
    misfire_grace_seconds INTEGER NOT NULL,
    overlap TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    next_tick TEXT NOT NULL,
    last_tick TEXT NULL,
    last_task_id INTEGER NULL,
    ticks_fired INTEGER NOT NULL DEFAULT 0,
    ticks_skipped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')
);
CREATE INDEX schedules_due ON schedules (paused, next_tick);
CREATE TRIGGER schedules_updated_at AFTER UPDATE ON schedules FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at BEGIN UPDATE schedules SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') || '000' WHERE name = NEW.name; END;
