"""The taskman command. ``main`` is thin; ``run(argv)`` is what the tests call."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

import taskman
from taskman.cli import cluster, dev, lab, schedule, server, tasks, ui
from taskman.cli.common import fail
from taskman.cli.exitcodes import Exit
from taskman.errors import TaskmanError

EPILOG = """examples:
  taskman db migrate --dsn mysql://taskman:pw@127.0.0.1:3306/taskman
  taskman node --config node.toml
  taskman submit demo.tasks:add --plugin demo --args '[2, 3]' --wait
  taskman submit --from-file tasks.jsonl    # one JSON object per line, one transaction
  taskman status 42 --json
  taskman lab up            # a local cluster (MariaDB, ZooKeeper, two nodes) to try things on

exit codes: 0 ok, 1 task failed, 2 usage, 3 not found, 4 wrong state, 5 wait timed out,
  65 invalid input (also: a submit no node has ever served), 69 database or ZooKeeper
  unavailable, 70 internal error, 78 bad config, 130 Ctrl-C while waiting (the task goes on)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskman",
        description="A reliable multi-datacenter task scheduler.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskman {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks.register(sub)
    server.register(sub)
    cluster.register(sub)
    lab.register(sub)
    dev.register(sub)
    schedule.register(sub)
    ui.register(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version; the source tree's when not installed."""
    try:
        return metadata.version("taskman")
    except metadata.PackageNotFoundError:
        return taskman.__version__


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except TaskmanError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return int(Exit.SOFTWARE)


def main() -> None:
    sys.exit(run())
