"""Run taskman nodes as real processes (``taskman node``) for tests, benchmarks and the lab.

Each node gets its own config file and log file; tests kill, pause and resume
them by PID, exactly as an operator's supervisor would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from taskman.lab.servers import LabError


def write_config(path: Path, values: dict[str, Any]) -> Path:
    """Write a node.toml from plain values (strings, numbers, lists of strings)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue  # leave the key out: its default (or the environment) applies
        if isinstance(value, list | tuple):
            lines.append(f"{key} = {json.dumps([str(v) for v in value])}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class NodeProcess:
    """One ``taskman node`` child process, logging JSON lines to ``<base_dir>/<node_id>.log``."""

    def __init__(self, base_dir: Path, node_id: str, **config: Any) -> None:
        self.base_dir = base_dir
        self.node_id = node_id
        self.values = {"node_id": node_id, "log_format": "json", **config}
        self.config_path = base_dir / f"{node_id}.toml"
        self.log_path = base_dir / f"{node_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise LabError(f"node {self.node_id} is not started")
        return self.process.pid

    def start(self, *, wait: float | None = 30.0) -> Self:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.values)
        log = self.log_path.open("ab")
        self._log_offset = self.log_path.stat().st_size
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskman", "node", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        if wait:
            self.wait_for_event("node.started", timeout=wait)
        return self

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line this node wrote since its last start."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            lines = fh.read().splitlines()
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def wait_for_event(self, name: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            if self.process is not None and self.process.poll() is not None:
                raise LabError(
                    f"node {self.node_id} exited ({self.process.returncode}) before {name}: "
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.05)
        raise LabError(f"node {self.node_id}: no {name} event within {timeout} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the node dies at once; its runners notice the closed pipe and die too."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (drain), then SIGKILL if it has not exited within ``timeout``."""
        if self.process is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)  # a paused node cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
