"""The layers stay sealed: each driver is imported only by the package that wraps it.

* PyMySQL and sqlite3 only by the store's two connection modules, which turn
  every driver error into taskman's (``StoreError``, ``DuplicateKeyError``, ...);
* kazoo only by ``cluster/``: the CLI and the UI read the cluster through
  ``cluster/observer.py`` and ``cluster/admin.py``;
* the test lab (``taskman/lab/``) provisions real servers as their root user, so
  it may talk to PyMySQL and kazoo directly.

Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("taskman", "cluster", "runner", "plugins", "config")

# driver -> the repository paths (files, or folders ending in /) that may import it
ALLOWED = {
    "pymysql": ("taskman/store/connection.py", "taskman/lab/"),
    "sqlite3": ("taskman/store/sqlite.py",),
    "kazoo": ("cluster/", "taskman/lab/"),
}


def forbidden_imports(path: str, source: str) -> list[str]:
    """``path:line: imports name`` for each import of a driver that ``path`` may not import."""
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            allowed = ALLOWED.get(name.partition(".")[0])
            if allowed is not None and not path.startswith(allowed):
                found.append(f"{path}:{node.lineno}: imports {name}")
    return found


def _sources() -> dict[str, str]:
    files = {}
    for folder in SOURCE_FOLDERS:
        for file in sorted((ROOT / folder).rglob("*.py")):
            files[file.relative_to(ROOT).as_posix()] = file.read_text(encoding="utf-8")
    return files


def test_no_module_imports_a_driver_outside_its_package() -> None:
    sources = _sources()
    assert "taskman/store/connection.py" in sources and "cluster/zk.py" in sources
    problems = [p for path, text in sources.items() for p in forbidden_imports(path, text)]
    assert problems == []


def test_each_driver_is_imported_where_it_is_wrapped() -> None:
    # The walk above must see the imports it polices: the wrappers do import their driver.
    sources = _sources()
    for path, driver in (
        ("taskman/store/connection.py", "pymysql"),
        ("taskman/store/sqlite.py", "sqlite3"),
        ("cluster/zk.py", "kazoo"),
        ("cluster/observer.py", "kazoo"),
    ):
        tree = ast.parse(sources[path])
        imported = {
            alias.name.partition(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.partition(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert driver in imported, path


def test_the_rule_catches_a_forbidden_import_anywhere_in_a_module() -> None:
    late = "def f() -> None:\n    from kazoo.exceptions import NodeExistsError\n"
    assert forbidden_imports("taskman/web/cluster.py", late) == [
        "taskman/web/cluster.py:2: imports kazoo.exceptions"
    ]
    assert forbidden_imports("taskman/store/tasks.py", "import pymysql.err\n") == [
        "taskman/store/tasks.py:1: imports pymysql.err"
    ]
    assert forbidden_imports("cluster/ticker.py", "import os, sqlite3\n") == [
        "cluster/ticker.py:1: imports sqlite3"
    ]
    assert forbidden_imports("taskman/store/connection.py", "import pymysql\n") == []
    assert forbidden_imports("taskman/lab/servers.py", "from kazoo.client import K\n") == []
    assert forbidden_imports("taskman/cli/x.py", "from . import kazoo\nimport kazooish\n") == []
