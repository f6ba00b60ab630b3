-- Version 6 in SQLite's dialect (embedded mode): what each node serves; see 0006_served_plugins.sql.
CREATE TABLE served_plugins (
    node TEXT NOT NULL,
    datacenter TEXT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL,
    functions TEXT NULL,  -- JSON list of the manifest's fnmatch patterns; NULL: any function
    concurrency TEXT NULL,  -- JSON object of the manifest's [concurrency]: pattern -> cap
    first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    last_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    PRIMARY KEY (node, plugin, plugin_version)
);
