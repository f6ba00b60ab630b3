"""A fresh copy of this checkout, and the environment of a new shell, for tests that install.

They run the install as a new user would: from a tree with no .venv, build/ or
egg-info left over, with no virtual environment activated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a clone never has; only for copies made without git.
_NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".taskman-lab",
    "test-artifacts", ".hypothesis", "taskman-dev.sqlite3*",
)  # fmt: skip


def fresh_checkout(dest: Path) -> Path:
    """Copy what git would commit (tracked files with their edits, and new files that are not
    ignored) to ``dest``: what a clone of this work would hold."""
    if not (ROOT / ".git").exists():
        shutil.copytree(ROOT, dest, ignore=_NOT_IN_A_CLONE, symlinks=True)
        return dest
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.exists():  # deleted in the working tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def new_shell_env() -> dict[str, str]:
    """This environment as a new shell would have it: the tests' virtual environment not
    activated, no PYTHON* or TASKMAN_* settings. PIP_* settings stay: the machine's index."""
    own_bin = (Path(sys.prefix) / "bin").resolve()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKMAN_", "PYTHON")) and key != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != own_bin
    )
    return env
