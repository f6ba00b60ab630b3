"""taskman lab up: a local cluster (MariaDB, ZooKeeper, nodes) on loopback, in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from taskman.cli.exitcodes import Exit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="local clusters on this machine, for trying and testing")
    labsub = lab.add_subparsers(dest="lab_command", required=True)
    p = labsub.add_parser(
        "up",
        help="start MariaDB, ZooKeeper and nodes on loopback; Ctrl-C stops everything",
        epilog="example: taskman lab up --nodes 2 --dir .taskman-lab",
    )
    p.add_argument("--dir", default=".taskman-lab", help="data and logs (default .taskman-lab)")
    p.add_argument("--nodes", type=int, default=2, help="taskman nodes to run (default 2)")
    p.add_argument("--zookeeper-size", type=int, default=1, help="ZooKeeper servers (1 or 3)")
    p.set_defaults(handler=up)


def up(args: argparse.Namespace) -> int:
    from taskman.lab.local import LocalCluster

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster = LocalCluster(Path(args.dir), nodes=args.nodes, zookeeper_size=args.zookeeper_size)
    try:
        cluster.start()
        env_file = cluster.base_dir / "env"
        env_file.write_text(
            f"export TASKMAN_DSN={cluster.dsn}\nexport TASKMAN_ZOOKEEPER={cluster.zookeeper.hosts}\n"
        )
        print(
            f"taskman lab is up in {cluster.base_dir}\n"
            f"  database:  {cluster.dsn}\n"
            f"  zookeeper: {cluster.zookeeper.hosts}\n"
            f"  nodes:     {', '.join(n.node_id for n in cluster.nodes)} "
            f"(logs in {cluster.base_dir / 'nodes'})\n\n"
            f"In another shell:\n"
            f"  source {env_file}\n"
            f"  taskman submit demo.tasks:add --plugin demo --args '[2, 3]' --wait\n"
            f"  taskman nodes\n\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        stop.wait()
    finally:
        print("stopping the lab ...", flush=True)
        cluster.stop()
    return int(Exit.OK)
