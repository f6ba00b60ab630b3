"""Helpers for fault tests that talk to the session's ZooKeeper directly.

``FreezableProxy`` sits between a client and the real server on loopback. Frozen,
it keeps every connection open but forwards nothing, as a hung server or a
silent network does: the case where a kazoo call without a deadline never returns.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from taskman.config import NodeConfig
from tests.integration.cluster_support import ZK_AUTH


class FreezableProxy:
    """A loopback TCP proxy to ``host:port`` that can stop forwarding on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._generation = 0  # cut() ends every connection of an older generation
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._threads.append(threading.Thread(target=self._accept, name="zk-proxy", daemon=True))
        self._threads[0].start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._forwarding.clear()

    def thaw(self) -> None:
        self._forwarding.set()

    def cut(self) -> None:
        """Break every open connection; bytes held while frozen are lost, as on a dead link."""
        with self._lock:
            self._generation += 1
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._listener.close()
        for thread in self._threads:
            thread.join(5)  # each pump closes its two sockets on the way out

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(self.target, timeout=5)
            except OSError:
                inbound.close()
                continue
            with self._lock:
                self._open += [inbound, outbound]
                generation = self._generation
            pump = threading.Thread(
                target=self._pump, args=(inbound, outbound, generation), daemon=True
            )
            self._threads.append(pump)
            pump.start()

    def _pump(self, a: socket.socket, b: socket.socket, generation: int) -> None:
        peer = {a: b, b: a}
        with a, b, selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while not self._closed.is_set():
                # Frozen: read nothing, so bytes wait in the kernel and nobody hears back.
                self._forwarding.wait()
                if generation != self._generation:
                    return  # cut: what was held is dropped with the connection
                for key, _ in sel.select(timeout=0.05):
                    if not self._forwarding.is_set() or generation != self._generation:
                        break
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                        if not data:
                            return
                        peer[src].sendall(data)
                    except OSError:
                        return


@contextlib.contextmanager
def proxy_to(zk_hosts: str) -> Iterator[FreezableProxy]:
    host, _, port = zk_hosts.split(",", maxsplit=1)[0].partition(":")
    proxy = FreezableProxy(host, int(port))
    try:
        yield proxy
    finally:
        proxy.close()


def node_config(zookeeper: str, cluster: str, node_id: str = "n1") -> NodeConfig:
    """Enough of a node's configuration for a ZkCoordination (no database is touched)."""
    return NodeConfig(
        node_id=node_id,
        datacenter="dc1",
        dsn="mysql://unused:unused@127.0.0.1:1/unused",
        zookeeper=zookeeper,
        plugin_dirs=(Path("/nonexistent"),),
        zookeeper_auth=ZK_AUTH,
        cluster=cluster,
        session_timeout=4.0,
        heartbeat_interval=0.5,
    )


def four_letter_word(zk_hosts: str, word: str) -> str:
    host, _, port = zk_hosts.split(",", maxsplit=1)[0].partition(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def watched_paths(zk_hosts: str, session_id: int) -> list[str]:
    """The paths the server holds a watch on for one session (``wchc``)."""
    reply = four_letter_word(zk_hosts, "wchc")
    if "not executed" in reply:
        raise AssertionError(f"the test ZooKeeper refuses wchc: {reply.strip()}")
    paths: list[str] = []
    mine = False
    for line in reply.splitlines():
        if line.startswith("0x"):
            mine = int(line, 16) == session_id
        elif line.strip() and mine:
            paths.append(line.strip())
    return paths
