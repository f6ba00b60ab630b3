"""Run ``taskman ui`` as a real process for the browser and web integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from taskman.lab.servers import free_port
from tests.integration.cluster_support import ZK_AUTH

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


class UIProcess:
    """One ``taskman ui`` child process on a free loopback port."""

    def __init__(
        self,
        dsn: str,
        log_path: Path,
        *,
        zookeeper: str | None = None,
        cluster: str = "default",
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.argv = [
            sys.executable, "-m", "taskman", "ui", "--dsn", dsn, "--cluster", cluster,
            "--listen", f"{host}:{self.port}",
        ]  # fmt: skip
        if zookeeper:
            self.argv += ["--zookeeper", zookeeper]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
        self.env["TASKMAN_ZOOKEEPER_AUTH"] = ZK_AUTH
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Self:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"taskman ui exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/static/app.css", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"taskman ui did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
