"""Prometheus's promtool, for the operations kit's tests.

scripts/install-deps puts it in /opt/taskman-tools/prometheus (out of Debian's
prometheus package, without installing the package's server). A missing
promtool fails the tests that need it, never skips them: CI installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(os.environ.get("TASKMAN_TOOLS", "/opt/taskman-tools"))


def promtool() -> str:
    """$TASKMAN_PROMTOOL, else where scripts/install-deps puts it, else promtool on PATH."""
    candidates = [os.environ.get("TASKMAN_PROMTOOL"), str(TOOLS / "prometheus" / "promtool")]
    candidates.append(shutil.which("promtool"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "promtool not found (looked at $TASKMAN_PROMTOOL, "
        f"{TOOLS / 'prometheus' / 'promtool'} and PATH): run scripts/install-deps, "
        "which takes it from Debian's prometheus package"
    )


def run_promtool(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
