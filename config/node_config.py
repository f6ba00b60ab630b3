"""A node's configuration: TOML with ``TASKMAN_*`` environment overrides, in a frozen dataclass.

Unknown keys are an error that names the key and the file; so are missing
required keys and values of the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskman.dsn import parse_dsn
from taskman.errors import ConfigError
from taskman.validation import DATACENTER

ENV_PREFIX = "TASKMAN_"
MAX_IDLE_POLL = 300.0  # seconds: the longest a node may go without looking at an idle queue


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    datacenter: str
    dsn: str = field(repr=False)  # holds a password
    zookeeper: str  # the ensemble, "host:port,host:port"
    plugin_dirs: tuple[Path, ...]
    # "user:password" for ZooKeeper digest auth; the cluster's znodes get an ACL for
    # that identity only. Without it the node refuses to start unless insecure = true.
    zookeeper_auth: str | None = field(default=None, repr=False)
    insecure: bool = False
    zookeeper_ca: str | None = None  # TLS to the ensemble's secure client port: CA file
    zookeeper_certfile: str | None = None  # client certificate, if the ensemble wants one
    zookeeper_keyfile: str | None = None
    slots: int = 4  # concurrent runners
    session_timeout: float = 6.0  # ZooKeeper session, seconds
    heartbeat_interval: float = 1.0  # database heartbeat of each running attempt
    # How often a node looks for work while there is work (and when idle without armed
    # wake-ups): one cheap index read, so often that an idle cluster whose submitters do
    # not signal starts a task within about 50 ms (bench: median 32-39 ms at 0.05 s).
    poll_interval: float = 0.05
    # How often an idle node looks while wake-ups reach it (docs/architecture.md, "Waking
    # idle nodes"): submits that signal through ZooKeeper wake it at once, so it need not
    # read the database 20 times a second. Unset: poll_interval (every submitter is heard).
    idle_poll_interval: float | None = None
    cluster: str = "default"  # ZooKeeper namespace: several clusters may share an ensemble
    heartbeat_timeout: float = 15.0  # the leader reclaims attempts silent for this long
    max_reclaims: int = 5  # a task whose owner died this often fails (a node-killing task)
    unrunnable_grace: float = 300.0  # fail queued tasks no live node could run for this long
    kill_grace: float = 5.0  # SIGTERM, then SIGKILL after this long (abort, timeout)
    retry_backoff: float = 1.0  # seconds before the first retry, for tasks that set none
    retry_backoff_max: float = 300.0  # cap of the exponential retry backoff
    log_level: str = "info"
    log_format: str = "auto"  # auto (json unless on a terminal), json or console
    retention_succeeded: float = 7 * 86400.0  # the leader prunes finished tasks after these
    retention_failed: float = 30 * 86400.0  # ages, in seconds; 0 keeps them forever
    retention_aborted: float = 30 * 86400.0
    retention_expired: float = 30 * 86400.0
    prune_batch: int = 1000  # rows per DELETE: small, so no batch holds locks for long
    metrics_address: str | None = None  # "host:port" for /metrics, /healthz, /readyz
    # "host:port" (UDP) where Clients' wake datagrams reach this node, published in
    # ZooKeeper; port 0 picks a free one. Unset: only ZooKeeper bumps wake it.
    wake_address: str | None = None
    drain_timeout: float = 30.0  # on SIGTERM or `taskman node drain`: let attempts finish

    # The self-fencing budget, in fractions of the session timeout S. ZooKeeper can
    # expire a session one tick (0.5 s) before S after it last heard from the node,
    # and no earlier: a quorum must commit the expiry, and a newly elected leader
    # restarts every session's full timeout. Every runner must be dead by S - 0.5.
    # A runner last pinged at ping_cutoff dies within runner_watchdog (+ a quarter
    # of it, its check period): 0.55 + 0.2 + 0.05 = 0.80 S. The node itself SIGKILLs
    # at 0.8 S. (For S under 4 s both are clipped to keep 0.1 s before S - 0.5.)
    # Before any of that, at 0.2 S, the node makes kazoo try another server.
    # Why these values: cutting off the datacenter of the ZooKeeper leader leaves
    # the majority without a serving ensemble while its followers notice and elect
    # (docs/architecture.md, "Surviving the loss of the ZooKeeper leader"); nodes
    # there must ride that out, so their runners must live through 0.75 S of silence.

    @property
    def idle_poll(self) -> float:
        """How often an idle node whose wake-ups are armed reads the queue."""
        return self.poll_interval if self.idle_poll_interval is None else self.idle_poll_interval

    @property
    def zookeeper_failover_after(self) -> float:
        """No confirmed round trip for this long: drop the connection, try another server."""
        return 0.2 * self.session_timeout

    @property
    def ping_cutoff(self) -> float:
        """The node pings its runners only while ZooKeeper answered within this long."""
        return min(0.55 * self.session_timeout, 0.75 * self.session_timeout - 0.65)

    @property
    def runner_watchdog(self) -> float:
        """A runner that hears nothing from its node for this long kills itself.

        A node frozen by SIGSTOP cannot kill anything; its runners notice the
        silence and die before ZooKeeper expires its session.
        """
        return 0.2 * self.session_timeout

    @property
    def self_fence_after(self) -> float:
        """With no confirmed ZooKeeper contact for this long, the node kills its runners."""
        return min(0.8 * self.session_timeout, self.session_timeout - 0.65)

    # The database budget, in fractions of heartbeat_timeout. The leader reclaims an
    # attempt whose heartbeat value it has seen unchanged for heartbeat_timeout on
    # its own clock, and it can only have first seen a value after the node wrote
    # it: a node that kills its runners less than heartbeat_timeout after its last
    # accepted heartbeat is always first. It kills them from the guard thread,
    # whatever its main loop is blocked in, at database_fence_after: late enough
    # that a Galera reconfiguration stall (3.6-4.4 s in the lab, whose
    # heartbeat_timeout is 6 s) fences nobody, early enough to keep a margin.

    @property
    def database_deadline(self) -> float:
        """The longest one database call of the node (retries included) may take."""
        return min(30.0, self.heartbeat_timeout / 4)

    @property
    def database_fence_after(self) -> float:
        """No heartbeat accepted for this long: the node kills its runners."""
        return 0.85 * self.heartbeat_timeout

    @property
    def leader_resign_after(self) -> float:
        """A leader with no completed pass for this long gives the office up."""
        return self.heartbeat_timeout

    def redacted(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dsn"] = self.dsn if self.dsn.startswith("sqlite:") else parse_dsn(self.dsn).redacted()
        if self.zookeeper_auth:
            data["zookeeper_auth"] = self.zookeeper_auth.split(":", 1)[0] + ":***"
        data["plugin_dirs"] = [str(p) for p in self.plugin_dirs]
        return data


FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
# Secrets may come from a file instead: `dsn_file = "/etc/taskman/dsn"` (or TASKMAN_DSN_FILE).
SECRET_FILES = {"dsn_file": "dsn", "zookeeper_auth_file": "zookeeper_auth"}
REQUIRED = [name for name, f in FIELDS.items() if f.default is dataclasses.MISSING]


def load_config(
    path: str | Path | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> NodeConfig:
    """Read ``path`` (optional), then apply ``TASKMAN_<KEY>`` variables, then ``overrides``."""
    env = os.environ if env is None else env
    source = str(path) if path else "<environment>"
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such configuration file") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
        base = file.resolve().parent
        for key in data:
            if key not in FIELDS and key not in SECRET_FILES:
                raise ConfigError(f"{file}: unknown key {key!r}")
        for key, target in SECRET_FILES.items():
            if key in data and target in data:
                raise ConfigError(f"{file}: give {target!r} or {key!r}, not both")
    later = {ENV_PREFIX + name.upper(): name for name in (*FIELDS, *SECRET_FILES)}
    layered = [(name, env[var]) for var, name in later.items() if var in env]
    layered += [(k, v) for k, v in overrides.items() if v is not None]
    for name, value in layered:
        # A secret given later replaces the earlier one, whichever form either took.
        for key, target in SECRET_FILES.items():
            if name == target:
                data.pop(key, None)
            elif name == key:
                data.pop(target, None)
        data[name] = value
    for key in data:
        if key not in FIELDS and key not in SECRET_FILES:
            raise ConfigError(f"{source}: unknown key {key!r}")
    for key, target in SECRET_FILES.items():
        if key in data:
            data[target] = _read_secret(str(data.pop(key)), key, source, base)
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        raise ConfigError(f"{source}: missing required key {missing[0]!r}")
    values = {name: _coerce(name, value, source, base) for name, value in data.items()}
    config = NodeConfig(**values)
    _check(config, source)
    return config


def _read_secret(path: str, key: str, source: str, base: Path) -> str:
    file = base / path
    try:
        secret = file.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{source}: {key!r}: cannot read {file}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{source}: {key!r}: {file} is empty")
    return secret


def _coerce(name: str, value: Any, source: str, base: Path) -> Any:  # noqa: PLR0911 - one per kind
    kind = FIELDS[name].type
    try:
        if name == "plugin_dirs":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(
                isinstance(i, str | Path) for i in items
            ):
                raise TypeError("a list of directories")
            return tuple(
                (base / str(item).strip()).resolve() for item in items if str(item).strip()
            )
        if name == "zookeeper" and isinstance(value, list):
            return ",".join(str(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise TypeError("true or false")
        if kind == "int":
            if isinstance(value, bool) or (not isinstance(value, int) and not str(value).isdigit()):
                raise TypeError("an integer")
            return int(value)
        if kind in ("float", "float | None"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError("a number")
            try:
                number = float(value)
            except ValueError:
                raise TypeError("a number") from None
            if not math.isfinite(number):
                raise ValueError("a finite number")
            return number
        if not isinstance(value, str):
            raise TypeError("a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name!r} must be {exc}, got {value!r}") from None


def _check(config: NodeConfig, source: str) -> None:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    if not config.node_id or not DATACENTER.match(config.node_id):
        raise fail(f"'node_id' must be letters, digits, _ . - (got {config.node_id!r})")
    if not DATACENTER.match(config.datacenter):
        raise fail(f"'datacenter' must be letters, digits, _ . - (got {config.datacenter!r})")
    if not DATACENTER.match(config.cluster):
        raise fail(f"'cluster' must be letters, digits, _ . - (got {config.cluster!r})")
    if not config.dsn.startswith("sqlite:"):  # the embedded mode's database
        try:
            parse_dsn(config.dsn)
        except ConfigError as exc:
            raise fail(f"'dsn': {exc}") from None
    if not config.zookeeper or any(":" not in h for h in config.zookeeper.split(",")):
        raise fail("'zookeeper' must list host:port pairs, e.g. \"10.0.0.1:2181,10.0.0.2:2181\"")
    if config.zookeeper_auth is not None and ":" not in config.zookeeper_auth:
        raise fail("'zookeeper_auth' must be user:password")
    if config.zookeeper_auth is None and not config.insecure:
        raise fail(
            "no 'zookeeper_auth': the cluster's znodes would be open to every client of the "
            'ensemble. Set zookeeper_auth = "user:password" (or zookeeper_auth_file), or '
            "insecure = true for a throwaway cluster"
        )
    if not config.plugin_dirs:
        raise fail("'plugin_dirs' must name at least one directory")
    if config.slots < 1:
        raise fail("'slots' must be at least 1")
    if not 3.0 <= config.session_timeout <= 60.0:
        # Below 3 s the self-fencing budget (0.8 of it) leaves no margin before expiry.
        raise fail("'session_timeout' must be between 3 and 60 seconds")
    for name in ("heartbeat_interval", "poll_interval", "kill_grace"):
        if getattr(config, name) <= 0:
            raise fail(f"{name!r} must be positive")
    _check_idle_poll(config, source)
    _check_wake_address(config, source)
    if config.heartbeat_interval >= config.session_timeout / 2:
        raise fail("'heartbeat_interval' must be under half of 'session_timeout'")
    if config.heartbeat_timeout < 3 * config.heartbeat_interval:
        raise fail("'heartbeat_timeout' must be at least 3 heartbeat intervals")
    if config.max_reclaims < 0:
        raise fail("'max_reclaims' must not be negative")
    if config.unrunnable_grace < 0 or config.retry_backoff_max < 0:
        raise fail("'unrunnable_grace' and 'retry_backoff_max' must not be negative")
    if config.metrics_address is not None:
        host, _, port = config.metrics_address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise fail(f"'metrics_address' must be host:port, got {config.metrics_address!r}")
    for state in ("succeeded", "failed", "aborted", "expired"):
        if getattr(config, f"retention_{state}") < 0:
            raise fail(f"'retention_{state}' must not be negative (0 keeps tasks forever)")
    if not 1 <= config.prune_batch <= 100_000:
        raise fail("'prune_batch' must be between 1 and 100000")
    if config.drain_timeout < 0:
        raise fail("'drain_timeout' must not be negative")
    if config.log_format not in ("auto", "json", "console"):
        raise fail("'log_format' must be auto, json or console")


# Not addresses a Client can send to: a node publishes its wake_address as it is.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})  # noqa: S104 - refused, not bound


def split_wake_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ConfigError if it is neither,
    or if the host is a wildcard (Clients send to it: it must name this node)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or host in WILDCARD_HOSTS:
        raise ConfigError(
            f"'wake_address' must be host:port, the address Clients reach this node at "
            f"(not a wildcard), got {address!r}"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_wake_address(config: NodeConfig, source: str) -> None:
    if config.wake_address is not None:
        try:
            split_wake_address(config.wake_address)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _check_idle_poll(config: NodeConfig, source: str) -> None:
    idle = config.idle_poll_interval
    if idle is not None and not config.poll_interval <= idle <= MAX_IDLE_POLL:
        raise ConfigError(
            f"{source}: 'idle_poll_interval' must be between 'poll_interval' "
            f"({config.poll_interval:g} s) and {MAX_IDLE_POLL:g} s, got {idle:g}: a task "
            "whose wake-up was lost waits this long at most"
        )
