"""Configuration loading (``taskman.config``)."""

from taskman.config.node_config import NodeConfig, load_config

__all__ = ["NodeConfig", "load_config"]
