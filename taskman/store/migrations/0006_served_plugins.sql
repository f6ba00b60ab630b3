-- Version 6: what each node serves (plugin versions, their function allowlists and caps),
-- so a client that has only the database can refuse a submit no node could ever run.
-- A row stays after its node stops serving it: the client's check is "ever served";
-- last_seen (refreshed by the node) tells whether it is served now.
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
