"""Datagram wake-ups: a UDP hint sent straight to the nodes, beside the ZooKeeper bump.

A bump through ZooKeeper is a quorum write: 4 to 7 ms on the lab's 2-core VM,
about half of an idle task's submit-to-start. A node with ``wake_address`` also
listens on that UDP address and publishes it (``wake-addresses/<node id>``, an
ephemeral znode anyone may read); a Client with ``zookeeper`` sends every
published address one datagram after each COMMIT, then bumps as before.

A datagram is a hint, like a bump: it carries no authority (the most a forged
one does is make a node look at the queue once), it may be lost (the bump, then
the idle poll, find the task), and a flood of them reads the queue at most once
per gap: one arriving during the gap is answered at its end, never dropped. The
gap starts at ``MIN_GAP`` and doubles, up to ``MAX_GAP``, each time a read a
datagram asked for finds nothing queued: a flood of forged datagrams read the
queue 500 times a second for as long as it lasted. A read that finds work
resets it; a real submit's bump wakes the node meanwhile, whatever the gap.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import structlog

from taskman import metrics
from taskman.config.node_config import split_wake_address as split_address
from taskman.errors import ConfigError

log = structlog.get_logger("taskman.cluster")
MAGIC = b"taskman-wake/1"
MIN_GAP = 0.002  # seconds between two wake-ups a node takes from datagrams
MAX_GAP = 1.0  # ... after reads they asked for kept finding nothing


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DatagramListener:
    """Receives wake datagrams on one UDP address; ``on_wake`` runs on its own thread."""

    def __init__(
        self, address: str, on_wake: Callable[[], None], *, min_gap: float = MIN_GAP
    ) -> None:
        host, port = split_address(address)
        self._sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ConfigError(f"'wake_address' {address}: cannot listen there: {exc}") from None
        self._sock.settimeout(0.5)  # the longest close() waits for the thread
        self.address = join_address(host, self._sock.getsockname()[1])  # port 0: the real one
        self._on_wake = on_wake
        self.min_gap = min_gap
        self.gap = min_gap  # now: grows while the wake-ups find nothing (found())
        self._woke = False  # a wake-up was handed on since the loop last asked (take_woke())
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wake-datagrams", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = float("-inf")
        pending = False
        while not self._closed.is_set():
            wait = max(0.0, last + self.gap - time.monotonic()) if pending else 0.5
            self._sock.settimeout(wait or 0.0001)
            try:
                data: bytes | None = self._sock.recv(64)
            except TimeoutError:
                data = None
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if data is not None:
                accepted = data == MAGIC
                metrics.WAKE_DATAGRAMS.labels("accepted" if accepted else "ignored").inc()
                pending = pending or accepted
            now = time.monotonic()
            if pending and now >= last + self.gap:
                last, pending = now, False
                self._woke = True
                self._on_wake()

    def take_woke(self) -> bool:
        """The loop, before it reads the queue: did a datagram ask for this read?"""
        woke, self._woke = self._woke, False
        return woke

    def found(self, work: bool) -> None:
        """The loop, after a read a datagram asked for: did it find work queued?"""
        if work:
            self.gap = self.min_gap
        elif self.gap < MAX_GAP:
            self.gap = min(MAX_GAP, self.gap * 2)
            if self.gap == MAX_GAP:
                # Other nodes taking the work first does this too: info, not a warning.
                log.info(
                    "wake.datagrams_found_nothing",
                    detail="reads asked for by wake datagrams keep finding nothing queued "
                    "(other nodes took the work first, or the datagrams are forged): "
                    f"taking at most one every {MAX_GAP:.0f} s until one finds work",
                )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self._sock.close()


class DatagramSender:
    """A Client's datagrams: one non-blocking send per address, errors counted, never raised."""

    def __init__(self) -> None:
        self._socks: dict[socket.AddressFamily, socket.socket] = {}
        self._targets: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
        self.sent = 0
        self.failed = 0

    def set_addresses(self, addresses: list[str]) -> None:
        """The published addresses (host:port), resolved here (off the submit path, names
        too); one that is malformed or does not resolve is skipped."""
        targets: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
        for address in addresses:
            try:
                host, port = split_address(address)
                family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[
                    0
                ]
            except (ConfigError, OSError, IndexError):
                continue
            targets.append((family, (str(sockaddr[0]), int(sockaddr[1]))))
        self._targets = targets

    @property
    def addresses(self) -> int:
        return len(self._targets)

    def send(self) -> int:
        """One datagram to each address; how many went out."""
        sent = 0
        for family, target in self._targets:
            try:
                sock = self._socks.get(family)
                if sock is None:
                    sock = self._socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                sock.sendto(MAGIC, target)
                sent += 1
            except OSError:
                self.failed += 1
        self.sent += sent
        return sent

    def close(self) -> None:
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._socks.clear()
