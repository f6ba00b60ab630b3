"""One real 3-datacenter lab (network namespaces, ZooKeeper ensemble, Galera cluster, nodes)
shared by the chaos scenarios of a session; restored to health before each scenario.

The lab needs root and network namespaces. Without them the fixture raises
LabError, so the scenarios error out instead of skipping: CI runs as root and
must not pass without having cut a real network.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from taskman.lab.multidc import MultiDCLab
from taskman.plugins import EXAMPLES_DIR
from tests.chaos.hostile_mix import HOSTILE_PLUGINS
from tests.chaos.support import POOLED_PLUGINS, RESULTS, format_table, wait_until


@pytest.fixture(scope="session")
def lab3(request: pytest.FixtureRequest) -> Iterator[MultiDCLab]:
    # The hostile plugin too: the soak mixes its tasks into every round. Pooled copies
    # of both run a share of every scenario's tasks.
    plugins = [str(EXAMPLES_DIR), str(HOSTILE_PLUGINS), str(POOLED_PLUGINS)]
    lab = MultiDCLab.create("3dc", node_options={"plugin_dirs": plugins})
    failed_before = request.session.testsfailed
    try:
        lab.up()
        print(f"\n3-datacenter lab up in {lab.up_seconds:.1f} s under {lab.base_dir}")
        yield lab
    finally:
        lab.down()
        # Keep the logs of a failing run for the post-mortem; else leave nothing behind.
        if request.session.testsfailed == failed_before:
            shutil.rmtree(lab.base_dir, ignore_errors=True)
        else:
            print(f"\nchaos lab logs kept in {lab.base_dir}")


@pytest.fixture
def lab(lab3: MultiDCLab) -> MultiDCLab:
    if not lab3.healthy():
        lab3.restore()
    if not lab3.leader_ok():
        # A stuck election (see LEADER_STUCK_BUG in test_scenarios) would fail every later
        # scenario: new sessions for all nodes clear it.
        lab3.restart_nodes()
        wait_until(lab3.leader_ok, 30, "a reaper leader after restarting the nodes")
    return lab3


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("chaos results")
        for line in format_table(RESULTS).splitlines():
            terminalreporter.write_line(line)
