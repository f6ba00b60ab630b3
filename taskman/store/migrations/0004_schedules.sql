-- Version 4: recurring schedules. The elected leader turns each due tick into one task
-- whose idempotency_key names the schedule and the tick (docs/schedules.md).
CREATE TABLE schedules (
    name VARCHAR(200) NOT NULL PRIMARY KEY,
    plugin VARCHAR(100) NOT NULL,
    plugin_version VARCHAR(50) NULL,
    `function` VARCHAR(255) NOT NULL,
    args LONGTEXT NOT NULL,
    kwargs LONGTEXT NOT NULL,
    cron VARCHAR(255) NULL,
    timezone VARCHAR(64) NOT NULL,
    every_seconds BIGINT NULL,
    priority INT NOT NULL DEFAULT 0,
    timeout_seconds DOUBLE NULL,
    max_attempts INT NOT NULL,
    retry_backoff_seconds DOUBLE NULL,  -- NULL: the claiming node's default
    datacenter VARCHAR(64) NULL,
    misfire VARCHAR(16) NOT NULL,
    max_catch_up INT NOT NULL,
    misfire_grace_seconds INT NOT NULL,
    overlap VARCHAR(16) NOT NULL,
    paused TINYINT(1) NOT NULL DEFAULT 0,
    next_tick DATETIME(6) NOT NULL,
    last_tick DATETIME(6) NULL,
    last_task_id BIGINT UNSIGNED NULL,
    ticks_fired BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ticks_skipped BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL DEFAULT NOW(6),
    updated_at DATETIME(6) NOT NULL DEFAULT NOW(6) ON UPDATE NOW(6),
    KEY schedules_due (paused, next_tick)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
