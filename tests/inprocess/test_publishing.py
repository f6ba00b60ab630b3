"""What a node tells others: its member info to the coordinator, what it serves to the database."""

from __future__ import annotations

from taskman.cluster.publishing import MEMBER_UPDATE_INTERVAL, Publisher
from taskman.store.placement import PlacementStore
from tests.inprocess.harness import InProcessNode


def test_the_node_publishes_what_it_serves_and_how_busy_it_is(node: InProcessNode) -> None:
    publisher = Publisher(node.ctx)
    node.coord.register(publisher.member_info(), wait_for=0)
    publisher.start(node.clock())
    served = PlacementStore(node.store.db).served()
    assert {(s.node, s.plugin) for s in served} >= {("dev", "demo")}
    (member,) = node.coord.members()
    assert member["slots_used"] == 0 and member["datacenter"] == node.config.datacenter
    node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    node.clock.advance(MEMBER_UPDATE_INTERVAL)
    publisher.tick(node.clock())
    (member,) = node.coord.members()
    assert member["slots_used"] == 1
    plugins = member["plugins"]
    assert isinstance(plugins, dict) and "demo" in plugins


def test_membership_is_not_published_while_the_session_is_in_doubt(node: InProcessNode) -> None:
    publisher = Publisher(node.ctx)
    node.coord.register(publisher.member_info(), wait_for=0)
    node.client.submit("demo.tasks:add", plugin="demo", args=(2, 3))
    node.claim()
    node.monitor.quiet_for = node.config.session_timeout  # no confirmed round trip lately
    node.clock.advance(MEMBER_UPDATE_INTERVAL)
    publisher.tick(node.clock())
    (member,) = node.coord.members()
    assert member["slots_used"] == 0  # the stale view stays until the session is confirmed
    node.monitor.quiet_for = 0.0
    node.clock.advance(MEMBER_UPDATE_INTERVAL)
    publisher.tick(node.clock())
    (member,) = node.coord.members()
    assert member["slots_used"] == 1
