"""Claim cost against the queue's size: the node's claim path, run in this process.

One claim = the candidate query, the ZooKeeper claim create, and the fenced claim
UPDATE (with its attempts row), exactly the calls cluster/node.py makes. Batches
of 8 are measured twice: tokens from pipelined creates (one ZooKeeper write per
claim), and from one multi (one write per batch), as the node claims. Run with
10,000 and with 1,000,000 queued tasks to see whether the table's size matters.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from bench.common import Lab, fill_queued, summary_ms
from taskman.cluster.layout import ClusterPaths
from taskman.cluster.lease import ClaimLease
from taskman.cluster.zk import connect, wait
from taskman.store import ClaimRequest, Database, TaskStore

PLUGINS = {"demo": ["1.0"]}


def claim_cost(lab: Lab, queued: int, claims: int, batch: int = 8) -> dict[str, Any]:
    dsn = lab.fresh_database()
    t0 = time.monotonic()
    fill_queued(dsn, queued)
    fill_s = time.monotonic() - t0
    Database(dsn).execute("ANALYZE TABLE tasks")
    store = TaskStore(Database(dsn))
    zk = connect(lab.zookeeper.hosts, 6.0)
    paths = ClusterPaths(f"b{uuid.uuid4().hex[:8]}")
    for path in paths.all():
        wait(zk.ensure_path_async(path))
    lease = ClaimLease(zk, paths, "bench")
    lease.open_session()  # claims are made under a session marker (lease.py)
    query_s: list[float] = []
    single_s: list[float] = []
    batched_s: list[float] = []
    pipelined_s: list[float] = []
    try:
        for _ in range(5):  # warm the connection and the buffer pool
            store.candidates("dc1", PLUGINS, limit=batch)
        # One claim at a time, as the node did before batching.
        while len(single_s) < claims:
            q0 = time.perf_counter()
            candidates = store.candidates("dc1", PLUGINS, limit=batch * 2)
            query_s.append(time.perf_counter() - q0)
            random.shuffle(candidates)
            for candidate in candidates[:batch]:
                c0 = time.perf_counter()
                token = lease.acquire(candidate.task_id, candidate.attempt + 1)
                if token is None:
                    continue
                claim = store.claim(
                    candidate.task_id, candidate.attempt, token, "bench", "dc1", "1.0"
                )
                if claim is None:
                    raise RuntimeError("claim UPDATE matched nothing on an idle table")
                # the candidate query is shared by the batch: charge each claim its share
                single_s.append(time.perf_counter() - c0 + query_s[-1] / batch)
        # Batched, with pipelined creates (one write each), then as the node claims
        # now: one multi (one write for the batch); one transaction either way.
        for acquire, spent_s in (
            (lease.acquire_pipelined, pipelined_s),
            (lease.acquire_many, batched_s),
        ):
            while len(spent_s) < claims:
                b0 = time.perf_counter()
                candidates = store.candidates("dc1", PLUGINS, limit=batch * 2)[:batch]
                tokens = acquire([(c.task_id, c.attempt + 1) for c in candidates])
                won = [(c, t) for c, t in zip(candidates, tokens, strict=True) if t is not None]
                requests = [ClaimRequest(c.task_id, c.attempt, t, "1.0") for c, t in won]
                store.claim_many(requests, "bench", "dc1")
                spent = time.perf_counter() - b0
                spent_s.extend([spent / max(1, len(won))] * len(won))
    finally:
        zk.stop()
        zk.close()
        store.close()
    result: dict[str, Any] = {
        "queued": queued,
        "fill_s": round(fill_s, 1),
        "candidate_query": summary_ms(query_s),
        "claim_one_at_a_time": summary_ms(single_s),
    }
    if pipelined_s:
        result[f"claim_pipelined_{batch}"] = summary_ms(pipelined_s)
    if batched_s:
        result[f"claim_batched_{batch}"] = summary_ms(batched_s)
    return result
