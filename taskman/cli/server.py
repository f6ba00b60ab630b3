"""taskman node | db migrate | nodes: run and inspect the cluster."""

from __future__ import annotations

import argparse
import json

from taskman import logs
from taskman.cli.common import add_dsn, add_json, emit, env_flag, require_dsn
from taskman.cli.exitcodes import Exit
from taskman.cluster.zk import ZkSecurity
from taskman.config import NodeConfig
from taskman.dsn import redact


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_node(sub)
    _register_db(sub)
    _register_prune(sub)
    _register_nodes(sub)


def _register_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node",
        help="run one node in the foreground (logs to stderr)",
        epilog="example: taskman node --config /etc/taskman/node.toml\n"
        "       taskman node drain dc1-node1 --zookeeper zk1:2181 --cluster prod\n"
        "SIGTERM or Ctrl-C drains (finish running tasks, up to --drain-timeout); a second one "
        "stops at once. Every config key can also come from TASKMAN_<KEY>.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "drain"],
        default="run",
        help="run this node (default), or ask a running node to drain and exit",
    )
    p.add_argument("node_id", nargs="?", help="with drain: the node to drain")
    env_flag(p, "--config", "TASKMAN_CONFIG", "node configuration file (TOML)")
    env_flag(p, "--zookeeper", "TASKMAN_ZOOKEEPER", "with drain and no --config: the ensemble")
    env_flag(p, "--zookeeper-auth", "TASKMAN_ZOOKEEPER_AUTH", "with drain: user:password")
    env_flag(
        p,
        "--cluster",
        "TASKMAN_CLUSTER",
        "with drain and no --config: the cluster",
        default="default",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds to let running tasks finish on shutdown (default: drain_timeout "
        "from the config, 30)",
    )
    p.set_defaults(handler=node)


def _register_db(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser(
        "migrate",
        help="create or upgrade the schema (idempotent)",
        epilog="example: taskman db migrate --dsn mysql://admin:pw@db:3306/taskman",
    )
    add_dsn(p)
    p.set_defaults(handler=migrate)


def _register_prune(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prune",
        help="show what retention will delete (the leader prunes by itself)",
        epilog="example: taskman prune --dry-run --config node.toml --json",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        required=True,
        help="only count (required: the elected leader does the deleting)",
    )
    env_flag(p, "--config", "TASKMAN_CONFIG", "node configuration to read retention ages from")
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=prune)


def _register_nodes(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("nodes", help="list the live nodes by datacenter, and the leader")
    env_flag(
        p,
        "--config",
        "TASKMAN_CONFIG",
        "node configuration file to read zookeeper and cluster from",
    )
    env_flag(p, "--zookeeper", "TASKMAN_ZOOKEEPER", "ZooKeeper ensemble, host:port,...")
    env_flag(p, "--zookeeper-auth", "TASKMAN_ZOOKEEPER_AUTH", "ZooKeeper digest user:password")
    env_flag(p, "--cluster", "TASKMAN_CLUSTER", "cluster name", default="default")
    add_json(p)
    p.set_defaults(handler=nodes)


def node(args: argparse.Namespace) -> int:
    from taskman.cluster.node import Node
    from taskman.cluster.shutdown import stop_on_signals
    from taskman.config import load_config

    if args.action == "drain":
        return drain(args)
    config = load_config(args.config)
    drain_timeout = config.drain_timeout if args.drain_timeout is None else args.drain_timeout
    logs.configure(config.log_level, config.log_format)
    instance = Node(config)
    stop_on_signals(instance, drain_timeout)
    instance.run()
    return int(Exit.OK)


def _cluster_target(args: argparse.Namespace) -> tuple[str, str, str | None, ZkSecurity]:
    """(zookeeper hosts, cluster, this config's node id, identity) from --config or the flags."""
    from taskman.cluster.zk import ZkSecurity, zk_security
    from taskman.config import load_config
    from taskman.errors import ConfigError

    if args.config:
        config = load_config(args.config)
        return config.zookeeper, config.cluster, config.node_id, zk_security(config)
    if not args.zookeeper:
        raise ConfigError("no ZooKeeper given: pass --config or --zookeeper")
    return args.zookeeper, args.cluster, None, ZkSecurity(auth=args.zookeeper_auth)


def drain(args: argparse.Namespace) -> int:
    from taskman.cluster.admin import request_drain
    from taskman.errors import ConfigError

    hosts, cluster, own_id, security = _cluster_target(args)
    node_id = args.node_id or own_id
    if not node_id:
        raise ConfigError("drain which node? pass its node id")
    request_drain(hosts, cluster, node_id, security)
    print(f"asked {node_id} to drain: it stops claiming, lets running tasks finish, then exits")
    return int(Exit.OK)


def prune(args: argparse.Namespace) -> int:
    from taskman.config import load_config
    from taskman.states import TaskState
    from taskman.store import TaskStore

    if args.config:
        config = load_config(args.config)
        dsn = config.dsn
        ages = {
            state: getattr(config, f"retention_{state}")
            for state in ("succeeded", "failed", "aborted", "expired")
        }
    else:
        dsn = require_dsn(args)
        defaults = NodeConfig.__dataclass_fields__
        ages = {
            state: defaults[f"retention_{state}"].default
            for state in ("succeeded", "failed", "aborted", "expired")
        }
    store = TaskStore(dsn)
    try:
        counts = {
            state: (store.count_prunable(TaskState(state), age) if age > 0 else 0)
            for state, age in ages.items()
        }
    finally:
        store.close()
    if args.json:
        emit({"would_delete": counts, "older_than_seconds": ages})
        return int(Exit.OK)
    for state, count in counts.items():
        age = ages[state]
        keep = "kept forever" if age <= 0 else f"older than {age / 86400:g} days"
        print(f"{state:>9}: {count} would go ({keep})")
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
    from taskman.cluster.observer import ClusterObserver

    hosts, cluster, _, security = _cluster_target(args)
    with ClusterObserver(hosts, cluster, security) as observer:
        found = observer.members()
        leader = observer.leader()
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
