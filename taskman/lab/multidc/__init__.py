"""A multi-datacenter lab on one machine: ZooKeeper, Galera and taskman nodes per datacenter.

Each datacenter is a network namespace (see ``taskman.lab.netns``) that runs one
ZooKeeper server of a 3-server ensemble, one MariaDB Galera node (or, at an
arbitrator site, ``garbd`` only) and one or more ``taskman node`` processes whose
config points at their own datacenter's Galera node and at the whole ensemble.
The test driver (root namespace) reaches every server over the bridge.

Every process is started by PID and recorded in ``<base_dir>/state.json``, so
``taskman lab multi-dc`` commands run from another shell can kill, pause or
partition what an earlier ``up`` started. Before signalling a recorded PID the
lab checks that its command line names the lab's directory: a PID the kernel
has since reused for something else is never touched.

Facts this follows (lab.md): mysqld must run as ``mysql`` (rsync SST as root
fails), so the lab lives under ``/var/tmp/taskman-lab-<id>`` with mode 0755;
ZooKeeper runs with ``maxNotificationInterval=2000`` so a healed peer rejoins in
seconds; Galera's ``evs.suspect_timeout`` is 3 s.

The parts, each a module: ``topology`` (topologies, ports, recorded state),
``processes`` (start, find and signal the lab's processes), ``zookeeper``,
``galera`` (and garbd), ``nodes`` (taskman nodes), ``faults`` (faults and health)
and ``lab`` (``MultiDCLab``: up, down, status), which combines them all.
"""

from taskman.lab.multidc.lab import MultiDCLab
from taskman.lab.multidc.topology import (
    APP_PASSWORD,
    APP_USER,
    BASE_PARENT,
    DATABASE,
    DEFAULT_DIR,
    EVS_OPTIONS,
    FAST_NODE,
    GALERA_GROUP,
    GALERA_PORT,
    GALERA_PROVIDER_OPTIONS,
    MYSQL_PORT,
    TOPOLOGIES,
    ZK_AUTH,
    ZK_CLIENT_PORT,
    ZK_ELECTION_PORT,
    ZK_PEER_PORT,
    DatacenterSpec,
    LabState,
    ProcessRecord,
    Role,
)

__all__ = [
    "APP_PASSWORD",
    "APP_USER",
    "BASE_PARENT",
    "DATABASE",
    "DEFAULT_DIR",
    "EVS_OPTIONS",
    "FAST_NODE",
    "GALERA_GROUP",
    "GALERA_PORT",
    "GALERA_PROVIDER_OPTIONS",
    "MYSQL_PORT",
    "TOPOLOGIES",
    "ZK_AUTH",
    "ZK_CLIENT_PORT",
    "ZK_ELECTION_PORT",
    "ZK_PEER_PORT",
    "DatacenterSpec",
    "LabState",
    "MultiDCLab",
    "ProcessRecord",
    "Role",
]
