"""`taskman cluster ...`: operations on the cluster as a whole."""

from __future__ import annotations

import argparse
from typing import Any

from taskman.cli.common import add_json, emit, env_flag
from taskman.cli.exitcodes import Exit


def register(sub: Any) -> None:
    top = sub.add_parser("cluster", help="operations on the whole cluster")
    cmds = top.add_subparsers(dest="cluster_command", required=True)
    p = cmds.add_parser(
        "rebase-tokens",
        help="after the ZooKeeper ensemble was rebuilt: lift its tokens above the database's",
        description=(
            "A rebuilt ensemble restarts its zxids low, below every fencing token and "
            "leader epoch the database holds, and nodes refuse to start on it. This "
            "stores, in the new ensemble, a base added to every zxid the cluster uses "
            "as a token, so that tokens keep growing. Run it once, with every node "
            "stopped; it only ever raises the base."
        ),
        epilog="example: taskman cluster rebase-tokens --config /etc/taskman/node.toml",
    )
    env_flag(p, "--config", "TASKMAN_CONFIG", "node configuration (database, ZooKeeper, cluster)")
    p.add_argument(
        "--force", action="store_true", help="even while nodes are registered (not advised)"
    )
    add_json(p)
    p.set_defaults(handler=rebase_tokens)


def rebase_tokens(args: argparse.Namespace) -> int:
    from taskman.cluster import admin
    from taskman.config import load_config
    from taskman.errors import ConfigError
    from taskman.store import TaskStore, make_database

    if not args.config:
        raise ConfigError("rebase-tokens needs --config (the database and the ensemble)")
    config = load_config(args.config)
    store = TaskStore(make_database(config.dsn))
    try:
        done = admin.rebase_tokens(config, store, force=args.force)
    finally:
        store.close()
    if args.json:
        emit(
            {
                "database_highest_token": done.highest,
                "zookeeper_zxid": done.zxid,
                "token_base": done.base,
                "changed": done.changed,
            }
        )
    else:
        state = "raised" if done.changed else "already high enough"
        print(f"token base {done.base} ({state}); next tokens exceed {done.highest}")
    return int(Exit.OK)
