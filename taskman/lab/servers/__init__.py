"""Real MariaDB and ZooKeeper servers for tests, benchmarks and a local dev cluster.

Every server is a child process of the caller, bound to loopback ports chosen here,
with its data and logs under a caller-supplied base directory. Nothing here talks to
a system-wide server (a MariaDB on 3306 may exist: it is never used).

``process`` holds what every server shares (the error, free ports, binaries, child
processes), ``mariadb`` the MariaDB server and ``zookeeper`` the ensemble.
"""

from taskman.lab.servers.mariadb import MariaDBServer
from taskman.lab.servers.process import INSTALL_HINT, LabError, free_port
from taskman.lab.servers.zookeeper import ZOOKEEPER_JARS, ZooKeeperEnsemble

__all__ = [
    "INSTALL_HINT",
    "ZOOKEEPER_JARS",
    "LabError",
    "MariaDBServer",
    "ZooKeeperEnsemble",
    "free_port",
]
