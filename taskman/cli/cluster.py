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
    from kazoo.exceptions import NodeExistsError

    from taskman.cluster import membership
    from taskman.cluster.layout import ClusterPaths
    from taskman.cluster.zk import (
        connect,
        ensure_namespace,
        fresh_zxid,
        read_token_base,
        wait,
        zk_security,
    )
    from taskman.config import load_config
    from taskman.errors import ConfigError, CoordinationError
    from taskman.store import TaskStore, make_database

    if not args.config:
        raise ConfigError("rebase-tokens needs --config (the database and the ensemble)")
    config = load_config(args.config)
    paths = ClusterPaths(config.cluster)
    store = TaskStore(make_database(config.dsn))
    client = connect(config.zookeeper, 10.0, security=zk_security(config))
    try:
        ensure_namespace(client, paths, insecure=config.insecure)
        live = membership.members(client, paths)
        if live and not args.force:
            names = ", ".join(str(m.get("node_id")) for m in live)
            raise CoordinationError(
                f"nodes are running ({names}): stop every node first, or pass --force"
            )
        highest = store.max_token()
        current = read_token_base(client, paths)
        zxid = fresh_zxid(client, paths)
        # Every later zxid is larger than this one, so base + zxid > highest for good.
        base = max(current, highest - zxid + 1)
        if base != current:
            data = str(base).encode()
            try:
                wait(client.create_async(paths.token_base, data))
            except NodeExistsError:
                wait(client.set_async(paths.token_base, data))
    finally:
        client.stop()
        client.close()
        store.close()
    result = {
        "database_highest_token": highest,
        "zookeeper_zxid": zxid,
        "token_base": base,
        "changed": base != current,
    }
    if args.json:
        emit(result)
    else:
        state = "raised" if result["changed"] else "already high enough"
        print(f"token base {base} ({state}); next tokens exceed {highest}")
    return int(Exit.OK)
