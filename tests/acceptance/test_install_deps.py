"""scripts/install-deps in a fresh copy of the checkout: taskman lands in the project's .venv,
and the system interpreter's site-packages and scripts are exactly as they were.

It installs taskman[ui] (what scripts/dev asks for): the same steps as the default
taskman[dev], with a third of the packages to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.acceptance.checkout import fresh_checkout, new_shell_env

# Every place a pip install into an interpreter writes to: site-packages, the user
# site (pip's fallback when site-packages is read-only) and the scripts directory.
_WHERE_PIP_WRITES = (
    "import json, site, sysconfig;"
    "print(json.dumps([*site.getsitepackages(), site.getusersitepackages(),"
    " *(sysconfig.get_path(k) for k in ('purelib', 'platlib', 'scripts'))]))"
)


def system_interpreters(env: dict[str, str]) -> list[str]:
    """The python3 a new shell finds (which install-deps starts from) and Debian's own."""
    found = [shutil.which("python3", path=env["PATH"]), "/usr/bin/python3"]
    return [p for p in dict.fromkeys(found) if p and os.access(p, os.X_OK)]


def install_dirs(python: str, env: dict[str, str]) -> list[str]:
    # -I -S: no site hooks, which may write byte code into the very directories we watch.
    out = subprocess.run(
        [python, "-I", "-S", "-c", _WHERE_PIP_WRITES],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    return list(json.loads(out))


def snapshot(dirs: list[str]) -> dict[str, str]:
    """Each entry of each directory. Package folders by name only (importing a package
    writes its __pycache__ and so changes the folder); files and a distribution's
    metadata folder with size and mtime, which any install, upgrade or removal changes."""
    state: dict[str, str] = {}
    for directory in dict.fromkeys(dirs):
        if not os.path.isdir(directory):
            state[directory] = "absent"
            continue
        for entry in os.scandir(directory):
            if entry.name == "__pycache__":
                continue
            info = entry.stat(follow_symlinks=False)
            metadata = entry.name.endswith((".dist-info", ".egg-info"))
            if entry.is_dir(follow_symlinks=False) and not metadata:
                state[entry.path] = "folder"
            else:
                state[entry.path] = f"{info.st_size} bytes, mtime {info.st_mtime_ns}"
    return state


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [
        f"{path}: {before.get(path, 'absent')} -> {after.get(path, 'absent')}"
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]


def install_deps(
    checkout: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/install-deps", *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_install_deps_uses_its_own_venv_and_leaves_the_system_interpreter_alone(
    tmp_path: Path,
) -> None:
    checkout = fresh_checkout(tmp_path / "checkout")
    env = new_shell_env()
    interpreters = system_interpreters(env)
    assert interpreters, "no python3 on PATH"
    watched = [d for python in interpreters for d in install_dirs(python, env)]
    before = snapshot(watched)

    first = install_deps(checkout, env, "--extras", "ui")

    assert first.returncode == 0, first.stdout + first.stderr
    changed = differences(before, snapshot(watched))
    assert not changed, f"install-deps changed {interpreters}:\n" + "\n".join(changed[:30])
    venv = checkout / ".venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import taskman, uvicorn; print(taskman.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert Path(imported) == checkout / "taskman" / "__init__.py"  # editable, from this copy
    assert (venv / "bin" / "taskman").is_file()

    again = install_deps(checkout, env, "--extras", "ui")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "already has taskman[ui]" in again.stdout
    assert "pip install" not in again.stdout


def test_install_deps_refuses_unknown_extras_and_arguments(tmp_path: Path) -> None:
    checkout = fresh_checkout(tmp_path / "checkout")
    env = new_shell_env()

    extras = install_deps(checkout, env, "--extras", "gui")
    argument = install_deps(checkout, env, "--server")

    assert extras.returncode == 2
    assert "--extras takes ui, test, dev or bench" in extras.stderr
    assert argument.returncode == 2
    assert "unknown argument --server" in argument.stderr
    assert not (checkout / ".venv").exists()
