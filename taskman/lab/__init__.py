"""Start real MariaDB and ZooKeeper servers for tests, benchmarks and a local dev cluster."""

from taskman.lab.servers import LabError, MariaDBServer, ZooKeeperEnsemble, free_port

__all__ = ["LabError", "MariaDBServer", "ZooKeeperEnsemble", "free_port"]
