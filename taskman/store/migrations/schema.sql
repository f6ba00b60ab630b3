-- The current schema, applied in one go to an empty database.
-- Every change here must also be a numbered migration; a test proves both give the same tables.
CREATE TABLE taskman_schema (
    version INT NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    applied_at DATETIME(6) NOT NULL DEFAULT NOW(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE tasks (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id CHAR(32) NOT NULL,
    idempotency_key VARCHAR(255) COLLATE utf8mb4_nopad_bin NULL,  -- trailing spaces are significant
    plugin VARCHAR(100) NOT NULL,
    plugin_version VARCHAR(50) NULL,
    `function` VARCHAR(255) NOT NULL,
    args LONGTEXT NOT NULL,
    kwargs LONGTEXT NOT NULL,
    priority INT NOT NULL DEFAULT 0,
    datacenter VARCHAR(64) NULL,
    not_before DATETIME(6) NULL,
    not_after DATETIME(6) NULL,
    run_after DATETIME(6) NOT NULL,
    timeout_seconds DOUBLE NULL,
    max_attempts INT NOT NULL,
    retry_backoff_seconds DOUBLE NULL,
    limits TEXT NULL,
    concurrency_key VARCHAR(255) NULL,
    concurrency_limit INT NULL,
    state VARCHAR(16) NOT NULL,
    fence BIGINT UNSIGNED NOT NULL DEFAULT 0,
    owner VARCHAR(128) NULL,
    owner_datacenter VARCHAR(64) NULL,
    attempt INT NOT NULL DEFAULT 0,
    failures INT NOT NULL DEFAULT 0,
    reclaims INT NOT NULL DEFAULT 0,
    heartbeat_at DATETIME(6) NULL,
    progress DOUBLE NULL,
    progress_message VARCHAR(1000) NULL,
    abort_requested TINYINT(1) NOT NULL DEFAULT 0,
    result LONGTEXT NULL,
    error_type VARCHAR(255) NULL,
    error_message TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT NOW(6),
    started_at DATETIME(6) NULL,
    finished_at DATETIME(6) NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT NOW(6) ON UPDATE NOW(6),
    UNIQUE KEY tasks_request_id (request_id),
    UNIQUE KEY tasks_idempotency_key (idempotency_key),
    KEY tasks_claim (state, priority DESC, run_after, id),
    KEY tasks_expiry (state, not_after),
    KEY tasks_owner (owner, state),
    KEY tasks_plugin (plugin, state),
    KEY tasks_created (created_at),
    KEY tasks_finished (state, finished_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE attempts (
    task_id BIGINT UNSIGNED NOT NULL,
    attempt INT NOT NULL,
    fence BIGINT UNSIGNED NOT NULL,
    node VARCHAR(128) NOT NULL,
    datacenter VARCHAR(64) NOT NULL,
    plugin_version VARCHAR(50) NULL,
    started_at DATETIME(6) NOT NULL DEFAULT NOW(6),
    ended_at DATETIME(6) NULL,
    outcome VARCHAR(32) NOT NULL DEFAULT 'running',
    error_type VARCHAR(255) NULL,
    error_message TEXT NULL,
    traceback MEDIUMTEXT NULL,
    output_tail MEDIUMTEXT NULL,
    PRIMARY KEY (task_id, attempt),
    CONSTRAINT attempts_task FOREIGN KEY (task_id) REFERENCES tasks (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE leadership (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    epoch BIGINT UNSIGNED NOT NULL,
    node VARCHAR(128) NOT NULL,
    since DATETIME(6) NOT NULL DEFAULT NOW(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

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

-- What each node serves (migration 6): the client refuses a submit no node ever served.
CREATE TABLE served_plugins (
    node VARCHAR(128) NOT NULL,
    datacenter VARCHAR(64) NOT NULL,
    plugin VARCHAR(100) NOT NULL,
    plugin_version VARCHAR(50) NOT NULL,
    functions TEXT NULL,  -- JSON list of the manifest's fnmatch patterns; NULL: any function
    concurrency TEXT NULL,  -- JSON object of the manifest's [concurrency]: pattern -> cap
    first_seen DATETIME(6) NOT NULL DEFAULT NOW(6),
    last_seen DATETIME(6) NOT NULL DEFAULT NOW(6),
    PRIMARY KEY (node, plugin, plugin_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
