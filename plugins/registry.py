"""Find the plugins installed in a node's plugin directories, versions side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from taskman.errors import PluginError
from taskman.plugins.manifest import MANIFEST, Plugin, load_manifest, version_key

log = structlog.get_logger("taskman.plugins")


@dataclass
class PluginRegistry:
    plugins: dict[str, dict[str, Plugin]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def scan(cls, directories: list[Path] | tuple[Path, ...]) -> PluginRegistry:
        """Load every ``*/plugin.toml`` (and ``*/*/plugin.toml``) below the directories.

        A broken manifest is reported and skipped; the other plugins still load.
        """
        registry = cls()
        seen: set[Path] = set()  # overlapping directories name the same manifest twice
        for base in directories:
            if not base.is_dir():
                registry._problem(f"{base}: plugin directory does not exist")
                continue
            manifests = sorted({*base.glob(f"*/{MANIFEST}"), *base.glob(f"*/*/{MANIFEST}")})
            if (base / MANIFEST).is_file():
                manifests.insert(0, base / MANIFEST)
            for manifest in manifests:
                if manifest.resolve() in seen:
                    continue
                seen.add(manifest.resolve())
                try:
                    registry.add(load_manifest(manifest.parent))
                except PluginError as exc:
                    registry._problem(str(exc))
        return registry

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        log.error("plugin.invalid", problem=message)

    def add(self, plugin: Plugin) -> None:
        versions = self.plugins.setdefault(plugin.name, {})
        if plugin.version in versions:
            other = versions[plugin.version].directory
            self._problem(
                f"{plugin.directory}: plugin {plugin.name} {plugin.version} is also installed at "
                f"{other}; keeping the first"
            )
            return
        versions[plugin.version] = plugin

    def resolve(self, name: str, version: str | None = None) -> Plugin:
        """The pinned version, or the highest installed one."""
        versions = self.plugins.get(name)
        if not versions:
            raise PluginError(f"plugin {name!r} is not installed on this node")
        if version is None:
            return versions[max(versions, key=version_key)]
        if version not in versions:
            have = ", ".join(sorted(versions, key=version_key))
            raise PluginError(f"plugin {name!r} has no version {version} here (installed: {have})")
        return versions[version]

    def available(self) -> dict[str, list[str]]:
        """Plugin name -> installed versions, for the claim filter and membership."""
        return {
            name: sorted(versions, key=version_key)
            for name, versions in sorted(self.plugins.items())
        }
