"""What the servers were asked per task: SQL statements by kind, ZooKeeper requests and writes.

MariaDB's ``SHOW GLOBAL STATUS`` Com_* counters and ZooKeeper's four-letter words
(``mntr``: packets received from clients; ``srvr``: the zxid, which grows by one
per write transaction of the ensemble, a failed create or multi included) are read
before and after a run. They count everything those servers did meanwhile: the
bench's own polling for the end (one SELECT and COMMIT every 50 ms) and the
nodes' periodic calls (session probes, membership) are in the figures too.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from bench.common import Lab

# Com_* counters the node's hot path moves; "statements" is their sum. An
# INSERT ... SELECT (a claim batch's attempts rows) counts as an insert.
SQL_KINDS = ("select", "insert", "update", "delete", "commit", "rollback")
_COUNTED_AS = {"insert_select": "insert"}


def _four_letter_word(host: str, port: int, word: str, timeout: float = 2.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks: list[bytes] = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


class ServerCounters:
    """Snapshots of both servers' counters; ``per_task`` gives the deltas divided by tasks."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._before: dict[str, int] = {}

    def start(self) -> None:
        self._before = self._read()

    def per_task(self, tasks: int) -> dict[str, Any]:
        after = self._read()
        delta = {k: after[k] - self._before.get(k, 0) for k in after}
        for name, kind in _COUNTED_AS.items():
            delta[f"com_{kind}"] = delta.get(f"com_{kind}", 0) + delta.pop(f"com_{name}", 0)
        sql = {kind: round(delta.get(f"com_{kind}", 0) / tasks, 2) for kind in SQL_KINDS}
        sql["statements"] = round(sum(delta.get(f"com_{k}", 0) for k in SQL_KINDS) / tasks, 2)
        zk = {
            "requests": round(delta.get("zk_packets_received", 0) / tasks, 2),
            "writes": round(delta.get("zk_zxid", 0) / tasks, 2),
        }
        return {"sql_per_task": sql, "zookeeper_per_task": zk}

    def _read(self) -> dict[str, int]:
        values: dict[str, int] = {}
        conn = self.lab.mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Com\\_%'")
                for name, value in cur.fetchall():
                    if str(name).lower()[4:] in (*SQL_KINDS, *_COUNTED_AS):
                        values[str(name).lower()] = int(value)
        finally:
            conn.close()
        zk = self.lab.zookeeper
        packets, zxid = 0, 0
        for port in zk.client_ports:
            with contextlib.suppress(OSError, ValueError):
                for line in _four_letter_word(zk.host, port, "mntr").splitlines():
                    key, _, value = line.partition("\t")
                    if key == "zk_packets_received":
                        packets += int(value)
                for line in _four_letter_word(zk.host, port, "srvr").splitlines():
                    if line.startswith("Zxid:"):
                        # Every server applies every write: the largest is the ensemble's.
                        zxid = max(zxid, int(line.split(":", 1)[1].strip(), 16) & 0xFFFFFFFF)
        values["zk_packets_received"] = packets
        values["zk_zxid"] = zxid
        return values
