"""Wake-ups: a task became due, so idle nodes should look now rather than at their next poll.

One znode per cluster, ``/taskman/<cluster>/wake``. Whoever makes work due
(a Client after its COMMIT, a node writing a retry, the leader reclaiming or
firing a schedule tick) sets its data; every node keeps a watch on it and
polls at once when it changes. A wake-up is a hint, never the only way work is
found: a node whose watch is not armed polls at ``poll_interval``, and one
whose watch is armed still polls every ``idle_poll_interval``.

Two pieces:

* ``Bumper`` sends bumps for whoever asks, from a thread of its own: the caller
  never waits and never sees an error (errors are counted). Requests coalesce:
  one write in flight at a time, ``min_gap`` apart, and a request made while a
  write is in flight gets a write of its own after it. So every request is
  followed by a write that *started* after it: a bump never lands before the
  commit it announces.
* ``WakeWatch`` keeps a node's watch armed. ZooKeeper watches fire once; the
  node is woken at once and the watch re-armed with ``exists``; the data version
  that call returns is compared with the one the firing announced, so a bump
  that lands between the firing and the re-arm wakes the node again. After a lost connection or session the
  watch is re-armed and the node woken (it may have missed bumps meanwhile).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry
from kazoo.security import ACL, Id, Permissions

from taskman import metrics
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.wake_datagrams import DatagramSender
from taskman.cluster.zk import ZK_TIMEOUT, ZkSecurity, wait
from taskman.errors import CoordinationError

MIN_GAP = 0.02  # seconds between two bumps of one sender: at most 50 writes/s under a flood
CLIENT_SESSION = 10.0  # the Client's ZooKeeper session: it holds nothing but a connection
# A bump waits (in the background) this long for a connection still coming up, then fails.
# Long: a Client's first submit often comes before its connection is up, and a dropped
# bump leaves the task to the nodes' idle poll.
CONNECT_WAIT = CLIENT_SESSION
# After a Client's datagrams, its bump waits this long: the datagrams' nodes claim first,
# and the bump still wakes, moments later, any node they did not reach.
DATAGRAM_HEAD_START = 0.025


def wake_acl(security: ZkSecurity) -> list[ACL]:
    """The cluster's ACL, plus: anyone may set the wake znode's data (not delete it, not its ACL).

    A bump carries no authority: the most a forged one does is make every node
    look at the queue once, which a node without wake-ups does every
    ``poll_interval`` anyway. So a Client needs no ZooKeeper identity to bump,
    and an application never holds credentials that could forge a claim.
    """
    anyone = ACL(Permissions.READ | Permissions.WRITE, Id("world", "anyone"))
    own = security.acl()
    return own if any(a.id.scheme == "world" for a in own) else [*own, anyone]


def readable_acl(security: ZkSecurity) -> list[ACL]:
    """The cluster's ACL, plus: anyone may read (the nodes' wake addresses: no secret)."""
    own = security.acl()
    anyone = ACL(Permissions.READ, Id("world", "anyone"))
    return own if any(a.id.scheme == "world" for a in own) else [*own, anyone]


def ensure_wake_node(client: KazooClient, paths: ClusterPaths, security: ZkSecurity) -> None:
    """Create the wake znode and the wake addresses' parent (a node does, at start; a
    Client never creates anything)."""
    with contextlib.suppress(NodeExistsError):
        wait(client.create_async(paths.wake, b"", acl=wake_acl(security)))
    with contextlib.suppress(NodeExistsError):
        wait(client.create_async(paths.wake_addresses, b"", acl=readable_acl(security)))


def publish_wake_address(
    client: KazooClient, paths: ClusterPaths, node_id: str, address: str, security: ZkSecurity
) -> None:
    """This session's wake address, ephemeral: it goes with the node."""
    path = paths.wake_address(node_id)
    try:
        wait(
            client.create_async(path, address.encode(), acl=readable_acl(security), ephemeral=True)
        )
    except NodeExistsError:
        wait(client.set_async(path, address.encode()))


@dataclass
class BumpStats:
    requested: int = 0
    sent: int = 0
    failed: int = 0


class Bumper:
    """Sends coalesced bumps through ``write`` from its own thread; ``bump`` never blocks."""

    def __init__(
        self, write: Callable[[], None], *, min_gap: float = MIN_GAP, name: str = "wake-bump"
    ) -> None:
        self._write = write
        self.min_gap = min_gap
        self.stats = BumpStats()
        self._name = name
        self._cond = threading.Condition()
        self._pending = False
        self._busy = False  # a write is under way
        self._closed = False
        self._thread: threading.Thread | None = None

    def bump(self) -> None:
        """Ask for a bump after this moment; returns at once."""
        with self._cond:
            if self._closed:
                return
            self.stats.requested += 1
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every bump asked for so far was tried."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, flush: float = 0.0) -> None:
        if flush > 0:
            self.flush(flush)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._pending, self._busy = False, True
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a bump is a hint: count, never raise (nor log:
                self.stats.failed += 1  # a Client runs inside applications that own their logs)
            else:
                self.stats.sent += 1
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                # Coalesce: whatever is asked for during the gap is one bump after it (a
                # request's notify must not end the gap early).
                gap_ends = time.monotonic() + self.min_gap
                while not self._closed and (left := gap_ends - time.monotonic()) > 0:
                    self._cond.wait(left)


class ClientWaker:
    """A Client's bumps: its own ZooKeeper connection, made in the background.

    A ZooKeeper that is down or slow never blocks the Client: the connection is
    tried from kazoo's thread, and a bump made while it is not up waits for it in
    the bumper's thread (up to ``CONNECT_WAIT``, or until the Client closes), then
    is counted as failed (the nodes' idle poll finds the task instead).
    """

    def __init__(self, hosts: str, cluster: str, *, min_gap: float = MIN_GAP) -> None:
        self.paths = ClusterPaths(cluster)
        self.path = self.paths.wake
        self._zk = KazooClient(
            hosts=hosts,
            timeout=CLIENT_SESSION,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=5.0),
            command_retry=KazooRetry(max_tries=1, delay=0.05, deadline=1.0),
        )
        # The nodes' wake addresses (wake_datagrams.py), read again when they change.
        self.datagrams = DatagramSender()
        self._zk.add_listener(self._on_state)
        self._zk.start_async()  # connects in kazoo's thread, retrying for ever
        self._bumper = Bumper(self._send, min_gap=min_gap, name="client-wake")
        self._closing = threading.Event()
        self._bump_not_before = 0.0

    @property
    def stats(self) -> BumpStats:
        return self._bumper.stats

    def bump(self) -> None:
        if self.datagrams.send():  # non-blocking sends, here: the fast hint goes first
            # The bump follows a little later: sent at once, its quorum write would queue
            # the woken node's claim multi behind it (ZooKeeper applies writes in order).
            self._bump_not_before = time.monotonic() + DATAGRAM_HEAD_START
        self._bumper.bump()

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:  # kazoo's connection thread: never block here
            self._zk.handler.spawn(self._read_addresses)

    def _read_addresses(self, _event: Any = None) -> None:
        """Every published wake address, watching for nodes that come and go."""

        def changed(event: Any) -> None:
            self._zk.handler.spawn(self._read_addresses)

        try:
            children = self._zk.get_children(self.paths.wake_addresses, watch=changed)
            addresses = []
            for child in children:
                with contextlib.suppress(NoNodeError):
                    data, _ = self._zk.get(self.paths.wake_address(child))
                    addresses.append(data.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - a hint: no nodes listening yet, or no connection
            return  # read again at the next connection
        self.datagrams.set_addresses(addresses)

    def _send(self) -> None:
        head_start = self._bump_not_before - time.monotonic()
        if head_start > 0:
            self._closing.wait(head_start)  # requests meanwhile join this bump
        if not self._zk.connected:
            # Just started, or reconnecting: wait for it (nobody waits on this thread),
            # unless the Client is closing; after that the idle poll finds the task.
            deadline = time.monotonic() + CONNECT_WAIT
            while not self._zk.connected and time.monotonic() < deadline:
                if self._closing.wait(0.02):
                    break
            if not self._zk.connected:
                raise CoordinationError("not connected to ZooKeeper")
        wait(self._zk.set_async(self.path, b""), timeout=ZK_TIMEOUT)

    def close(self, flush: float = 0.5) -> None:
        """Send what is pending (for up to ``flush`` s: a CLI exits right after), then hang up."""
        self._bumper.flush(flush)
        self._closing.set()  # a bump still waiting for the connection gives up now
        self._bumper.close()
        with contextlib.suppress(Exception):
            self._zk.stop()
            self._zk.close()
        self.datagrams.close()


class WakeWatch:
    """Keeps a watch on the wake znode; ``on_wake`` runs (on kazoo's thread) when it changes."""

    def __init__(self, client: KazooClient, path: str, on_wake: Callable[[], None]) -> None:
        self._client = client
        self._path = path
        self._on_wake = on_wake
        self._lock = threading.Lock()
        self._version: int | None = None
        self._armed = False
        self.woken = 0
        client.add_listener(self._on_state)
        self._arm()

    @property
    def armed(self) -> bool:
        """The watch is registered with the server this session, and nothing has dropped it."""
        return self._armed and self._client.state == KazooState.CONNECTED

    def _arm(self) -> None:
        try:
            result = self._client.exists_async(self._path, watch=self._on_event)
        except KazooException:
            self._armed = False
            return
        result.rawlink(self._armed_by)

    def _armed_by(self, result: Any) -> None:
        try:
            stat = result.get_nowait()
        except Exception:  # noqa: BLE001 - not armed: the node polls at poll_interval
            self._armed = False
            return
        version = None if stat is None else int(stat.version)
        with self._lock:
            changed = version != self._version
            self._version = version
            self._armed = stat is not None
        if changed:
            self._wake()

    def _on_event(self, event: Any) -> None:
        # Wake at once (a round trip sooner than after the re-arm), taking the bump
        # that fired the watch as the next version; the re-arm wakes the node again
        # only if it reads a later one (a bump between the firing and the re-arm).
        with self._lock:
            if self._version is not None:
                self._version += 1
        self._wake()
        self._arm()

    def _on_state(self, state: str) -> None:
        # kazoo's connection thread: record and hand off, never block here.
        if state != KazooState.CONNECTED:
            self._armed = False
            return
        with self._lock:
            self._version = None  # whatever it reads now wakes the node
        self._client.handler.spawn(self._arm)

    def _wake(self) -> None:
        self.woken += 1
        metrics.WAKEUPS.inc()
        self._on_wake()
