"""The lab's taskman nodes: start them, read their JSON logs, pause and freeze them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from taskman.lab.multidc.processes import LabBase
from taskman.lab.multidc.topology import ZK_AUTH
from taskman.lab.nodes import write_config
from taskman.lab.servers.process import LabError, _tail


class TaskmanNodes(LabBase):
    """Start, watch, pause and restart the ``taskman node`` processes of each datacenter."""

    def start_node(self, node_id: str, *, wait: float | None = 30.0) -> None:
        if self.alive(node_id):
            return
        from taskman.plugins import EXAMPLES_DIR

        dc = self.node_dc(node_id)
        log = self.node_log(node_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        config = write_config(
            log.parent / f"{node_id}.toml",
            {
                "node_id": node_id,
                "datacenter": dc,
                "dsn": self.dsn(dc),
                "zookeeper": self.zookeeper_hosts,
                "plugin_dirs": [str(EXAMPLES_DIR)],
                "cluster": "lab",
                # The nodes' znodes are ACL'd to this identity, as in production.
                "zookeeper_auth": ZK_AUTH,
                "log_format": "json",
                **self.state.node_options,
            },
        )
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", "taskman", "node", "--config", str(config)]
        self._spawn(node_id, dc, "node", argv, log)
        if wait:
            self.wait_node_event(node_id, "node.started", timeout=wait, offset=offset)

    def node_events(self, node_id: str, offset: int = 0) -> list[dict[str, Any]]:
        log = self.node_log(node_id)
        if not log.exists():
            return []
        with log.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    events.append(value)
        return events

    def wait_node_event(
        self, node_id: str, name: str, *, timeout: float = 30.0, offset: int = 0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.node_events(node_id, offset):
                if event.get("event") == name:
                    return event
            if not self.alive(node_id):
                raise LabError(
                    f"node {node_id} exited before {name}; tail of its log:\n"
                    f"{_tail(self.node_log(node_id))}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"node {node_id}: no {name} event within {timeout} s")
            time.sleep(0.05)

    def pause_node(self, node_id: str) -> None:
        if not self.signal(node_id, signal.SIGSTOP):
            raise LabError(f"node {node_id} is not running")

    def resume_node(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)

    def freeze_node_tree(self, node_id: str) -> list[int]:
        """SIGSTOP a node with every process below it (its runners), as a VM stall does.

        The runners first, so none of them sees its node stop. Returns what was
        stopped, for ``thaw``.
        """
        from taskman.runner.proctree import descendants

        pid = self.pid(node_id)
        if pid is None:
            raise LabError(f"node {node_id} is not running")
        below = descendants(pid)
        for child in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
        os.kill(pid, signal.SIGSTOP)
        return [pid, *below]

    def thaw(self, pids: list[int]) -> None:
        """SIGCONT what ``freeze_node_tree`` stopped, all at once."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart_nodes(self) -> None:
        """Stop and start every taskman node: new ZooKeeper sessions, a clean election."""
        self._stop(self.processes(role="node"))
        for node_id in self.node_ids():
            self.start_node(node_id)
