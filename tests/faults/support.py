"""Fault injectors for the fault tier: a TCP proxy that can freeze, and a runner watcher."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from tests.integration.cluster_support import pid_alive


class FreezableProxy:
    """A loopback TCP proxy in front of one server; ``freeze()`` stalls every byte both ways.

    Frozen, connections stay open and nothing is refused: to the client it looks
    exactly like a server that hangs (a stalled Galera node, a frozen VM), while
    every other client of the server goes on as usual.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn_for(self, dsn: str) -> str:
        """The same DSN, pointed at this proxy."""
        parts = urlsplit(dsn)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed.is_set():
                if self._frozen.is_set():
                    time.sleep(0.01)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            # Always, also when close() ran before these sockets were listed:
            # an unclosed socket is a ResourceWarning in whichever test runs next.
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


class DeathWatch:
    """Notes, from the test's side, the moment each watched process stops existing."""

    def __init__(self) -> None:
        self.died_at: dict[int, float] = {}
        self._watched: set[int] = set()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, pid: int) -> None:
        self._watched.add(pid)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in list(self._watched - set(self.died_at)):
                if not pid_alive(pid):
                    self.died_at[pid] = time.time()
            time.sleep(0.02)
