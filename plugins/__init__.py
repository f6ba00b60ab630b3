"""Server plugins: where a node finds a task's code (``taskman.plugins``)."""

from pathlib import Path

from taskman.plugins.manifest import Plugin, load_manifest
from taskman.plugins.registry import PluginRegistry

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

__all__ = ["EXAMPLES_DIR", "Plugin", "PluginRegistry", "load_manifest"]
