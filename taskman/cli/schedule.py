"""taskman schedule add | list | show | pause | resume | remove: recurring tasks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from taskman.cli.common import add_dsn, add_json, emit, parse_json, require_dsn
from taskman.cli.exitcodes import Exit
from taskman.client import Client
from taskman.schedules import (
    DEFAULT_MAX_CATCH_UP,
    DEFAULT_MISFIRE_GRACE,
    Misfire,
    Overlap,
    Schedule,
    ScheduleNotFoundError,
)

Handler = Callable[[argparse.Namespace], int]

EPILOG = """examples:
  taskman schedule add nightly-export exports.jobs:run --plugin exports \\
      --cron '30 2 * * *' --timezone Europe/Berlin --overlap skip
  taskman schedule add heartbeat demo.tasks:add --plugin demo --args '[1, 2]' --every 10
  taskman schedule list
  taskman schedule pause nightly-export

Only the elected leader fires ticks, one task per tick (docs/schedules.md).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser(
        "schedule",
        help="recurring tasks: add, list, show, pause, resume, remove",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = top.add_subparsers(dest="schedule_command", required=True)
    _register_add(cmds)
    _register_list(cmds)
    _register_by_name(cmds)


def _register_add(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser(
        "add",
        help="add a schedule (the same definition again is a no-op)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="unique name: letters, digits, '_', '.', '-'")
    p.add_argument("function", help="package.module:callable")
    p.add_argument("--plugin", required=True, help="the server plugin that has the function")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="5-field cron expression or @daily, @hourly, ...")
    when.add_argument("--every", type=int, help="fixed interval in whole seconds")
    p.add_argument("--timezone", default="UTC", help="IANA timezone of --cron (default UTC)")
    p.add_argument("--args", help="positional arguments as a JSON list")
    p.add_argument("--kwargs", help="keyword arguments as a JSON object")
    p.add_argument("--version", dest="plugin_version", help="pin a plugin version")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--timeout", type=float, help="wall-clock limit of one attempt, seconds")
    p.add_argument("--max-attempts", type=int, help="attempts before a run fails (default 3)")
    p.add_argument("--retry-backoff", type=float, help="seconds before the first retry")
    p.add_argument("--datacenter", help="run only in this datacenter")
    _add_tick_policies(p)
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.add_argument("--replace", action="store_true", help="replace a different definition")
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=_not_found_is_3(add))


def _add_tick_policies(p: argparse.ArgumentParser) -> None:
    """What `schedule add` does with late ticks and with a tick whose last run still runs."""
    p.add_argument(
        "--misfire",
        choices=[m.value for m in Misfire],
        default=Misfire.RUN_ONCE.value,
        help="ticks missed by more than --misfire-grace: one run for all (default), "
        "none, or up to --max-catch-up runs",
    )
    p.add_argument(
        "--max-catch-up",
        type=int,
        default=DEFAULT_MAX_CATCH_UP,
        help=f"catch_up: run at most this many missed ticks (default {DEFAULT_MAX_CATCH_UP})",
    )
    p.add_argument(
        "--misfire-grace",
        type=int,
        default=DEFAULT_MISFIRE_GRACE,
        help=f"seconds a tick may be late and still run normally (default {DEFAULT_MISFIRE_GRACE})",
    )
    p.add_argument(
        "--overlap",
        choices=[o.value for o in Overlap],
        default=Overlap.ALLOW.value,
        help="skip: no new run while the previous run is queued or running",
    )


def _register_list(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser("list", help="list schedules")
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=list_schedules)


def _register_by_name(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """show, pause, resume and remove: each takes one schedule's name."""
    for name, handler, text in (
        ("show", show, "show one schedule"),
        ("pause", pause, "stop firing ticks until resumed"),
        ("resume", resume, "fire again from the next tick after now"),
        ("remove", remove, "delete a schedule (its tasks stay)"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("name")
        add_dsn(p)
        add_json(p)
        p.set_defaults(handler=_not_found_is_3(handler))


def _not_found_is_3(handler: Handler) -> Handler:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ScheduleNotFoundError as exc:
            print(f"taskman: error: {exc}", file=sys.stderr)
            return int(Exit.NOT_FOUND)

    return wrapped


def _client(args: argparse.Namespace) -> Client:
    return Client(require_dsn(args), retry_deadline=args.retry_deadline)


def add(args: argparse.Namespace) -> int:
    with _client(args) as client:
        schedule = client.add_schedule(
            args.name,
            args.function,
            plugin=args.plugin,
            cron=args.cron,
            timezone=args.timezone,
            every=args.every,
            args=parse_json(args.args, "--args", []),
            kwargs=parse_json(args.kwargs, "--kwargs", {}),
            version=args.plugin_version,
            priority=args.priority,
            timeout=args.timeout,
            max_attempts=args.max_attempts,
            retry_backoff=args.retry_backoff,
            datacenter=args.datacenter,
            misfire=args.misfire,
            max_catch_up=args.max_catch_up,
            misfire_grace=args.misfire_grace,
            overlap=args.overlap,
            paused=args.paused,
            replace=args.replace,
        )
    _show(schedule, args.json)
    return int(Exit.OK)


def list_schedules(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.list_schedules()
    if args.json:
        emit([s.to_dict() for s in found])
        return int(Exit.OK)
    print(f"{'NAME':<24}  {'WHEN':<28}  {'STATE':<6}  {'NEXT TICK (UTC)':<20}  FUNCTION")
    for s in found:
        print(
            f"{s.name:<24}  {_when(s):<28}  {'paused' if s.paused else 'active':<6}  "
            f"{s.next_tick:%Y-%m-%d %H:%M:%S}   {s.spec.function}"
        )
    return int(Exit.OK)


def show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show(client.get_schedule(args.name), args.json)
    return int(Exit.OK)


def pause(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show(client.pause_schedule(args.name), args.json)
    return int(Exit.OK)


def resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show(client.resume_schedule(args.name), args.json)
    return int(Exit.OK)


def remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.remove_schedule(args.name)
    if args.json:
        emit({"name": args.name, "removed": True})
    else:
        print(f"schedule {args.name} removed")
    return int(Exit.OK)


def _when(s: Schedule) -> str:
    if s.spec.every is not None:
        return f"every {s.spec.every} s"
    return f"{s.spec.cron} {s.spec.timezone}"


def _show(s: Schedule, as_json: bool) -> None:
    if as_json:
        emit(s.to_dict())
        return
    spec = s.spec
    misfire = spec.misfire.value + (
        f" (max {spec.max_catch_up})" if spec.misfire is Misfire.CATCH_UP else ""
    )
    lines = [
        ("name", s.name),
        ("when", _when(s)),
        ("function", f"{spec.function}  (plugin {spec.plugin} {spec.plugin_version or ''})"),
        ("state", "paused" if s.paused else "active"),
        ("next tick", s.next_tick.isoformat()),
        ("last tick", "-" if s.last_tick is None else s.last_tick.isoformat()),
        ("last task", "-" if s.last_task_id is None else s.last_task_id),
        ("misfire", f"{misfire}, grace {spec.misfire_grace} s"),
        ("overlap", spec.overlap.value),
        ("ticks", f"{s.ticks_fired} fired, {s.ticks_skipped} skipped"),
    ]
    for key, value in lines:
        print(f"{key:>9}: {str(value).rstrip()}")
