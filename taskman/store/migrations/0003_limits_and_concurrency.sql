-- Version 3: per-task resource limits and cluster-wide concurrency caps.
ALTER TABLE tasks
    ADD COLUMN limits TEXT NULL AFTER retry_backoff_seconds,
    ADD COLUMN concurrency_key VARCHAR(255) NULL AFTER limits,
    ADD COLUMN concurrency_limit INT NULL AFTER concurrency_key;
