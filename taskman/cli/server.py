"""taskman node | db migrate | nodes: run and inspect the cluster."""

from __future__ import annotations

import argparse
import json
import signal
from types import FrameType

from taskman import logs
from taskman.cli.common import add_dsn, add_json, emit, env_flag, require_dsn
from taskman.cli.exitcodes import Exit
from taskman.dsn import redact


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node",
        help="run one node in the foreground (logs to stderr)",
        epilog="example: taskman node --config /etc/taskman/node.toml\n"
        "SIGTERM or Ctrl-C drains (finish running tasks, up to --drain-timeout); a second one "
        "stops at once. Every config key can also come from TASKMAN_<KEY>.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env_flag(p, "--config", "TASKMAN_CONFIG", "node configuration file (TOML)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let running tasks finish on shutdown (default 30)",
    )
    p.set_defaults(handler=node)

    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser(
        "migrate",
        help="create or upgrade the schema (idempotent)",
        epilog="example: taskman db migrate --dsn mysql://admin:pw@db:3306/taskman",
    )
    add_dsn(p)
    p.set_defaults(handler=migrate)

    p = sub.add_parser("nodes", help="list the live nodes by datacenter, and the leader")
    env_flag(
        p,
        "--config",
        "TASKMAN_CONFIG",
        "node configuration file to read zookeeper and cluster from",
    )
    env_flag(p, "--zookeeper", "TASKMAN_ZOOKEEPER", "ZooKeeper ensemble, host:port,...")
    env_flag(p, "--cluster", "TASKMAN_CLUSTER", "cluster name", default="default")
    add_json(p)
    p.set_defaults(handler=nodes)


def node(args: argparse.Namespace) -> int:
    from taskman.cluster.node import Node
    from taskman.config import load_config

    config = load_config(args.config)
    logs.configure(config.log_level, config.log_format)
    instance = Node(config)
    stops = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        instance.stop(drain=stops == 1, timeout=args.drain_timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    instance.run()
    return int(Exit.OK)


def migrate(args: argparse.Namespace) -> int:
    from taskman.store.migrations import migrate as run_migrations

    dsn = require_dsn(args)
    applied = run_migrations(dsn)
    if applied:
        print(f"{redact(dsn)}: applied schema versions {', '.join(map(str, applied))}")
    else:
        print(f"{redact(dsn)}: schema is up to date")
    return int(Exit.OK)


def nodes(args: argparse.Namespace) -> int:
    from taskman.cluster import membership
    from taskman.cluster.election import LeaderElection
    from taskman.cluster.layout import ClusterPaths
    from taskman.cluster.zk import connect
    from taskman.errors import ConfigError

    hosts, cluster = args.zookeeper, args.cluster
    if args.config:
        from taskman.config import load_config

        config = load_config(args.config)
        hosts, cluster = config.zookeeper, config.cluster
    if not hosts:
        raise ConfigError("no ZooKeeper given: pass --config or --zookeeper")
    paths = ClusterPaths(cluster)
    client = connect(hosts, 10.0)
    try:
        found = membership.members(client, paths) if client.exists(paths.nodes) else []
        leader = LeaderElection(client, paths, "observer").current_leader()
    finally:
        client.stop()
        client.close()
    for info in found:
        info["leader"] = info.get("node_id") == leader
    if args.json:
        emit({"leader": leader, "nodes": found})
        return int(Exit.OK)
    for info in found:
        mark = "*" if info["leader"] else " "
        plugins = json.dumps(info.get("plugins", {}), separators=(",", ":"))
        print(
            f"{mark} {info.get('datacenter', '?'):<8} {info.get('node_id', '?'):<16} "
            f"slots={info.get('slots')} plugins={plugins}"
        )
    if not found:
        print("no live nodes")
    return int(Exit.OK)
