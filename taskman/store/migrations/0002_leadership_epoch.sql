-- Version 2: the elected leader records its ZooKeeper epoch, which fences its writes.
CREATE TABLE leadership (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    epoch BIGINT UNSIGNED NOT NULL,
    node VARCHAR(128) NOT NULL,
    since DATETIME(6) NOT NULL DEFAULT NOW(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
