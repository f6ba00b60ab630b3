"""Shared pieces of the command line: environment-backed flags, output, error mapping."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
from datetime import datetime
from pathlib import Path
from typing import Any

from taskman.cli.exitcodes import Exit
from taskman.client import Client
from taskman.errors import (
    ConfigError,
    CoordinationError,
    PluginError,
    StoreError,
    TaskmanError,
    TaskNotFoundError,
    TaskStateError,
    ValidationError,
    WaitTimeoutError,
)


def env_flag(
    parser: argparse.ArgumentParser, flag: str, env: str, help_text: str, **kwargs: Any
) -> None:
    """A flag whose default comes from an environment variable, named in --help."""
    default = os.environ.get(env, kwargs.pop("default", None))
    parser.add_argument(flag, default=default, help=f"{help_text} [env: {env}]", **kwargs)


def add_dsn(parser: argparse.ArgumentParser) -> None:
    env_flag(parser, "--dsn", "TASKMAN_DSN", "database, mysql://user:pass@host:port/db")
    env_flag(
        parser,
        "--retry-deadline",
        "TASKMAN_RETRY_DEADLINE",
        "seconds to retry an unreachable database (default 10)",
        default="10",
        type=float,
    )


def add_wake(parser: argparse.ArgumentParser) -> None:
    """The ensemble to signal idle nodes through after the commit (optional)."""
    env_flag(
        parser,
        "--zookeeper",
        "TASKMAN_ZOOKEEPER",
        "ZooKeeper ensemble host:port,...: wake idle nodes at once after the commit",
    )
    env_flag(parser, "--cluster", "TASKMAN_CLUSTER", "the nodes' cluster", default="default")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def signalling_client(args: argparse.Namespace) -> Client:
    """A Client that signals through ``add_wake``'s --zookeeper, when given."""
    zookeeper = getattr(args, "zookeeper", None) or None
    return Client(
        require_dsn(args),
        retry_deadline=args.retry_deadline,
        zookeeper=zookeeper,
        cluster=str(getattr(args, "cluster", "default")),
    )


def require_dsn(args: argparse.Namespace) -> str:
    if not args.dsn:
        raise ConfigError("no database given: pass --dsn or set TASKMAN_DSN")
    return str(args.dsn)


def parse_time(value: str | None, name: str) -> datetime | None:
    """ISO 8601 with a timezone; naive times are refused, like the client does."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{name}: {value!r} has no timezone; add one, e.g. +00:00 or Z")
    return parsed


def parse_json(value: str | None, name: str, default: Any) -> Any:
    if value is None:
        return default
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValidationError(f"{name} is not valid JSON: {exc}") from None


def emit(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def exit_code_for(exc: TaskmanError) -> Exit:
    for kind, code in (
        (TaskNotFoundError, Exit.NOT_FOUND),
        (TaskStateError, Exit.STATE),
        (WaitTimeoutError, Exit.TIMEOUT),
        (ValidationError, Exit.INVALID),
        (PluginError, Exit.CONFIG),
        (ConfigError, Exit.CONFIG),
        (StoreError, Exit.UNAVAILABLE),
        (CoordinationError, Exit.UNAVAILABLE),
    ):
        if isinstance(exc, kind):
            return code
    return Exit.SOFTWARE


def fail(exc: TaskmanError) -> int:
    print(f"taskman: error: {exc}", file=sys.stderr)
    return int(exit_code_for(exc))


def own_command() -> str:
    """How a shell reaches this very taskman, for the hints the CLI prints.

    ``taskman`` when PATH finds this installation's script; its full path when it is in
    a virtual environment that is not activated (.venv of scripts/install-deps).
    """
    script = Path(sysconfig.get_path("scripts")) / "taskman"
    found = shutil.which("taskman")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "taskman"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m taskman"


def path_export() -> str:
    """A shell line that puts this taskman first on PATH, for env files the lab writes;
    empty when the shell already finds it."""
    if own_command() == "taskman":
        return ""
    return f'export PATH="{sysconfig.get_path("scripts")}:$PATH"\n'
