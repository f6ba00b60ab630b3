-- Version 3: per-task resource limits, cluster-wide concurrency caps, node-default backoff.
ALTER TABLE tasks
    ADD COLUMN limits TEXT NULL AFTER retry_backoff_seconds,
    ADD COLUMN concurrency_key VARCHAR(255) NULL AFTER limits,
    ADD COLUMN concurrency_limit INT NULL AFTER concurrency_key,
    -- NULL: the claiming node's retry_backoff default applies.
    MODIFY COLUMN retry_backoff_seconds DOUBLE NULL;
