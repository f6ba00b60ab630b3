"""Browser tests: Debian's chromium, driven by Playwright, against real nodes and a real UI.

Playwright only drives the system browser (``/usr/bin/chromium``); it never
downloads one. Screenshots go to test-artifacts/browser/ for people to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskman.lab import ZooKeeperEnsemble
from tests.browser.support import ARTIFACTS, UIProcess
from tests.integration.conftest import client, cluster_name, start_node

__all__ = ["client", "cluster_name", "start_node"]  # fixtures shared with the integration tests

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: scripts/install-deps --browser installs chromium"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def ui(
    dsn: str, zookeeper: ZooKeeperEnsemble, cluster_name: str, tmp_path: Path
) -> Iterator[UIProcess]:
    process = UIProcess(
        dsn, tmp_path / "ui.log", zookeeper=zookeeper.hosts, cluster=cluster_name
    ).start()
    yield process
    process.stop()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1366, "height": 860})  # type: ignore[attr-defined]
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: errors.append(f"unexpected dialog: {dialog.message}"))
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
    assert not errors, errors  # no script error, and no alert() smuggled in through task data


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
