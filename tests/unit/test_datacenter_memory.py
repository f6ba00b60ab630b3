"""The leader's live nodes per datacenter: a datacenter whose nodes left reads 0, then retires."""

from __future__ import annotations

from taskman.cluster.leadership import DatacenterMemory

MEMBERS = [
    {"node_id": "a", "datacenter": "dc1"},
    {"node_id": "b", "datacenter": "dc1"},
    {"node_id": "c", "datacenter": "dc2"},
    {"node_id": "junk", "invalid": True},
]


def test_a_datacenter_whose_nodes_left_reads_zero_until_retired() -> None:
    memory = DatacenterMemory(remember=100.0)
    assert memory.update(MEMBERS, now=0.0) == ({"dc1": 2, "dc2": 1}, [])
    assert memory.update(MEMBERS[:2], now=50.0) == ({"dc1": 2, "dc2": 0}, [])
    assert memory.update(MEMBERS[:2], now=100.0) == ({"dc1": 2, "dc2": 0}, [])
    assert memory.update(MEMBERS[:2], now=100.5) == ({"dc1": 2}, ["dc2"])
    assert memory.update([], now=150.0) == ({"dc1": 0}, [])
    assert memory.update(MEMBERS[2:], now=160.0) == ({"dc1": 0, "dc2": 1}, [])
    memory.clear()
    assert memory.update([], now=170.0) == ({}, [])
