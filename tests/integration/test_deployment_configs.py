"""The shipped example configs: node per datacenter, supervisor and systemd. Parsed, then run."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from taskman.config import load_config
from taskman.lab import ZooKeeperEnsemble
from taskman.lab.nodes import write_config
from taskman.plugins import EXAMPLES_DIR
from tests.integration.cluster_support import ZK_AUTH

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
# The examples read secrets from /etc/taskman files; the environment replaces them.
SECRETS = {
    "TASKMAN_DSN": "mysql://taskman:pw@galera.dc1.internal:3306/taskman",
    "TASKMAN_ZOOKEEPER_AUTH": "taskman:zk-pw",
}


@pytest.mark.parametrize("name", ["dc1", "dc2", "dc3"])
def test_datacenter_configs_load(name: str) -> None:
    config = load_config(EXAMPLES / f"{name}.toml", env=SECRETS)
    assert config.datacenter == name and config.node_id == f"{name}-node1"
    assert len(config.zookeeper.split(",")) == 3
    assert config.zookeeper_auth == SECRETS["TASKMAN_ZOOKEEPER_AUTH"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(EXAMPLES / "systemd" / "taskman-node.service")
    return parser


def _program() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(EXAMPLES / "supervisor" / "taskman-node.conf")
    return parser["program:taskman-node"]


def test_systemd_unit_and_supervisor_program_stop_by_draining() -> None:
    unit = _unit()["Service"]
    program = _program()
    drain = load_config(EXAMPLES / "dc1.toml", env=SECRETS).drain_timeout
    assert unit["KillSignal"] == "SIGTERM" and program["stopsignal"] == "TERM"
    assert int(unit["TimeoutStopSec"]) > drain and int(program["stopwaitsecs"]) > drain
    assert shlex.split(unit["ExecStart"])[1:3] == ["node", "--config"]
    assert shlex.split(program["command"])[1:3] == ["node", "--config"]


@pytest.mark.parametrize("source", ["systemd", "supervisor"])
def test_the_service_command_starts_a_node_and_stops_on_its_signal(
    source: str, dsn: str, zookeeper: ZooKeeperEnsemble, tmp_path: Path
) -> None:
    if source == "systemd":
        unit = _unit()["Service"]
        argv, stop, budget = (
            shlex.split(unit["ExecStart"]),
            unit["KillSignal"],
            unit["TimeoutStopSec"],
        )
    else:
        program = _program()
        argv = shlex.split(program["command"])
        stop, budget = "SIG" + program["stopsignal"], program["stopwaitsecs"]
    config = write_config(
        tmp_path / "node.toml",
        {
            "node_id": f"svc-{source}",
            "datacenter": "dc1",
            "dsn": dsn,
            "zookeeper": zookeeper.hosts,
            "plugin_dirs": [str(EXAMPLES_DIR)],
            "cluster": f"svc{source}",
            "log_format": "json",
            "zookeeper_auth": ZK_AUTH,
        },
    )
    # The same command line, with this checkout's taskman and a test config.
    command = [sys.executable, "-m", "taskman", *argv[1:-1], str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if '"node.started"' in line:
                break
        else:
            pytest.fail(f"the {source} command never started a node")
        process.send_signal(getattr(signal, stop))
        assert process.wait(timeout=int(budget)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
