"""Checks a node makes before it claims anything: the coordinator must fit the database
and the configuration, or every fencing budget and every token would be wrong."""

from __future__ import annotations

from typing import Any

from taskman.cluster.contracts import Coordinator
from taskman.config import NodeConfig
from taskman.errors import CoordinationError
from taskman.store import TaskStore


def check_tokens(coord: Coordinator, store: TaskStore) -> None:
    """Refuse an ensemble whose tokens are below those the database already holds.

    An ensemble rebuilt from scratch restarts its zxids low: every claim and
    every leader of it would be refused by the fenced writes, forever.
    """
    # The database first: every token in it was issued before this read, so
    # an intact ensemble's next zxid is larger. Read the other way round, a
    # node claiming between the two reads made a healthy ensemble look rebuilt.
    # Not the whole history (a scan of every row on each start): the last
    # leader's epoch and unfinished work catch any ensemble rebuilt from scratch.
    highest = store.max_live_token()
    fresh = coord.fresh_token()
    if fresh is None or fresh > highest:
        return
    coord.close()
    raise CoordinationError(
        f"ZooKeeper's fencing tokens ({fresh:#x}) are below the highest token the "
        f"database holds ({highest:#x}): the ensemble was rebuilt or lost its data, "
        "and every claim and leader of it would be refused. With every node stopped, "
        "run `taskman cluster rebase-tokens --config <node.toml>` once, then start "
        "the nodes (docs/multi-dc.md, 'Losing the ZooKeeper ensemble')"
    )


def check_granted_session(coord: Coordinator, config: NodeConfig, log: Any) -> None:
    """Refuse a session shorter than the configured one: every fencing budget assumes it."""
    granted = coord.granted_session_timeout()
    configured = config.session_timeout
    if granted is None or granted == configured:
        return
    if granted < configured:
        coord.close()
        raise CoordinationError(
            f"ZooKeeper negotiated a session of {granted:.1f} s, shorter than "
            f"session_timeout = {configured:.1f} s (the ensemble's maxSessionTimeout "
            "caps it). The runners' watchdog and self-fencing are fractions of "
            "session_timeout and would outlive the session: set session_timeout to "
            f"at most {granted:.1f} s, or raise maxSessionTimeout"
        )
    log.warning(
        "node.session_longer_than_configured",
        granted=granted,
        configured=configured,
        note="minSessionTimeout raised it: reclaims of this node's work take longer",
    )
