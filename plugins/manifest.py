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
"""

from __future__ import annotations

import fnmatch
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskman.errors import PluginError, ValidationError
from taskman.validation import (
    FUNCTION_REF,
    PLUGIN_NAME,
    VERSION,
    check_concurrency_limit,
    check_limits,
)

MANIFEST = "plugin.toml"
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
    }
)


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

    def allows(self, function: str) -> bool:
        if self.functions is None:
            return True
        return any(fnmatch.fnmatchcase(function, pattern) for pattern in self.functions)

    def concurrency_for(self, function: str) -> int | None:
        """The cluster-wide cap for this function, if the manifest sets one."""
        if function in self.concurrency:
            return self.concurrency[function]
        for pattern, cap in self.concurrency.items():
            if fnmatch.fnmatchcase(function, pattern):
                return cap
        return None

    def summary(self) -> dict[str, Any]:
        """What the node publishes about this plugin: never the environment's values."""
        return {"name": self.name, "version": self.version, "env_keys": sorted(self.env)}


def load_manifest(directory: Path) -> Plugin:
    """Read ``directory/plugin.toml``; every problem is a PluginError naming the file."""
    path = directory / MANIFEST
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise PluginError(f"{path}: no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"{path}: cannot read: {exc}") from None

    def fail(message: str) -> PluginError:
        return PluginError(f"{path}: {message}")

    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not PLUGIN_NAME.match(name):
        raise fail(f"'name' must be a plugin name (letters, digits, _ . -), got {name!r}")
    version = data.get("version")
    if not isinstance(version, str) or not VERSION.match(version):
        raise fail(f"'version' must be dotted numbers like \"1.2.0\", got {version!r}")

    python = data.get("python", sys.executable)
    if not isinstance(python, str) or not python:
        raise fail("'python' must be the path of an interpreter")
    python_path = Path(python) if os.path.isabs(python) else (directory / python)
    if not python_path.exists() or not os.access(python_path, os.X_OK):
        raise fail(f"interpreter {python} does not exist or is not executable")

    entries = data.get("path", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise fail("'path' must be a list of directories")
    sys_path = []
    for entry in entries:
        resolved = (directory / entry).resolve()
        if not resolved.is_dir():
            raise fail(f"path entry {entry!r} is not a directory")
        sys_path.append(str(resolved))

    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in env.items()
    ):
        raise fail("[env] must map names to strings")
    functions = data.get("functions")
    if functions is not None:
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise fail("'functions' must be a list of patterns like \"pkg.module:*\"")
        for pattern in functions:
            if ":" not in pattern:
                raise fail(f"function pattern {pattern!r} must contain ':'")
    description = data.get("description", "")
    try:
        limits, concurrency = _limits_and_caps(data)
    except ValidationError as exc:
        raise fail(str(exc)) from None
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
    )


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


def check_reference(function: str) -> None:
    if not FUNCTION_REF.match(function):
        raise PluginError(f"malformed function reference {function!r}")
