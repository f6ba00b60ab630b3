"""How a signal stops a node: the first SIGTERM or Ctrl-C drains, the second stops at once.

One handler for every process that runs a node in its main thread (``taskman node``,
``taskman dev``), so they cannot drift apart.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Protocol


class Stoppable(Protocol):
    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None: ...


def stop_on_signals(node: Stoppable, drain_timeout: float) -> None:
    """Route SIGTERM and SIGINT to ``node.stop``: a drain of ``drain_timeout`` s, then at once.

    Call it from the main thread (Python delivers signals there only).
    """
    stops = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        node.stop(drain=stops == 1, timeout=drain_timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
