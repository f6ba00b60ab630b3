"""PlacementStore: what nodes serve (``served_plugins``) and what holds a concurrency cap.

Nodes write their rows (``publish``); the thin client reads them to refuse a
submit no node ever served and to say why a queued task waits
(``taskman.placement`` holds that logic, pure).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from taskman.placement import Cap, Served
from taskman.store.backend import Cursor, StoreDatabase


@dataclass(frozen=True)
class Offer:
    """One plugin version a node serves, as it publishes it."""

    plugin: str
    version: str
    functions: tuple[str, ...] | None
    concurrency: dict[str, int]


class PlacementStore:
    def __init__(self, db: StoreDatabase) -> None:
        self.db = db
        self.q = db.q

    def publish(
        self, node: str, datacenter: str, offers: Iterable[Offer], *, deadline: float | None = None
    ) -> None:
        """Upsert this node's rows in one transaction; every row's last_seen becomes now."""
        values = [
            (
                node,
                datacenter,
                o.plugin,
                o.version,
                None if o.functions is None else json.dumps(list(o.functions)),
                json.dumps(o.concurrency, sort_keys=True) if o.concurrency else None,
            )
            for o in offers
        ]
        if not values:
            return

        def fn(cur: Cursor) -> None:
            for row in values:
                cur.execute(self.q.PUBLISH_SERVED, row)

        self.db.run(fn, deadline=deadline)

    def served(self) -> list[Served]:
        """Every row any node has published, with its age by the database's clock."""
        return [Served.from_row(r) for r in self.db.query(self.q.SERVED)]

    def now(self) -> datetime:
        """The database's clock (aware UTC): the one clock tasks' times are written with."""
        row = self.db.query(self.q.NOW)[0]
        value: datetime = row["NOW(6)"]
        return value.replace(tzinfo=UTC)

    def running_under(self, cap: Cap, plugin: str, function: str) -> int:
        """How many attempts hold a permit of ``cap`` now, as the task table tells it."""
        if cap.by_key:
            rows = self.db.query(self.q.RUNNING_WITH_CAP_KEY, (cap.key,))
        else:
            rows = self.db.query(self.q.RUNNING_OF_FUNCTION, (plugin, function))
        return int(rows[0]["n"])
