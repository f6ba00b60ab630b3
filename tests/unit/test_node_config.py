"""taskman.config.load_config: TOML, TASKMAN_* overrides, and every check on the result."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import taskman.config
from taskman.config import NodeConfig, load_config
from taskman.errors import ConfigError

PASSWORD = "s3cr3t-Pa55"
ZK_PASSWORD = "zk-s3cr3t"
DSN = f"mysql://taskman:{PASSWORD}@db.example:3307/taskman"

VALID = f"""
node_id = "dc1-node1"
datacenter = "dc1"
dsn = "{DSN}"
zookeeper = "zk1:2181,zk2:2181"
zookeeper_auth = "taskman:{ZK_PASSWORD}"
plugin_dirs = ["plugins", "/srv/taskman/plugins"]
"""


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def load(
    tmp_path: Path, extra: str = "", env: dict[str, str] | None = None, **overrides: Any
) -> NodeConfig:
    return load_config(write(tmp_path, VALID + extra), env={} if env is None else env, **overrides)


def required_only(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node_id": "n1",
        "datacenter": "dc1",
        "dsn": DSN,
        "zookeeper": "zk:2181",
        "zookeeper_auth": f"taskman:{ZK_PASSWORD}",
        "plugin_dirs": ["/srv/plugins"],
    }
    base.update(values)
    return base


# -- the file ------------------------------------------------------------------------------


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.node_id == "dc1-node1"
    assert config.datacenter == "dc1"
    assert config.dsn == DSN
    assert config.zookeeper == "zk1:2181,zk2:2181"
    assert config.plugin_dirs == (tmp_path.resolve() / "plugins", Path("/srv/taskman/plugins"))
    assert config.slots == 4
    assert config.session_timeout == 6.0
    assert config.heartbeat_interval == 1.0
    assert config.cluster == "default"
    assert config.log_format == "auto"


def test_relative_plugin_dirs_in_the_file_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(conf_dir)
    assert config.plugin_dirs[0] == conf_dir.resolve() / "plugins"


def test_zookeeper_may_be_a_list(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, VALID.replace('"zk1:2181,zk2:2181"', '["zk1:2181", "zk2:2181"]')), env={}
    )
    assert config.zookeeper == "zk1:2181,zk2:2181"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "slot = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'slot'") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_unknown_override_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    with pytest.raises(ConfigError, match="unknown key 'bogus'") as info:
        load_config(path, env={}, bogus=1)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["node_id", "datacenter", "dsn", "zookeeper", "plugin_dirs"])
def test_missing_required_key_is_named(tmp_path: Path, key: str) -> None:
    text = "\n".join(line for line in VALID.splitlines() if not line.startswith(f"{key} ="))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"missing required key '{key}'") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such configuration file") as info:
        load_config(missing, env={})
    assert str(missing) in str(info.value)


def test_toml_syntax_error_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "slots = = 3\n")
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("slots = 'x'", "slots", "an integer"),
        ("slots = 2.5", "slots", "an integer"),
        ("slots = true", "slots", "an integer"),
        ("session_timeout = true", "session_timeout", "a number"),
        ("session_timeout = 'soon'", "session_timeout", "a number"),
        ("kill_grace = [1]", "kill_grace", "a number"),
        ("log_level = 3", "log_level", "a string"),
        ("cluster = ['a']", "cluster", "a string"),
    ],
)
def test_wrong_type_is_named(tmp_path: Path, line: str, key: str, expected: str) -> None:
    path = write(tmp_path, VALID + line + "\n")
    with pytest.raises(ConfigError, match=f"'{key}' must be") as info:
        load_config(path, env={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_plugin_dirs_as_one_string_is_a_comma_separated_list(tmp_path: Path) -> None:
    text = VALID.replace('["plugins", "/srv/taskman/plugins"]', "'plugins,more'")
    config = load_config(write(tmp_path, text), env={})
    assert config.plugin_dirs == (tmp_path.resolve() / "plugins", tmp_path.resolve() / "more")


@pytest.mark.parametrize("value", ["[1, 2]", "42", "{ a = 'b' }"])
def test_plugin_dirs_of_the_wrong_type_are_rejected(tmp_path: Path, value: str) -> None:
    text = VALID.replace('["plugins", "/srv/taskman/plugins"]', value)
    with pytest.raises(ConfigError, match="'plugin_dirs' must be a list of directories"):
        load_config(write(tmp_path, text), env={})


def test_empty_plugin_dirs_are_rejected(tmp_path: Path) -> None:
    text = VALID.replace('["plugins", "/srv/taskman/plugins"]', "[]")
    with pytest.raises(ConfigError, match="'plugin_dirs' must name at least one directory"):
        load_config(write(tmp_path, text), env={})


# -- environment and overrides -------------------------------------------------------------


def test_env_overrides_the_file_and_is_coerced(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        env={
            "TASKMAN_SLOTS": "7",
            "TASKMAN_SESSION_TIMEOUT": "10",
            "TASKMAN_CLUSTER": "blue",
            "TASKMAN_UNRELATED": "ignored",
        },
    )
    assert config.slots == 7
    assert config.session_timeout == 10.0
    assert isinstance(config.session_timeout, float)
    assert config.cluster == "blue"


def test_env_slots_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'slots' must be an integer, got 'seven'"):
        load(tmp_path, env={"TASKMAN_SLOTS": "seven"})


def test_env_plugin_dirs_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = load(conf_dir, env={"TASKMAN_PLUGIN_DIRS": "a, b ,,/abs"})
    assert config.plugin_dirs == (conf_dir.resolve() / "a", conf_dir.resolve() / "b", Path("/abs"))


def test_without_a_file_plugin_dirs_resolve_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "TASKMAN_NODE_ID": "n1",
        "TASKMAN_DATACENTER": "dc1",
        "TASKMAN_DSN": DSN,
        "TASKMAN_ZOOKEEPER": "zk:2181",
        "TASKMAN_INSECURE": "true",
        "TASKMAN_PLUGIN_DIRS": "a,b",
    }
    config = load_config(None, env=env)
    assert config.plugin_dirs == (tmp_path.resolve() / "a", tmp_path.resolve() / "b")


def test_without_a_file_errors_name_the_environment() -> None:
    with pytest.raises(ConfigError, match="<environment>: missing required key 'node_id'"):
        load_config(None, env={})


def test_keyword_overrides_win_over_env_and_none_is_ignored(tmp_path: Path) -> None:
    config = load(tmp_path, env={"TASKMAN_SLOTS": "7"}, slots=9, cluster=None)
    assert config.slots == 9
    assert config.cluster == "default"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMAN_SLOTS", "11")
    config = load_config(write(tmp_path, VALID))
    assert config.slots == 11


# -- secrets -------------------------------------------------------------------------------


def test_repr_does_not_show_the_dsn(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert PASSWORD not in repr(config)
    assert "dsn" not in repr(config)
    assert "dc1-node1" in repr(config)


def test_redacted_hides_the_password(tmp_path: Path) -> None:
    config = load(tmp_path)
    data = config.redacted()
    assert PASSWORD not in str(data)
    assert data["dsn"] == "mysql://taskman:***@db.example:3307/taskman"
    assert data["plugin_dirs"] == [str(p) for p in config.plugin_dirs]
    assert data["slots"] == 4
    assert set(data) == {f.name for f in dataclasses.fields(NodeConfig)}


def test_bad_dsn_error_does_not_repeat_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'dsn'") as info:
        load(tmp_path, dsn=f"postgres://u:{PASSWORD}@h/db")
    assert PASSWORD not in str(info.value)
    assert "unsupported DSN scheme" in str(info.value)


# -- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"slots": 0}, "'slots' must be at least 1"),
        ({"session_timeout": 2.9}, "'session_timeout' must be between 3 and 60 seconds"),
        ({"session_timeout": 61}, "'session_timeout' must be between 3 and 60 seconds"),
        (
            {"heartbeat_interval": 3.0},
            "'heartbeat_interval' must be under half of 'session_timeout'",
        ),
        (
            {"session_timeout": 10, "heartbeat_interval": 6},
            "'heartbeat_interval' must be under half of 'session_timeout'",
        ),
        ({"heartbeat_interval": 0}, "'heartbeat_interval' must be positive"),
        ({"poll_interval": -1}, "'poll_interval' must be positive"),
        ({"kill_grace": 0}, "'kill_grace' must be positive"),
        ({"heartbeat_timeout": 2.9}, "'heartbeat_timeout' must be at least 3 heartbeat intervals"),
        ({"log_format": "xml"}, "'log_format' must be auto, json or console"),
        ({"node_id": "bad id"}, "'node_id' must be letters, digits"),
        ({"node_id": ""}, "'node_id' must be letters, digits"),
        ({"datacenter": "-dc"}, "'datacenter' must be letters, digits"),
        ({"cluster": "a/b"}, "'cluster' must be letters, digits"),
        ({"zookeeper": "zk1"}, "'zookeeper' must list host:port pairs"),
        ({"zookeeper": "zk1:2181,zk2"}, "'zookeeper' must list host:port pairs"),
        ({"dsn": "mysql://u:p@h/"}, "'dsn': the DSN names no database"),
    ],
)
def test_out_of_bounds_values_are_rejected(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        load(tmp_path, **overrides)
    assert str(tmp_path / "node.toml") in str(info.value)


@pytest.mark.parametrize(
    "key",
    ["heartbeat_interval", "poll_interval", "kill_grace", "heartbeat_timeout", "session_timeout"],
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_seconds_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    # TOML has nan and inf literals, and float() accepts them from the environment.
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        load(tmp_path, extra=f"{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        load(tmp_path, env={f"TASKMAN_{key.upper()}": value})


def test_smallest_valid_timings_are_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, session_timeout=3.0, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    assert config.session_timeout == 3.0


# -- derived timings -----------------------------------------------------------------------


def test_derived_timings_for_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.zookeeper_failover_after == pytest.approx(1.2)
    assert config.ping_cutoff == pytest.approx(3.3)
    assert config.runner_watchdog == pytest.approx(1.2)
    assert config.self_fence_after == pytest.approx(4.8)


@pytest.mark.parametrize("session_timeout", [3.0, 4.0, 6.0, 10.0, 30.0, 60.0])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.2, 0.3, 0.34, 0.4, 0.49])
def test_every_runner_is_dead_before_the_session_can_expire(
    tmp_path: Path, session_timeout: float, fraction: float
) -> None:
    """For every accepted config: runners and the node give up before ZooKeeper may expire
    the session (one 0.5 s tick early at worst), whatever the heartbeat interval."""
    interval = session_timeout * fraction
    config = load(
        tmp_path,
        session_timeout=session_timeout,
        heartbeat_interval=interval,
        heartbeat_timeout=max(15.0, 3 * interval),
    )
    earliest_expiry = session_timeout - 0.5
    # The last ping goes out at ping_cutoff; the runner checks every quarter watchdog.
    runner_dead_by = config.ping_cutoff + 1.25 * config.runner_watchdog + 0.1
    assert runner_dead_by < earliest_expiry
    assert config.self_fence_after < earliest_expiry
    assert config.zookeeper_failover_after < config.ping_cutoff < config.self_fence_after


def test_shipped_example_config_loads() -> None:
    example = Path(taskman.config.__file__).resolve().parent / "examples" / "node.toml"
    config = load_config(example, env={})
    assert config.node_id == "dc1-node1"
    assert config.plugin_dirs == (Path("/srv/taskman/plugins"),)


# -- ZooKeeper auth and secret files ---------------------------------------------------------


def test_no_zookeeper_auth_is_refused_unless_insecure(tmp_path: Path) -> None:
    text = VALID.replace(f'zookeeper_auth = "taskman:{ZK_PASSWORD}"\n', "")
    with pytest.raises(ConfigError, match=r"no 'zookeeper_auth'.*insecure = true"):
        load_config(write(tmp_path, text), env={})
    config = load_config(write(tmp_path, text + "insecure = true\n"), env={})
    assert config.insecure is True and config.zookeeper_auth is None


def test_zookeeper_auth_must_be_user_and_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'zookeeper_auth' must be user:password"):
        load(tmp_path, zookeeper_auth="nocolon")


def test_secrets_can_come_from_files_and_never_show_in_repr(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text(DSN + "\n")
    (tmp_path / "zk").write_text(f"taskman:{ZK_PASSWORD}\n")
    text = "\n".join(
        line for line in VALID.splitlines() if not line.startswith(("dsn", "zookeeper_auth"))
    )
    config = load_config(
        write(tmp_path, text + '\ndsn_file = "dsn"\nzookeeper_auth_file = "zk"\n'), env={}
    )
    assert config.dsn == DSN and config.zookeeper_auth == f"taskman:{ZK_PASSWORD}"
    shown = repr(config) + str(config.redacted())
    assert PASSWORD not in shown and ZK_PASSWORD not in shown


def test_secret_file_from_the_environment_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text(DSN)
    config = load(tmp_path, env={"TASKMAN_DSN_FILE": str(tmp_path / "dsn")})
    assert config.dsn == DSN
    with pytest.raises(ConfigError, match="'dsn_file': cannot read"):
        load(tmp_path, env={"TASKMAN_DSN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load(tmp_path, env={"TASKMAN_DSN_FILE": str(tmp_path / "empty")})


@pytest.mark.parametrize("address", ["0.0.0.0:7077", "[::]:7077", ":7077", "*:1", "n1", "h:x"])
def test_a_wake_address_clients_cannot_reach_is_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="'wake_address' must be host:port"):
        load(tmp_path, f'wake_address = "{address}"\n')


def test_a_wake_address_is_kept_as_given(tmp_path: Path) -> None:
    assert load(tmp_path, 'wake_address = "10.0.0.5:7077"\n').wake_address == "10.0.0.5:7077"
    assert load(tmp_path).wake_address is None
