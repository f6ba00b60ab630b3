"""The multi-datacenter lab's fixed facts: topologies, ports, credentials, recorded state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ZK_CLIENT_PORT = 2181
ZK_PEER_PORT = 2888
ZK_ELECTION_PORT = 3888
MYSQL_PORT = 3306
GALERA_PORT = 4567
APP_USER = "taskman"
APP_PASSWORD = "taskman"  # noqa: S105 - throwaway lab servers on a private bridge
DATABASE = "taskman"
ZK_AUTH = "taskman:lab-zk-secret"  # digest identity of the lab's nodes
GALERA_GROUP = "taskman_lab"
# Not a temporary file: a world-traversable parent the mysql user can reach (lab.md).
BASE_PARENT = Path("/var/tmp")  # noqa: S108
DEFAULT_DIR = BASE_PARENT / "taskman-lab-multi-dc"

# Galera failure detection as measured in lab.md: a dead or cut peer is evicted
# ~3.6-4.4 s after the fault; a minority goes non-Primary and refuses statements.
EVS_OPTIONS = (
    "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;"
    "evs.install_timeout=PT4S;evs.keepalive_period=PT0.5S;pc.wait_prim_timeout=PT10S"
)
GALERA_PROVIDER_OPTIONS = "gcache.size=32M;" + EVS_OPTIONS  # garbd has no gcache

# The shipped default session (6 s): the lab proves what users run. Cutting off the
# ZooKeeper leader's datacenter leaves the majority silent for ~2-2.5 s; with 4 s a
# loaded machine pushed that past the runners' 0.75 x session and re-ran their work.
# The other timeouts are short to keep the chaos suite quick.
FAST_NODE: dict[str, Any] = {
    "session_timeout": 6.0,
    "heartbeat_interval": 0.5,
    "poll_interval": 0.2,
    "heartbeat_timeout": 6.0,
    "kill_grace": 2.0,
    "slots": 4,
}

Role = Literal["zk", "galera", "garbd", "node"]


@dataclass(frozen=True)
class DatacenterSpec:
    name: str
    database: Literal["galera", "garbd"] = "galera"
    nodes: int = 1


TOPOLOGIES: dict[str, tuple[DatacenterSpec, ...]] = {
    # The recommended deployment: three full datacenters.
    "3dc": (DatacenterSpec("dc1"), DatacenterSpec("dc2"), DatacenterSpec("dc3")),
    # Two datacenters plus a small third site: one ZooKeeper server and garbd, no data.
    "2dc-arbitrator": (
        DatacenterSpec("dc1"),
        DatacenterSpec("dc2"),
        DatacenterSpec("arb", database="garbd", nodes=0),
    ),
}


@dataclass
class ProcessRecord:
    name: str
    dc: str
    role: Role
    pid: int = 0


@dataclass
class LabState:
    lab_id: str
    topology: str
    subnet: int
    node_options: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
