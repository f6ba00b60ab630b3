"""The node's ZooKeeper session: connect, and know at every moment whether it is still ours.

kazoo reports SUSPENDED late (after about two thirds of the session timeout) and
LOST only after reconnecting, so the node does not rely on state events alone:
a probe thread confirms contact with the ensemble's leader (a sync) several times
a second, and ``last_ok`` is the last moment a round trip succeeded. No contact for half the
session timeout means the session may be gone: the node fences itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoAuthError, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.protocol.connection import _CONNECTION_DROP
from kazoo.protocol.serialization import Connect
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id, Permissions, make_digest_acl

from taskman.cluster.layout import ClusterPaths
from taskman.errors import CoordinationError

log = structlog.get_logger("taskman.cluster")
ZK_TIMEOUT = 5.0  # seconds for one ZooKeeper call; calls never block forever


@dataclass(frozen=True)
class ZkSecurity:
    """Who the node is to ZooKeeper, and how it reaches it."""

    auth: str | None = field(default=None, repr=False)  # "user:password" (digest)
    ca: str | None = None  # TLS: the CA that signed the ensemble's certificates
    certfile: str | None = None
    keyfile: str | None = None

    def acl(self) -> list[ACL]:
        """The ACL every znode of the cluster gets: all rights for our identity only."""
        if self.auth is None:
            return list(OPEN_ACL_UNSAFE)
        user, _, password = self.auth.partition(":")
        return [make_digest_acl(user, password, all=True)]


def zk_security(config: Any) -> ZkSecurity:
    """The ZooKeeper identity and TLS settings of a NodeConfig."""
    return ZkSecurity(
        auth=config.zookeeper_auth,
        ca=config.zookeeper_ca,
        certfile=config.zookeeper_certfile,
        keyfile=config.zookeeper_keyfile,
    )


def connect(
    hosts: str,
    session_timeout: float,
    *,
    security: ZkSecurity | None = None,
    start_timeout: float = 15.0,
) -> KazooClient:
    security = security or ZkSecurity()
    tls: dict[str, Any] = {}
    if security.ca:
        tls = {
            "use_ssl": True,
            "verify_certs": True,
            "ca": security.ca,
            "certfile": security.certfile,
            "keyfile": security.keyfile,
        }
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        handler=_QuickConnectHandler(min(2.0, max(0.5, session_timeout / 8))),
        # Reconnect attempts at most 0.25 s apart: after an election the node is back
        # within a quarter second of the new leader serving, not a second later.
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=0.25),
        command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0, deadline=ZK_TIMEOUT),
        auth_data=[("digest", security.auth)] if security.auth else None,
        default_acl=security.acl(),
        **tls,
    )
    _record_negotiated_timeout(client)
    try:
        client.start(timeout=start_timeout)
    except (KazooTimeoutError, KazooException) as exc:
        client.stop()
        client.close()
        raise CoordinationError(f"cannot reach ZooKeeper at {hosts}: {exc}") from None
    return client


class _QuickConnectHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's handler with a short TCP connect timeout.

    kazoo gives each connect attempt the whole session timeout. When the datacenter
    of one server is cut off, packets to it vanish, and a reconnect that happens to
    pick it hangs for the whole session while the other servers could have taken
    the session back at once: in the lab this kept the majority's nodes off
    ZooKeeper 3.6 s longer than the ensemble's own election.
    """

    def __init__(self, connect_timeout: float) -> None:
        super().__init__()
        self.connect_timeout = connect_timeout

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout")
        kwargs["timeout"] = (
            self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        )
        return super().create_connection(*args, **kwargs)


def _record_negotiated_timeout(client: KazooClient) -> None:
    """Keep the session timeout the server granted as ``client.negotiated_timeout`` (s).

    The server clamps the requested timeout to [minSessionTimeout, maxSessionTimeout];
    kazoo only logs the result. Every self-fencing budget is a fraction of the
    session, so the node must know the real one (it refuses to run on a shorter one).
    """
    connection = client._connection
    invoke = connection._invoke

    def recording_invoke(timeout: float, request: Any, xid: int | None = None) -> Any:
        result = invoke(timeout, request, xid)
        if isinstance(request, Connect) and result and getattr(result[0], "time_out", 0) > 0:
            client.negotiated_timeout = result[0].time_out / 1000.0
        return result

    client.negotiated_timeout = None
    connection._invoke = recording_invoke


def negotiated_timeout(client: KazooClient) -> float | None:
    """The session timeout the server granted, in seconds (None before a session)."""
    value = getattr(client, "negotiated_timeout", None)
    return float(value) if value is not None else None


def ensure_namespace(client: KazooClient, paths: ClusterPaths, *, insecure: bool) -> None:
    """Create the cluster's znodes, and refuse a namespace other clients could read or forge.

    ``/taskman`` itself is world-creatable (several clusters, each with its own
    identity, share an ensemble); ``/taskman/<cluster>`` and everything below it
    carry the cluster's ACL.
    """
    shared = [ACL(Permissions.READ | Permissions.CREATE, Id("world", "anyone"))]
    with contextlib.suppress(NodeExistsError):
        wait(client.create_async(paths.root, b"", acl=shared))
    try:
        wait(client.ensure_path_async(paths.base))
        acls, _ = wait(client.get_acls_async(paths.base))
        # Checked before anything is created below it: a refused node leaves no trace.
        if any(a.id.scheme == "world" for a in acls) and not insecure:
            raise CoordinationError(
                f"the ZooKeeper namespace {paths.base} is open to every client of the ensemble "
                "(world ACL), so anyone could forge claims or leadership. Set zookeeper_auth, "
                "or insecure = true for a throwaway cluster"
            )
        for path in paths.all():
            wait(client.ensure_path_async(path))
        wait(client.get_children_async(paths.nodes))  # reading proves our identity has rights
    except NoAuthError:
        raise CoordinationError(
            f"ZooKeeper refuses this node access to {paths.base}: it belongs to another "
            "identity. Check zookeeper_auth"
        ) from None


def read_token_base(client: KazooClient, paths: ClusterPaths) -> int:
    """What this cluster adds to every zxid it uses as a token (0 until a rebase)."""
    try:
        data, _ = wait(client.get_async(paths.token_base))
    except NoNodeError:
        return 0
    try:
        return int(data.decode() or 0)
    except ValueError:
        raise CoordinationError(f"{paths.token_base} holds {data!r}, not a number") from None


def fresh_zxid(client: KazooClient, paths: ClusterPaths) -> int:
    """A zxid the ensemble issues now (larger than every earlier one of this ensemble)."""
    path, stat = wait(
        client.create_async(
            f"{paths.sessions}/probe-", b"", ephemeral=True, sequence=True, include_data=True
        )
    )
    with contextlib.suppress(NoNodeError):
        wait(client.delete_async(path))
    return int(stat.czxid)


def wait(async_result: Any, timeout: float = ZK_TIMEOUT) -> Any:
    """Wait for a kazoo async call with a deadline (a sync call can block forever)."""
    try:
        return async_result.get(timeout=timeout)
    except KazooTimeoutError as exc:
        raise CoordinationError(f"ZooKeeper did not answer within {timeout} s") from exc


class SessionMonitor:
    """Tracks the last confirmed contact with ZooKeeper and the session's identity."""

    def __init__(self, client: KazooClient, probe_path: str, session_timeout: float) -> None:
        self.client = client
        self.probe_path = probe_path
        self.session_timeout = session_timeout
        self.interval = min(0.5, session_timeout / 10)
        self.failover_after = 0.2 * session_timeout
        self._last_failover = 0.0
        self.last_ok = time.monotonic()
        self.state: str = KazooState.CONNECTED
        self.session_id: int | None = self._session_id()
        self.lost = threading.Event()  # set when the session ended; the node clears it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="zk-probe", daemon=True)
        client.add_listener(self._on_state)

    def _session_id(self) -> int | None:
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's thread: record only, never block here.
        self.state = state
        if state == KazooState.LOST:
            self.lost.set()
        log.warning(f"node.session_{state.lower()}")

    def _probe(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                # A sync, not a read: the server forwards it to the quorum's leader.
                # A follower cut off from its leader still answers reads from its
                # stale view for syncLimit x tickTime while the quorum may already
                # be expiring this session; a sync it cannot answer.
                self.client.sync_async(self.probe_path).get(timeout=self.failover_after)
            except Exception:  # noqa: BLE001 - any failure means no confirmed contact
                self._maybe_fail_over()
            else:
                session = self._session_id()
                if session is not None and session != self.session_id:
                    # A new session: everything the old one held (claims, membership) is gone.
                    self.session_id = session
                    self.lost.set()
                self.last_ok = sent
            self._stop.wait(self.interval)

    def _maybe_fail_over(self) -> None:
        """Make kazoo leave a server that stopped answering, keeping the session.

        kazoo notices a dead server only after two thirds of the session timeout;
        by then the node would have fenced itself. Dropping the connection early
        makes it reconnect to another server of the ensemble with the same session
        (kazoo's own test harness uses the same hook to simulate a lost connection).
        """
        now = time.monotonic()
        if (
            self.silence() < self.failover_after
            or self.state != KazooState.CONNECTED
            or now - self._last_failover < self.session_timeout / 2
        ):
            return
        self._last_failover = now
        log.warning("node.zookeeper_failover", silent_for=round(self.silence(), 2))
        with contextlib.suppress(Exception):
            self.client._call(_CONNECTION_DROP, None)

    def silence(self) -> float:
        """Seconds since the last confirmed round trip."""
        return time.monotonic() - self.last_ok

    def healthy(self, within: float) -> bool:
        return (
            self.state == KazooState.CONNECTED
            and self.silence() < within
            and not self.lost.is_set()
        )
