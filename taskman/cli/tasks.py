"""taskman submit | status | abort | wait | tasks: the client on the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from taskman.cli.common import (
    add_dsn,
    add_json,
    add_wake,
    emit,
    parse_json,
    parse_time,
    require_dsn,
    signalling_client,
)
from taskman.cli.exitcodes import Exit
from taskman.cli.follow import Follower, Interrupted, is_terminal
from taskman.cli.task_file import FROM_FILE_EPILOG, submit_file
from taskman.client import Client
from taskman.errors import ValidationError
from taskman.models import Task
from taskman.states import TaskState


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_submit(sub)
    for name in ("status", "show"):
        p = sub.add_parser(
            name, help="show one task: attempts with tokens, nodes, outcomes, tracebacks, output"
        )
        p.add_argument("task_id", type=int)
        add_dsn(p)
        add_json(p)
        p.set_defaults(handler=status)

    p = sub.add_parser("retry", help="re-queue a failed, aborted or expired task")
    p.add_argument("task_id", type=int)
    add_dsn(p)
    add_wake(p)
    add_json(p)
    p.set_defaults(handler=retry)

    p = sub.add_parser("abort", help="abort a queued or running task")
    p.add_argument("task_id", type=int)
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=abort)

    p = sub.add_parser(
        "wait",
        help="wait until a task finishes, showing its progress and why it waits",
        epilog=WAIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task_id", type=int)
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    add_quiet(p)
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=wait)

    p = sub.add_parser(
        "tasks",
        help="list tasks, newest first",
        epilog="example: taskman tasks --state failed --limit 20; "
        "next page: --before-id <last id shown>",
    )
    p.add_argument("--state", choices=[s.value for s in TaskState])
    p.add_argument("--plugin")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before-id", type=int, help="page: only tasks with a smaller id")
    p.add_argument("--since", help="only tasks created at or after this ISO 8601 time")
    p.add_argument("--age", help="only tasks created within this long, e.g. 30m, 2h, 7d")
    add_dsn(p)
    add_json(p)
    p.set_defaults(handler=tasks)


WAIT_EPILOG = """While it waits it says what happens, on stderr: claims (node, token),
attempts that fail and retry, are reclaimed or fenced, and why a queued task has
not started (no live node serves its plugin or version, its datacenter has no
live node, its concurrency cap is full, not before T). On a terminal one line
with a progress bar is redrawn in place; otherwise one plain line per change.
The result goes to stdout. Ctrl-C stops waiting, not the task: it exits 130 and
prints how to abort the task (taskman abort ID).
"""


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="while waiting, print nothing on stderr"
    )


def _register_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="queue a task, or many from a file of JSON lines",
        epilog="examples:\n"
        "  taskman submit demo.tasks:add --plugin demo --args '[2, 3]' --wait\n"
        "  taskman submit --from-file tasks.jsonl --json\n\n"
        "A plugin, version or datacenter no node has ever served, or a function outside\n"
        "the plugin's allowlist, is refused (exit 65) unless --allow-unserved.\n\n"
        + FROM_FILE_EPILOG
        + "\n"
        + WAIT_EPILOG.replace("While it waits", "With --wait, while it waits"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("function", nargs="?", help="package.module:callable")
    what.add_argument(
        "--from-file",
        metavar="FILE",
        help="submit the tasks of FILE (- for stdin), one JSON object per line, in one "
        "transaction (see below)",
    )
    _add_task_flags(p)
    p.add_argument(
        "--allow-unserved",
        action="store_true",
        help="queue it even if no node has ever served its plugin, version, datacenter or "
        "function (a node that will serve it starts later)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the task to finish")
    p.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds")
    add_quiet(p)
    add_dsn(p)
    add_wake(p)
    add_json(p)
    p.set_defaults(handler=submit, usage_error=p.error)


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    """The fields of one task (with --from-file, each line has its own: PER_TASK_FLAGS)."""
    p.add_argument("--plugin", help="the server plugin that has the function (required)")
    p.add_argument("--args", help="positional arguments as a JSON list")
    p.add_argument("--kwargs", help="keyword arguments as a JSON object")
    p.add_argument("--version", dest="plugin_version", help="pin a plugin version")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--not-before", help="earliest start, ISO 8601 with timezone")
    p.add_argument("--not-after", help="latest start; later it expires. ISO 8601 with timezone")
    p.add_argument("--timeout", type=float, help="wall-clock limit of one attempt, seconds")
    p.add_argument("--max-attempts", type=int, help="attempts before the task fails (default 3)")
    p.add_argument("--retry-backoff", type=float, help="seconds before the first retry (default 1)")
    p.add_argument("--idempotency-key", help="the same key returns the same task")
    p.add_argument("--datacenter", help="run only in this datacenter")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=N",
        help="resource limit overriding the plugin's: memory_mb, cpu_seconds, open_files, "
        "output_bytes (repeatable)",
    )
    p.add_argument(
        "--concurrency-limit",
        type=int,
        help="at most this many attempts with the same key run at once, cluster-wide",
    )
    p.add_argument(
        "--concurrency-key", help="the key for --concurrency-limit (default: plugin and function)"
    )


def _final_code(task: Task) -> int:
    return int(Exit.OK if task.state is TaskState.SUCCEEDED else Exit.TASK_FAILED)


def submit(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return submit_file(args)
    if args.plugin is None:
        args.usage_error("the following arguments are required: --plugin")
    with signalling_client(args) as client:
        task_id = client.submit(
            args.function,
            plugin=args.plugin,
            args=parse_json(args.args, "--args", []),
            kwargs=parse_json(args.kwargs, "--kwargs", {}),
            version=args.plugin_version,
            priority=args.priority,
            not_before=parse_time(args.not_before, "--not-before"),
            not_after=parse_time(args.not_after, "--not-after"),
            timeout=args.timeout,
            max_attempts=args.max_attempts,
            retry_backoff=args.retry_backoff,
            idempotency_key=args.idempotency_key,
            datacenter=args.datacenter,
            limits=parse_limits(args.limit),
            concurrency_key=args.concurrency_key,
            concurrency_limit=args.concurrency_limit,
            allow_unserved=args.allow_unserved,
        )
        if not args.wait:
            emit({"id": task_id}) if args.json else print(task_id)
            return int(Exit.OK)
        return _follow(client, task_id, args.wait_timeout, args)


def _follow(client: Client, task_id: int, timeout: float | None, args: argparse.Namespace) -> int:
    """Wait for the task, telling stderr what happens; print the result; the exit code."""
    if args.quiet:
        try:
            task = client.wait(task_id, timeout=timeout)
        except KeyboardInterrupt:
            return _interrupted(task_id, None)
    else:
        follower = Follower(client, sys.stderr, live=is_terminal(sys.stderr))
        try:
            task = follower.follow(task_id, timeout=timeout)
        except Interrupted as stop:
            return _interrupted(task_id, stop.state)
    show(task, args.json)
    return _final_code(task)


def _interrupted(task_id: int, state: TaskState | None) -> int:
    now = f" is still {state.value} and" if state is not None else ""
    print(
        f"taskman: stopped waiting; task {task_id}{now} goes on without you.\n"
        f"  follow it again: taskman wait {task_id}\n"
        f"  abort it:        taskman abort {task_id}",
        file=sys.stderr,
    )
    return int(Exit.INTERRUPTED)


def parse_limits(items: list[str]) -> dict[str, int] | None:
    if not items:
        return None
    limits: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValidationError(f"--limit {item!r}: expected NAME=N, e.g. memory_mb=512")
        limits[name.strip()] = int(value)
    return limits


def status(args: argparse.Namespace) -> int:
    with Client(require_dsn(args), retry_deadline=args.retry_deadline) as client:
        show(client.get(args.task_id), args.json)
    return int(Exit.OK)


def abort(args: argparse.Namespace) -> int:
    with Client(require_dsn(args), retry_deadline=args.retry_deadline) as client:
        state = client.abort(args.task_id)
    if args.json:
        emit({"id": args.task_id, "state": state.value})
    elif state is TaskState.ABORTED:
        print(f"task {args.task_id} aborted")
    else:
        print(f"task {args.task_id} is running; its node will stop it")
    return int(Exit.OK)


def retry(args: argparse.Namespace) -> int:
    with signalling_client(args) as client:
        client.retry(args.task_id)
    if args.json:
        emit({"id": args.task_id, "state": TaskState.QUEUED.value})
    else:
        print(f"task {args.task_id} is queued again")
    return int(Exit.OK)


def wait(args: argparse.Namespace) -> int:
    with Client(require_dsn(args), retry_deadline=args.retry_deadline) as client:
        return _follow(client, args.task_id, args.timeout, args)


def tasks(args: argparse.Namespace) -> int:
    with Client(require_dsn(args), retry_deadline=args.retry_deadline) as client:
        found = client.list(
            state=args.state,
            plugin=args.plugin,
            limit=args.limit,
            before_id=args.before_id,
            created_after=_created_after(args),
        )
    if args.json:
        emit([t.to_dict() for t in found])
        return int(Exit.OK)
    print(f"{'ID':>8}  {'STATE':<9}  {'ATT':>3}  {'PLUGIN':<12}  FUNCTION")
    for t in found:
        print(f"{t.id:>8}  {t.state.value:<9}  {t.attempt:>3}  {t.plugin:<12}  {t.function}")
    return int(Exit.OK)


def _created_after(args: argparse.Namespace) -> datetime | None:
    since = parse_time(args.since, "--since")
    if args.age is None:
        return since
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = args.age[:-1], args.age[-1:]
    if unit not in units or not number.isdigit():
        raise ValidationError(f"--age {args.age!r}: expected a number and s, m, h or d, e.g. 2h")
    cutoff = datetime.now(UTC) - timedelta(seconds=int(number) * units[unit])
    return cutoff if since is None else max(since, cutoff)


def show(task: Task, as_json: bool) -> None:
    if as_json:
        emit(task.to_dict())
        return
    lines: list[tuple[str, Any]] = [
        ("id", task.id),
        ("state", task.state.value),
        (
            "function",
            f"{task.function}  (plugin {task.plugin}"
            + (f" {task.plugin_version}" if task.plugin_version else "")
            + ")",
        ),
        (
            "attempt",
            f"{task.attempt} (failures {task.failures}/{task.max_attempts}, reclaims {task.reclaims})",
        ),
        (
            "progress",
            "-"
            if task.progress is None
            else f"{task.progress:.0%} {task.progress_message or ''}".rstrip(),
        ),
        ("owner", task.owner or "-"),
        ("token", task.fence),
        ("created", task.created_at),
        ("started", task.started_at or "-"),
        ("finished", task.finished_at or "-"),
        ("result", "-" if task.result is None else task.result),
        ("error", task.error or "-"),
    ]
    for key, value in lines:
        print(f"{key:>9}: {value}")
    for a in task.attempts:
        print(
            f"  attempt {a.attempt}: {a.outcome.value} on {a.node} ({a.datacenter}) token {a.fence}"
        )
        if a.error_type:
            print(f"    {a.error_type}: {a.error_message}")
        if a.traceback:
            print("    " + a.traceback.rstrip().replace("\n", "\n    "))
        if a.output_tail:
            tail = a.output_tail.rstrip().splitlines()[-10:]
            print("    output (last lines):\n      " + "\n      ".join(tail))
