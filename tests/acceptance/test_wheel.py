"""The path for a user who wants no checkout: build a wheel, pip install it into any
virtualenv, run ``taskman dev``. The wheel must carry every file the package needs
(plugin examples, migrations, templates, static files): missing package data shows
only here, never in an editable install."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman.cli.exitcodes import Exit
from taskman.lab import free_port
from tests.acceptance.checkout import fresh_checkout, new_shell_env
from tests.integration.cluster_support import wait_until


def run(argv: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=new_shell_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def shipped_paths(source: Path) -> set[str]:
    """Where each file of the package folders lands when installed, after pyproject's
    package-dir map (cluster/ -> taskman/cluster/, ...)."""
    config = tomllib.loads((source / "pyproject.toml").read_text())
    folders = config["tool"]["setuptools"]["package-dir"]
    paths: set[str] = set()
    for package, folder in folders.items():
        for file in (source / folder).rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                inside = file.relative_to(source / folder).as_posix()
                paths.add(f"{package.replace('.', '/')}/{inside}")
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the source copy, the wheel built from it)"""
    base = tmp_path_factory.mktemp("wheel")
    source = fresh_checkout(base / "src")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "dist", source], base
    )
    (wheel,) = (base / "dist").glob("taskman-*.whl")
    return source, wheel


def test_the_wheel_holds_every_file_of_the_package_folders(built: tuple[Path, Path]) -> None:
    source, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        inside = set(archive.namelist())
    missing = sorted(shipped_paths(source) - inside)
    assert not missing, (
        "the wheel leaves out files of the package folders; list them in "
        "[tool.setuptools] packages or package-data in pyproject.toml:\n" + "\n".join(missing)
    )
    assert "taskman/store/migrations/schema_sqlite.sql" in inside  # the check above saw them
    assert "taskman/plugins/examples/demo/src/demo/tasks.py" in inside


class InstalledDev:
    """``taskman dev`` from a virtualenv the wheel was installed into, run outside any checkout."""

    def __init__(self, venv: Path, workdir: Path) -> None:
        self.venv, self.workdir, self.port = venv, workdir, free_port()
        self.db = workdir / "dev.sqlite3"
        self.log = workdir / "dev.log"
        self.command = str(venv / "bin" / "taskman")
        self.process: subprocess.Popen[bytes] | None = None

    def taskman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, *args],
            cwd=self.workdir,
            env=new_shell_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.command, "dev", "--db", str(self.db), "--listen", f"127.0.0.1:{self.port}"],
                cwd=self.workdir,
                env=new_shell_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self.get("/") is not None, 60, "taskman dev to serve its UI", 0.2)

    def get(self, path: str) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"taskman dev exited: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return str(r.read().decode()) if r.status == 200 else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def installed(built: tuple[Path, Path], tmp_path: Path) -> Iterator[InstalledDev]:
    _, wheel = built
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    # The wheel alone first: a plain `pip install taskman` leaves the ui extra out.
    run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel], tmp_path)
    workdir = tmp_path / "elsewhere"  # no ./plugins: only the bundled examples
    workdir.mkdir()
    dev = InstalledDev(venv, workdir)
    yield dev
    dev.stop()


def test_a_wheel_installed_in_any_virtualenv_runs_taskman_dev(
    built: tuple[Path, Path], installed: InstalledDev
) -> None:
    _, wheel = built
    where = installed.taskman("--help")
    assert where.returncode == Exit.OK and "usage: taskman" in where.stdout
    assert "a local coordinator on" in where.stdout  # taskman dev is there
    module = run(
        [installed.venv / "bin" / "python", "-c", "import taskman; print(taskman.__file__)"],
        installed.workdir,
    )
    assert Path(module.strip()).is_relative_to(installed.venv)  # the wheel, not the checkout

    without_ui = installed.taskman("dev", "--db", str(installed.db), "--listen", "127.0.0.1:1")
    assert without_ui.returncode == Exit.CONFIG
    assert "needs the 'ui' extra: pip install 'taskman[ui]'" in without_ui.stderr

    pip = installed.venv / "bin" / "pip"
    run([pip, "install", "-q", "--disable-pip-version-check", f"{wheel}[ui]"], installed.workdir)
    installed.start()
    # Its hint names the CLI as a new shell reaches it: this virtualenv is not activated.
    hint = f"{installed.command} submit demo.tasks:add"
    wait_until(lambda: hint in installed.log.read_text(), 10, "the printed hint")
    page = installed.get("/")
    assert page is not None and "dev" in page
    assert installed.get("/static/app.css")  # static files, served from the wheel
    done = installed.taskman(
        "submit", "demo.tasks:add", "--plugin", "demo", "--args", "[2, 3]", "--wait", "--json",
        "--dsn", f"sqlite:///{installed.db}",
    )  # fmt: skip
    assert done.returncode == Exit.OK, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"] == 5  # migrations, the demo plugin, the runner
