"""Embedded mode: one node, the admin UI and a local coordinator in one process, on SQLite.

What ``taskman dev`` runs. The node is the real one (same store interface, same
claim and fencing protocol, same runners, same metrics); only the coordinator is
local, and the database is a SQLite file. One process per file: a second one is
refused. The UI's address also serves the node's /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from taskman import logs
from taskman.cluster.coordination import LocalCoordination
from taskman.cluster.node import Node
from taskman.cluster.shutdown import stop_on_signals
from taskman.config import NodeConfig
from taskman.errors import ConfigError
from taskman.plugins import EXAMPLES_DIR
from taskman.store import TaskStore, make_database
from taskman.store.migrations import migrate


def sqlite_dsn(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``<db>.lock`` for the life of the process: embedded mode is for one node."""
    lock_path = path.with_name(path.name + ".lock")
    handle: TextIO = lock_path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"{path} is already used by taskman dev ({holder}): embedded mode runs one node "
                "per database file. Stop the other one, or use --db for another file; for "
                "several nodes, run the cluster (MySQL + ZooKeeper)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def token_floor(dsn: str) -> int:
    """The largest fence or leader epoch the database holds: local tokens start above it."""
    store = TaskStore(make_database(dsn))
    try:
        return store.max_token()
    finally:
        store.close()


def dev_config(db: Path, plugin_dirs: list[Path], slots: int) -> NodeConfig:
    return NodeConfig(
        node_id="dev",
        datacenter="local",
        dsn=sqlite_dsn(db),
        zookeeper="local:0",  # unused: the coordinator is in this process
        plugin_dirs=tuple(plugin_dirs),
        insecure=True,
        slots=slots,
        poll_interval=0.2,
    )


def plugin_dirs_for(explicit: list[Path]) -> list[Path]:
    dirs = [p.resolve() for p in explicit if p.is_dir()]
    local = Path("plugins").resolve()
    if not explicit and local.is_dir():
        dirs.append(local)
    dirs.append(EXAMPLES_DIR)
    return dirs


def serve_ui(node: Node, dsn: str, host: str, port: int) -> Any:
    import uvicorn

    from taskman.web import AuthConfig, UISettings, check_bind, create_app

    auth = AuthConfig.from_values(
        os.environ.get("TASKMAN_UI_TOKEN"), os.environ.get("TASKMAN_UI_BASIC_AUTH")
    )
    check_bind(host, auth)

    def members() -> tuple[list[dict[str, Any]], str | None]:
        coord = getattr(node, "coord", None)
        found = coord.members() if coord is not None else []
        return found, node.config.node_id if node.is_leader else None

    # The node's own probes, so /metrics names and /readyz answers are a cluster node's.
    probes = node.probes(coordinator="coordinator")
    settings = UISettings(dsn=dsn, auth=auth, cluster="dev", members=members, probes=probes)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ui", daemon=True)
    thread.start()
    return server


def run_dev(
    db: Path, plugins: list[Path], host: str, port: int, slots: int, command: str = "taskman"
) -> None:
    """Serve until SIGINT/SIGTERM; ``command`` is how the printed hints call the CLI."""
    logs.configure("info", "console")
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(db):
        dsn = sqlite_dsn(db)
        migrate(dsn)
        floor = token_floor(dsn)
        config = dev_config(db, plugin_dirs_for(plugins), slots)
        node = Node(config, coordination=lambda cfg: LocalCoordination(cfg, floor))
        server = serve_ui(node, dsn, host, port)
        stop_on_signals(node, drain_timeout=10.0)
        print(
            f"taskman dev: one node, UI and coordinator in this process\n"
            f"  database: {db}\n"
            f"  plugins:  {', '.join(str(p) for p in config.plugin_dirs)}\n"
            f"  UI:       http://{host}:{port}/\n"
            f"  metrics:  http://{host}:{port}/metrics  (and /healthz, /readyz)\n\n"
            f"Submit from Python:\n"
            f"  from taskman import Client\n"
            f"  Client({dsn!r}).submit('demo.tasks:add', plugin='demo', args=(2, 3))\n"
            f"or the CLI:\n"
            f"  {command} submit demo.tasks:add --plugin demo --args '[2, 3]' --wait --dsn {dsn}\n"
            f"Ctrl-C drains and stops.",
            flush=True,
        )
        try:
            node.run()  # the main thread: runners die with it (parent-death signal, socket EOF)
        finally:
            server.should_exit = True
