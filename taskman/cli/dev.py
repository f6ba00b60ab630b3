"""taskman dev: a complete single-node scheduler on SQLite, with no external services."""

from __future__ import annotations

import argparse
from pathlib import Path

from taskman.cli.exitcodes import Exit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev",
        help="run one node, the admin UI and a local coordinator on a SQLite file",
        epilog="example: taskman dev  (then open the printed UI address)\n"
        "The UI address also serves the node's /metrics, /healthz and /readyz "
        "(docs/operations.md).\n"
        "One process per database file. For several nodes or datacenters, run the cluster: "
        "see `taskman lab up` and docs/multi-dc.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--db", default="taskman-dev.sqlite3", help="SQLite file (default ./%(default)s)"
    )
    p.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="DIR",
        help="plugin directory (repeatable; default ./plugins if it exists); "
        "the bundled examples are always loaded",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        help="UI, /metrics, /healthz and /readyz address (default %(default)s)",
    )
    p.add_argument("--slots", type=int, default=4, help="concurrent runners (default 4)")
    p.set_defaults(handler=dev)


def dev(args: argparse.Namespace) -> int:
    from taskman.cli.common import own_command
    from taskman.cli.ui import parse_listen, require_ui_extra
    from taskman.embedded import run_dev

    host, port = parse_listen(args.listen)
    require_ui_extra("taskman dev")
    run_dev(
        Path(args.db),
        [Path(p) for p in args.plugins],
        host,
        port,
        args.slots,
        command=own_command(),
    )
    return int(Exit.OK)
