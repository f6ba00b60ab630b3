"""Parse and check a plugin's ``plugin.toml``.

A plugin is a folder with a manifest::

    name = "demo"
    version = "1.2.0"
    python = "/opt/venvs/demo/bin/python"   # optional; default: the node's interpreter
    path = ["src"]                           # added to sys.path, relative to the folder
    functions = ["demo.tasks:*"]             # optional allowlist (fnmatch patterns)
    [env]
    DEMO_MODE = "production"
    [limits]                                 # defaults for every task; a task may override
    memory_mb = 512
    cpu_seconds = 600
    open_files = 256
    output_bytes = 10_000_000
    [concurrency]                            # cluster-wide caps on attempts running at once
    "demo.tasks:settle" = 2

Runners start by forking a pre-warmed zygote of the plugin version (docs/runner.md):
``fork = false`` starts a fresh interpreter per attempt instead (for code that must
not run in a forked process), and ``preload = ["demo.tasks"]`` names modules the
zygote imports once, before it forks (leave out modules that start threads or open
connections at import time). Without a zygote (fork = false, or one that cannot
start) every attempt cold-spawns; both run the same child code.

``isolation = "pooled"`` runs attempts one after another in warm runner processes
instead of a process per attempt (docs/runner.md: when to choose it)::

    isolation = "pooled"                     # default "process"
    max_tasks_per_runner = 1000              # a pooled runner is replaced after this many
    max_runner_memory_mb = 400               # ... or once an attempt leaves it larger
    [isolation_by_function]                  # per function (exact name, then patterns)
    "demo.tasks:resize_*" = "process"
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskman.errors import PluginError, ValidationError
from taskman.placement import cap_for_function, function_allowed
from taskman.validation import (
    FUNCTION_REF,
    PLUGIN_NAME,
    VERSION,
    check_concurrency_limit,
    check_limits,
)

MANIFEST = "plugin.toml"
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
KNOWN_KEYS = frozenset(
    {
        "name",
        "version",
        "python",
        "path",
        "functions",
        "env",
        "description",
        "limits",
        "concurrency",
        "fork",
        "preload",
        "user",
        "group",
        "allow_root",
        "isolation",
        "isolation_by_function",
        "max_tasks_per_runner",
        "max_runner_memory_mb",
    }
)
ISOLATIONS = ("process", "pooled")
DEFAULT_MAX_TASKS_PER_RUNNER = 1000


# Turns a message into the PluginError that names the manifest's file.
Fail = Callable[[str], PluginError]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class Plugin:
    name: str
    version: str
    directory: Path
    python: str
    sys_path: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets
    functions: tuple[str, ...] | None = None
    description: str = ""
    limits: dict[str, int] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)  # function pattern -> cap
    fork: bool = True  # start runners by forking the version's zygote
    preload: tuple[str, ...] = ()  # modules the zygote imports before forking
    # Runners drop to this user (and group) before any plugin code runs.
    run_as: tuple[int, int] | None = None
    allow_root: bool = False
    isolation: str = "process"  # "pooled": warm runners that run attempts one after another
    isolation_by_function: dict[str, str] = field(default_factory=dict)  # pattern -> isolation
    max_tasks_per_runner: int = DEFAULT_MAX_TASKS_PER_RUNNER  # pooled: recycle after this many
    max_runner_memory_mb: int | None = None  # pooled: recycle a runner left larger than this

    def isolation_for(self, function: str) -> str:
        """ "process" or "pooled" for this function: an exact name first, then patterns."""
        if function in self.isolation_by_function:
            return self.isolation_by_function[function]
        for pattern, isolation in self.isolation_by_function.items():
            if fnmatch.fnmatchcase(function, pattern):
                return isolation
        return self.isolation

    def allows(self, function: str) -> bool:
        return function_allowed(self.functions, function)

    def concurrency_for(self, function: str) -> int | None:
        """The cluster-wide cap for this function, if the manifest sets one."""
        return cap_for_function(self.concurrency, function)

    def summary(self) -> dict[str, Any]:
        """What the node publishes about this plugin: never the environment's values."""
        return {"name": self.name, "version": self.version, "env_keys": sorted(self.env)}


def load_manifest(directory: Path) -> Plugin:
    """Read ``directory/plugin.toml``; every problem is a PluginError naming the file."""
    path = directory / MANIFEST
    data = _read_toml(path)

    def fail(message: str) -> PluginError:
        return PluginError(f"{path}: {message}")

    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    name, version = _name_and_version(data, fail)
    python_path = _interpreter(data, directory, fail)
    sys_path = _sys_path(data, directory, fail)
    env = _env(data, fail)
    functions = _functions(data, fail)
    description = data.get("description", "")
    try:
        limits, concurrency = _limits_and_caps(data)
        fork, preload = _runner_start(data)
        pooling = _pooling(data)
    except ValidationError as exc:
        raise fail(str(exc)) from None
    run_as, allow_root = _run_as(data, fail)
    return Plugin(
        name=name,
        version=version,
        directory=directory.resolve(),
        python=str(python_path),
        sys_path=tuple(sys_path),
        env={k: str(v) for k, v in env.items()},
        functions=None if functions is None else tuple(functions),
        description=str(description),
        limits=limits,
        concurrency=concurrency,
        fork=fork,
        preload=preload,
        run_as=run_as,
        allow_root=allow_root,
        **pooling,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise PluginError(f"{path}: no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"{path}: cannot read: {exc}") from None


def _name_and_version(data: dict[str, Any], fail: Fail) -> tuple[str, str]:
    name = data.get("name")
    if not isinstance(name, str) or not PLUGIN_NAME.match(name):
        raise fail(f"'name' must be a plugin name (letters, digits, _ . -), got {name!r}")
    version = data.get("version")
    if not isinstance(version, str) or not VERSION.match(version):
        raise fail(f"'version' must be dotted numbers like \"1.2.0\", got {version!r}")
    return name, version


def _interpreter(data: dict[str, Any], directory: Path, fail: Fail) -> Path:
    python = data.get("python", sys.executable)
    if not isinstance(python, str) or not python:
        raise fail("'python' must be the path of an interpreter")
    python_path = Path(python) if os.path.isabs(python) else (directory / python)
    if not python_path.exists() or not os.access(python_path, os.X_OK):
        raise fail(f"interpreter {python} does not exist or is not executable")
    return python_path


def _sys_path(data: dict[str, Any], directory: Path, fail: Fail) -> list[str]:
    entries = data.get("path", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise fail("'path' must be a list of directories")
    sys_path = []
    for entry in entries:
        resolved = (directory / entry).resolve()
        if not resolved.is_dir():
            raise fail(f"path entry {entry!r} is not a directory")
        sys_path.append(str(resolved))
    return sys_path


def _env(data: dict[str, Any], fail: Fail) -> dict[str, Any]:
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in env.items()
    ):
        raise fail("[env] must map names to strings")
    return env


def _functions(data: dict[str, Any], fail: Fail) -> list[str] | None:
    functions = data.get("functions")
    if functions is not None:
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise fail("'functions' must be a list of patterns like \"pkg.module:*\"")
        for pattern in functions:
            if ":" not in pattern:
                raise fail(f"function pattern {pattern!r} must contain ':'")
    return functions


def _run_as(data: dict[str, Any], fail: Fail) -> tuple[tuple[int, int] | None, bool]:
    """((uid, gid) or None, allow_root) from `user`, `group` and `allow_root`.

    A node running as root refuses a plugin that would run as root too, unless
    the plugin says so explicitly.
    """
    allow_root = data.get("allow_root", False)
    if not isinstance(allow_root, bool):
        raise fail("'allow_root' must be true or false")
    user, group = data.get("user"), data.get("group")
    if user is None:
        if group is not None:
            raise fail("'group' needs a 'user'")
        if os.geteuid() == 0 and not allow_root:
            raise fail(
                "its runners would run as root: name an unprivileged `user` (and `group`), "
                "or set allow_root = true if it really must"
            )
        return None, allow_root
    if not isinstance(user, str) or (group is not None and not isinstance(group, str)):
        raise fail("'user' and 'group' must be names")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise fail(f"no such user {user!r} on this machine") from None
    if account.pw_uid == 0 and not allow_root:
        raise fail("'user' is root: set allow_root = true if it really must")
    if group is None:
        return (account.pw_uid, account.pw_gid), allow_root
    try:
        return (account.pw_uid, grp.getgrnam(group).gr_gid), allow_root
    except KeyError:
        raise fail(f"no such group {group!r} on this machine") from None


def _limits_and_caps(data: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    limits = check_limits(data.get("limits", {}), "[limits]")
    caps = data.get("concurrency", {})
    if not isinstance(caps, dict):
        raise ValidationError("[concurrency] must map function patterns to caps")
    concurrency = {}
    for pattern, cap in caps.items():
        checked = check_concurrency_limit(f"[concurrency] {pattern!r}", cap)
        if checked is None:
            raise ValidationError(f"[concurrency] {pattern!r} needs a cap")
        concurrency[str(pattern)] = checked
    return limits, concurrency


def _runner_start(data: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
    fork = data.get("fork", True)
    if not isinstance(fork, bool):
        raise ValidationError("'fork' must be true or false")
    preload = data.get("preload", [])
    if not isinstance(preload, list) or not all(
        isinstance(m, str) and MODULE_NAME.match(m) for m in preload
    ):
        raise ValidationError("'preload' must be a list of module names like \"demo.tasks\"")
    return fork, tuple(preload)


def _pooling(data: dict[str, Any]) -> dict[str, Any]:
    """The pooled-runner keys, checked: isolation, its per-function overrides, the recycling."""

    def isolation(where: str, value: Any) -> str:
        if value not in ISOLATIONS:
            raise ValidationError(f'{where} must be "process" or "pooled", got {value!r}')
        return str(value)

    by_function = data.get("isolation_by_function", {})
    if not isinstance(by_function, dict):
        raise ValidationError("[isolation_by_function] must map function patterns to isolations")
    for pattern in by_function:
        if ":" not in pattern:
            raise ValidationError(f"[isolation_by_function] pattern {pattern!r} must contain ':'")
    max_tasks = data.get("max_tasks_per_runner", DEFAULT_MAX_TASKS_PER_RUNNER)
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1:
        raise ValidationError(
            f"'max_tasks_per_runner' must be a whole number >= 1, got {max_tasks!r}"
        )
    memory = data.get("max_runner_memory_mb")
    if memory is not None and (
        isinstance(memory, bool) or not isinstance(memory, int) or memory < 16
    ):
        raise ValidationError(
            f"'max_runner_memory_mb' must be a whole number >= 16, got {memory!r}"
        )
    return {
        "isolation": isolation("'isolation'", data.get("isolation", "process")),
        "isolation_by_function": {
            str(p): isolation(f"[isolation_by_function] {p!r}", v) for p, v in by_function.items()
        },
        "max_tasks_per_runner": max_tasks,
        "max_runner_memory_mb": memory,
    }


def check_reference(function: str) -> None:
    if not FUNCTION_REF.match(function):
        raise PluginError(f"malformed function reference {function!r}")
