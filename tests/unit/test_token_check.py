"""The start-up check that refuses a rebuilt ensemble must not refuse a healthy one."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from taskman.cluster.startup_checks import check_tokens
from taskman.errors import CoordinationError


class _Ensemble:
    """Hands out strictly growing zxids, like a healthy ZooKeeper."""

    def __init__(self, start: int) -> None:
        self._next = itertools.count(start)
        self.closed = False

    def issue(self) -> int:
        return next(self._next)


def _node(ensemble: _Ensemble, *, db_highest: int | None = None) -> tuple[Any, Any]:
    stored: list[int] = []

    def max_live_token() -> int:
        # Another node claims between any two steps of this one: its token is
        # issued by the ensemble and written to the database.
        stored.append(ensemble.issue())
        return max(stored) if db_highest is None else db_highest

    def close() -> None:
        ensemble.closed = True

    coord = SimpleNamespace(fresh_token=ensemble.issue, close=close)
    return coord, SimpleNamespace(max_live_token=max_live_token)


def test_a_claim_racing_the_check_does_not_look_like_a_rebuilt_ensemble() -> None:
    ensemble = _Ensemble(0x100000010)
    check_tokens(*_node(ensemble))
    assert not ensemble.closed


def test_an_ensemble_below_the_database_is_refused() -> None:
    ensemble = _Ensemble(0x10)
    with pytest.raises(CoordinationError, match="rebase-tokens"):
        check_tokens(*_node(ensemble, db_highest=0x200000005))
    assert ensemble.closed
