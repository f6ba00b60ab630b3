"""How the CLI names itself in the hints it prints: a new shell must be able to run them."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from taskman.cli.common import own_command, path_export


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scripts directory holding a taskman script, as a virtualenv's bin/ does."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "taskman"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    real = sysconfig.get_path
    monkeypatch.setattr(
        sysconfig,
        "get_path",
        lambda name, *a, **k: str(bin_dir) if name == "scripts" else real(name, *a, **k),
    )
    return bin_dir


def test_taskman_on_path_is_named_plainly(scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{scripts}:/usr/bin:/bin")

    assert own_command() == "taskman"
    assert path_export() == ""


def test_a_venv_not_activated_is_named_by_its_path(
    scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"  # another taskman first on PATH, e.g. a system-wide one
    other.mkdir()
    (other / "taskman").write_text("#!/bin/sh\n")
    (other / "taskman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:/usr/bin:/bin")

    assert own_command() == str(scripts / "taskman")
    assert path_export() == f'export PATH="{scripts}:$PATH"\n'
