"""A node tells the database what it serves: one row per plugin version, refreshed.

The thin client needs only the database, so ZooKeeper membership is out of its
reach; these rows are its view of the cluster (``taskman.placement``). A node
writes them at start, then every ``PUBLISH_INTERVAL`` seconds (the refresh is
what "live" means to the client), and at once when what it serves changes.
A failed write is logged and tried again on the next pass: it never stops the node.
"""

from __future__ import annotations

from typing import Any

from taskman.errors import StoreError
from taskman.placement import PUBLISH_INTERVAL
from taskman.plugins import PluginRegistry
from taskman.store.placement import Offer, PlacementStore


def offers_of(registry: PluginRegistry) -> list[Offer]:
    """Every plugin version the registry holds, with its allowlist and caps."""
    return [
        Offer(plugin.name, plugin.version, plugin.functions, dict(plugin.concurrency))
        for versions in registry.plugins.values()
        for plugin in versions.values()
    ]


class ServedPublisher:
    def __init__(
        self,
        store: PlacementStore,
        node_id: str,
        datacenter: str,
        registry: PluginRegistry,
        log: Any,
        *,
        interval: float = PUBLISH_INTERVAL,
        deadline: float | None = None,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.datacenter = datacenter
        self.registry = registry
        self.log = log
        self.interval = interval
        self.deadline = deadline  # of one write: the node's loop must not wait longer
        self._published: list[Offer] | None = None  # the last offers written
        self._tried: list[Offer] | None = None  # the last offers tried
        self._next = 0.0

    def publish_due(self, now: float) -> bool:
        """Write the rows if the interval has passed or the offers changed; True if written."""
        offers = offers_of(self.registry)
        if now < self._next and offers == self._tried:
            return False
        self._next = now + self.interval  # a failed write, too, waits for the next interval
        self._tried = offers
        try:
            self.store.publish(self.node_id, self.datacenter, offers, deadline=self.deadline)
        except StoreError as exc:
            self.log.warning("node.publish_failed", error=str(exc))
            return False
        if offers != self._published:
            self.log.info(
                "node.published", plugins=sorted(f"{o.plugin} {o.version}" for o in offers)
            )
        self._published = offers
        return True
