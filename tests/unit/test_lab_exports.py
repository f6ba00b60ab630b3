"""taskman.lab's import paths: what tests, benchmarks and the CLI import must stay importable.

The lab's servers and its multi-datacenter lab are packages of small modules; their
``__init__`` re-exports the names callers use, and MultiDCLab combines its parts.
"""

from __future__ import annotations

import importlib

import pytest

EXPORTS = {
    "taskman.lab": ["LabError", "MariaDBServer", "ZooKeeperEnsemble", "free_port"],
    "taskman.lab.servers": [
        "INSTALL_HINT",
        "LabError",
        "MariaDBServer",
        "ZOOKEEPER_JARS",
        "ZooKeeperEnsemble",
        "free_port",
    ],
    "taskman.lab.multidc": [
        "APP_USER",
        "DATABASE",
        "DEFAULT_DIR",
        "FAST_NODE",
        "TOPOLOGIES",
        "DatacenterSpec",
        "LabState",
        "MultiDCLab",
        "ProcessRecord",
    ],
}

# What the chaos tests, the soak and `taskman lab multi-dc` call on a lab.
LAB_METHODS = [
    "create",
    "load",
    "save",
    "up",
    "down",
    "detach",
    "status",
    "spec",
    "dsn",
    "node_ids",
    "node_dc",
    "node_log",
    "socket_path",
    "pid",
    "alive",
    "signal",
    "kill",
    "processes",
    "start_zookeeper",
    "zk_mode",
    "zk_leader",
    "wait_zookeeper",
    "start_galera",
    "galera_status",
    "galera_synced",
    "wait_galera",
    "galera_cluster_size",
    "restart_galera",
    "start_garbd",
    "root_connection",
    "start_node",
    "node_events",
    "wait_node_event",
    "leader_node",
    "pause_node",
    "resume_node",
    "freeze_node_tree",
    "thaw",
    "restart_nodes",
    "kill_dc",
    "start_dc",
    "partition_dc",
    "heal",
    "healthy",
    "leader_ok",
    "restore",
]


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_names_stay_importable(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in EXPORTS[module] if not hasattr(imported, name)]
    assert missing == [], f"{module} no longer exports {missing}"


def test_the_servers_share_one_error_and_the_lab_one_class() -> None:
    from taskman import lab
    from taskman.lab import multidc, netns
    from taskman.lab.multidc import lab as multidc_lab
    from taskman.lab.servers import process

    assert lab.LabError is netns.LabError is process.LabError
    assert multidc.MultiDCLab is multidc_lab.MultiDCLab


def test_multidc_lab_has_every_operation_its_callers_use() -> None:
    from taskman.lab.multidc import MultiDCLab

    missing = [name for name in LAB_METHODS if not callable(getattr(MultiDCLab, name, None))]
    assert missing == []
    assert isinstance(MultiDCLab.galera_dcs, property)
    assert isinstance(MultiDCLab.zookeeper_hosts, property)
