"""A real `taskman dev` process for tests: started on a free port, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.integration.cluster_support import wait_until


class Dev:
    def __init__(
        self,
        db: Path,
        port: int,
        plugins: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.db, self.port = db, port
        self.log = db.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")} | (env or {})
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskman",
                    "dev",
                    "--db",
                    str(db),
                    "--listen",
                    f"127.0.0.1:{port}",
                    *(arg for plugin_dir in plugins for arg in ("--plugins", plugin_dir)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=db.parent,
            )
        wait_until(self._ready, 30, "taskman dev to serve its UI", interval=0.1)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"taskman dev exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
