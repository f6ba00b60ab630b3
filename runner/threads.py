"""Start the node's per-attempt threads without waiting for them.

``threading.Thread.start()`` blocks until the new thread has run far enough to
say so, which takes the GIL. On a busy node the loop launching a runner waited
there for about a third of its time (profiled with 24 process-mode slots), and
each launch thread waited twice more before it read the runner's first message.
These threads are daemons nobody joins, so nothing needs that handshake.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import Any


def start_daemon(target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(*args)`` on a new thread that ends with the process (a daemon)."""
    _thread.start_new_thread(target, args)
