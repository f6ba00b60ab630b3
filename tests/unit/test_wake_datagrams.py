"""Datagram wake-ups on loopback UDP sockets: what wakes a node, what does not, a flood."""

from __future__ import annotations

import itertools
import socket
import threading
import time

import pytest

from taskman.cluster.wake_datagrams import (
    MAGIC,
    MAX_GAP,
    MIN_GAP,
    DatagramListener,
    DatagramSender,
    split_address,
)
from taskman.errors import ConfigError


class Wakes:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()


def _send(address: str, payload: bytes) -> None:
    host, port = split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, (host, port))


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
def listener(wakes: Wakes) -> DatagramListener:
    listening = DatagramListener("127.0.0.1:0", wakes)
    yield listening  # type: ignore[misc]
    listening.close()


def test_a_wake_datagram_wakes_the_node(listener: DatagramListener, wakes: Wakes) -> None:
    assert listener.address.startswith("127.0.0.1:") and not listener.address.endswith(":0")
    _send(listener.address, MAGIC)
    assert wakes.event.wait(5)


def test_anything_else_is_ignored(listener: DatagramListener, wakes: Wakes) -> None:
    for payload in (b"", b"taskman-wake", MAGIC + b"x", b"\x00" * 64, b"GET / HTTP/1.1\r\n"):
        _send(listener.address, payload)
    assert not wakes.event.wait(0.3)
    _send(listener.address, MAGIC)  # and the listener still listens
    assert wakes.event.wait(5)


def test_a_flood_is_coalesced_and_its_last_datagram_is_never_dropped(wakes: Wakes) -> None:
    listening = DatagramListener("127.0.0.1:0", wakes, min_gap=0.05)
    try:
        t0 = time.monotonic()
        for _ in range(500):
            _send(listening.address, MAGIC)
        last_sent = time.monotonic()
        time.sleep(0.3)
        elapsed = time.monotonic() - t0
        assert 1 <= len(wakes.times) <= elapsed / 0.05 + 2  # at most one wake per gap
        assert wakes.times[-1] >= last_sent - 0.05  # the end of the flood still wakes it
        gaps = [b - a for a, b in zip(wakes.times, wakes.times[1:], strict=False)]
        assert all(gap >= 0.045 for gap in gaps)
    finally:
        listening.close()


def test_wakeups_that_find_nothing_back_off_and_one_that_finds_work_resets(
    listener: DatagramListener, wakes: Wakes
) -> None:
    assert not listener.take_woke()
    _send(listener.address, MAGIC)
    assert wakes.event.wait(5)
    assert listener.take_woke() and not listener.take_woke()  # asked once, for one read
    gaps = []
    for _ in range(12):
        listener.found(False)
        gaps.append(listener.gap)
    assert gaps[0] == 2 * MIN_GAP and gaps[-1] == MAX_GAP
    assert all(b == min(MAX_GAP, 2 * a) for a, b in itertools.pairwise(gaps))
    # Backed off: a flood now wakes the node once per MAX_GAP, its end still answered.
    wakes.times.clear()
    wakes.event.clear()
    for _ in range(200):
        _send(listener.address, MAGIC)
    time.sleep(0.3)
    assert len(wakes.times) <= 1
    assert wakes.event.wait(MAX_GAP + 1)
    listener.found(True)
    assert listener.gap == MIN_GAP


@pytest.mark.parametrize(
    "address", ["0.0.0.0:7077", "[::]:7077", ":7077", "localhost", "host:port", "h:70000"]
)
def test_an_address_clients_cannot_reach_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="wake_address"):
        DatagramListener(address, lambda: None)


def test_an_address_in_use_is_a_clear_error(listener: DatagramListener) -> None:
    with pytest.raises(ConfigError, match="cannot listen there"):
        DatagramListener(listener.address, lambda: None)


def test_the_sender_skips_what_it_cannot_use_and_never_raises(
    listener: DatagramListener, wakes: Wakes
) -> None:
    sender = DatagramSender()
    sender.set_addresses(["garbage", "0.0.0.0:1", "no-such-host.invalid:7077", listener.address])
    assert sender.addresses == 1
    sender.send()
    assert wakes.event.wait(5) and sender.sent == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{probe.getsockname()[1]}"
    sender.set_addresses([gone])  # nobody listens there any more
    for _ in range(3):
        sender.send()  # ICMP unreachable may fail a later send: counted, not raised
    assert sender.sent + sender.failed == 4
    sender.close()


def test_a_closed_listener_stops_listening(wakes: Wakes) -> None:
    listening = DatagramListener("127.0.0.1:0", wakes)
    address = listening.address
    listening.close()
    _send(address, MAGIC)
    assert not wakes.event.wait(0.3)
