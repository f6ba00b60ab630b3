"""A schedule across datacenters: killing the leader's datacenter loses no tick and doubles none."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from taskman.lab.multidc import MultiDCLab
from tests.chaos.support import live_client, wait_until

PREFIX = "schedule:chaos-every-second:"


def _ticks(keys: list[str]) -> list[datetime]:
    return sorted(
        datetime.fromisoformat(k.removeprefix(PREFIX).replace("Z", "+00:00")) for k in keys
    )


def test_killing_the_leaders_datacenter_loses_no_tick(lab: MultiDCLab) -> None:
    with live_client(lab) as client:
        client.add_schedule(
            "chaos-every-second", "demo.tasks:add", plugin="demo", every=1, args=(1, 2)
        )
        wait_until(lambda: len(client.list(plugin="demo", limit=1000)) >= 3, 30, "first ticks")
    leader = lab.leader_node()
    assert leader is not None
    target = lab.node_dc(leader)
    lab.kill_dc(target)
    killed = time.time()
    try:
        with live_client(lab, avoid=target) as client:
            # The ticker's misfire grace (60 s) covers the failover: every tick fires.
            wait_until(
                lambda: any(
                    (t.created_at or datetime.min).timestamp() > killed + 12
                    for t in client.list(plugin="demo", limit=5)
                ),
                60,
                "ticks from the new leader",
            )
            client.pause_schedule("chaos-every-second")
            time.sleep(2)  # a tick in flight lands
            keys = [
                t.idempotency_key or ""
                for t in client.list(plugin="demo", limit=1000)
                if (t.idempotency_key or "").startswith(PREFIX)
            ]
    finally:
        lab.start_dc(target)
    ticks = _ticks(keys)
    assert len(ticks) == len(set(ticks)), "a tick made two tasks"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    assert all(gap == 1.0 for gap in gaps), f"missing ticks: gaps {gaps}"
    print(
        f"\nschedule across the kill of {target} (leader {leader}): {len(ticks)} ticks, "
        f"consecutive, one task each"
    )
