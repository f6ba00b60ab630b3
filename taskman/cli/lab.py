"""taskman lab up: a local cluster on loopback, in the foreground; taskman lab multi-dc: datacenters
as network namespaces, driven from any shell."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from taskman.cli.common import path_export
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
    register_multi_dc(labsub)


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
            f"export TASKMAN_ZOOKEEPER_AUTH={cluster.zookeeper_auth}\n{path_export()}"
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


# -- taskman lab multi-dc ------------------------------------------------------------------

MULTI_DC_EPILOG = """examples (as root):
  taskman lab multi-dc up                      # 3 datacenters in network namespaces
  taskman lab multi-dc up --topology 2dc-arbitrator
  taskman lab multi-dc status
  taskman lab multi-dc partition-dc dc3 && sleep 10 && taskman lab multi-dc heal
  taskman lab multi-dc kill-dc dc2 && taskman lab multi-dc start-dc dc2
  taskman lab multi-dc pause-node dc1-node1 && taskman lab multi-dc resume-node dc1-node1
  taskman lab multi-dc down
"""


def register_multi_dc(labsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from taskman.lab.multidc import DEFAULT_DIR, TOPOLOGIES

    md = labsub.add_parser(
        "multi-dc",
        help="datacenters as network namespaces: ZooKeeper ensemble, Galera cluster, nodes",
        epilog=MULTI_DC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mdsub = md.add_subparsers(dest="multi_dc_command", required=True)

    def add(name: str, help_text: str, target: str | None = None) -> argparse.ArgumentParser:
        p = mdsub.add_parser(name, help=help_text)
        p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"lab directory ({DEFAULT_DIR})")
        if target is not None:
            p.add_argument(target, help=f"the {target} to act on")
        p.set_defaults(handler=multi_dc, action=name)
        return p

    up_parser = add("up", "start every datacenter and wait until all serve; then return")
    up_parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="3dc")
    up_parser.add_argument("--session-timeout", type=float, default=None)
    add("down", "stop everything the lab started; remove namespaces and bridge")
    status = add("status", "processes, ZooKeeper modes, Galera states, partitions")
    status.add_argument("--json", action="store_true")
    add("kill-dc", "SIGKILL every process of a datacenter", "dc")
    add("start-dc", "start whatever of a datacenter is not running", "dc")
    add("partition-dc", "cut a datacenter off from the others (nft in its namespace)", "dc")
    heal = add("heal", "remove partitions (of one datacenter, or all)")
    heal.add_argument("dc", nargs="?", default=None)
    add("pause-node", "SIGSTOP a taskman node", "node")
    add("resume-node", "SIGCONT a taskman node", "node")
    add("kill-node", "SIGKILL a taskman node", "node")
    add("start-node", "start a taskman node that is not running", "node")
    add("restart-galera", "SIGKILL a datacenter's Galera node and start it again", "dc")


def multi_dc(args: argparse.Namespace) -> int:
    import json

    from taskman.lab.multidc import MultiDCLab

    base = Path(args.dir)
    action: str = args.action
    if action == "up":
        if (base / "state.json").exists():
            existing = MultiDCLab.load(base)
            if any(existing.alive(n) for n in existing.processes()):
                print(f"a lab is already running in {base}; `taskman lab multi-dc down` first")
                return int(Exit.STATE)
        options = {} if args.session_timeout is None else {"session_timeout": args.session_timeout}
        lab = MultiDCLab.create(args.topology, base_dir=base, node_options=options)
        lab.up()
        lab.detach()
        first = lab.galera_dcs[0]
        env_file = lab.base_dir / "env"
        env_file.write_text(
            f"export TASKMAN_DSN={lab.dsn(first)}\nexport TASKMAN_ZOOKEEPER={lab.zookeeper_hosts}\n"
            f"{path_export()}"
        )
        print(f"multi-dc lab ({args.topology}) up in {lab.up_seconds:.1f} s in {lab.base_dir}")
        _print_status(lab.status())
        print(f"\nsource {env_file}   # then: taskman submit demo.tasks:add --plugin demo ...")
        return int(Exit.OK)
    lab = MultiDCLab.load(base)
    if action == "down":
        lab.down()
        print(f"lab stopped; logs kept in {lab.base_dir}")
    elif action == "status":
        status = lab.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_status(status)
    elif action == "kill-dc":
        print(f"SIGKILL {args.dc}: pids {lab.kill_dc(args.dc)}")
    elif action == "start-dc":
        lab.start_dc(args.dc)
    elif action == "partition-dc":
        lab.partition_dc(args.dc)
    elif action == "heal":
        lab.heal(args.dc)
    elif action == "pause-node":
        lab.pause_node(args.node)
    elif action == "resume-node":
        lab.resume_node(args.node)
    elif action == "kill-node":
        lab.kill(args.node)
    elif action == "start-node":
        lab.start_node(args.node)
    elif action == "restart-galera":
        lab.restart_galera(args.dc)
    lab.detach()
    return int(Exit.OK)


def _print_status(status: dict[str, Any]) -> None:
    print(
        f"  bridge {status['bridge']} (driver {status['driver_ip']}), "
        f"zookeeper {status['zookeeper']}, reaper leader {status['leader_node']}"
    )
    for dc, info in status["datacenters"].items():
        cut = " PARTITIONED" if info["partitioned"] else ""
        procs = ", ".join(f"{n}={pid or 'down'}" for n, pid in info["processes"].items())
        print(
            f"  {dc} {info['ip']} netns {info['namespace']}{cut}: zk {info['zookeeper']}, "
            f"{info['database']} {info['galera']}; {procs}"
        )
        if info["dsn"]:
            print(f"      dsn {info['dsn']}")
