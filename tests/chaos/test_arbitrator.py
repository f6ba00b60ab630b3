"""Two datacenters plus an arbitrator site (one ZooKeeper server and garbd, no data).

The site that can still reach the arbitrator holds the majority of both ZooKeeper
and Galera, so losing a whole data datacenter leaves the other one working.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from taskman.lab.multidc import MultiDCLab
from taskman.plugins import EXAMPLES_DIR
from tests.chaos.support import POOLED_PLUGINS, Fault, Scenario


@pytest.fixture(scope="module")
def lab2(request: pytest.FixtureRequest) -> Iterator[MultiDCLab]:
    plugins = [str(EXAMPLES_DIR), str(POOLED_PLUGINS)]  # Scenario runs some tasks pooled
    lab = MultiDCLab.create("2dc-arbitrator", node_options={"plugin_dirs": plugins})
    failed_before = request.session.testsfailed
    try:
        lab.up()
        print(f"\n2dc+arbitrator lab up in {lab.up_seconds:.1f} s under {lab.base_dir}")
        yield lab
    finally:
        lab.down()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(lab.base_dir, ignore_errors=True)


def test_arbitrator_keeps_the_surviving_datacenter_working(lab2: MultiDCLab) -> None:
    assert lab2.galera_cluster_size("dc1") == 3  # dc1, dc2 and garbd
    s = Scenario(lab2, "2dc+arb kill-dc", tasks=6)
    s.submit()
    by_node = s.wait_running()
    # Kill the data datacenter that runs work, keeping the other one and the arbitrator.
    target = "dc2" if by_node.get("dc2-node1") else "dc1"
    survivor = "dc1" if target == "dc2" else "dc2"
    at = time.time()
    lab2.kill_dc(target)
    fault = Fault(at, target_dc=target, bound=s.session + 5, notes=[f"SIGKILL all of {target}"])
    s.wait_done(avoid=target)
    s.check(fault)
    # Galera on the survivor stayed Primary with the arbitrator's vote.
    status = lab2.galera_status(survivor)
    assert status["wsrep_cluster_status"] == "Primary"
    assert status["wsrep_cluster_size"] == "2"
