"""Every Prometheus metric a node exports, in one place.

Names follow Prometheus conventions (``taskman_..._total``, ``_seconds``); label
sets stay small (plugin, outcome, reason, state) so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)

TASKS_CLAIMED = Counter(
    "taskman_tasks_claimed_total", "Attempts this node claimed.", ["plugin"], registry=REGISTRY
)
TASKS_SUCCEEDED = Counter(
    "taskman_tasks_succeeded_total",
    "Tasks that succeeded on this node.",
    ["plugin"],
    registry=REGISTRY,
)
TASKS_FAILED = Counter(
    "taskman_tasks_failed_total",
    "Tasks that failed for good on this node.",
    ["plugin"],
    registry=REGISTRY,
)
TASKS_RETRIED = Counter(
    "taskman_tasks_retried_total",
    "Failed attempts put back in the queue for a retry.",
    ["plugin"],
    registry=REGISTRY,
)
TASKS_ABORTED = Counter(
    "taskman_tasks_aborted_total",
    "Running tasks this node stopped on request.",
    ["plugin"],
    registry=REGISTRY,
)
TASKS_EXPIRED = Counter(
    "taskman_tasks_expired_total",
    "Queued tasks expired by this node as leader.",
    registry=REGISTRY,
)
FENCED = Counter(
    "taskman_fenced_writes_total",
    "Writes about an attempt refused because a newer token owns the task.",
    ["write"],
    registry=REGISTRY,
)
RECLAIMED = Counter(
    "taskman_tasks_reclaimed_total",
    "Attempts re-queued by this node as leader.",
    ["reason"],
    registry=REGISTRY,
)
TASKS_PRUNED = Counter(
    "taskman_tasks_pruned_total",
    "Finished tasks deleted by retention (leader).",
    registry=REGISTRY,
)
SELF_FENCED = Counter(
    "taskman_self_fenced_total",
    "Times this node killed its runners after losing ZooKeeper or its database.",
    registry=REGISTRY,
)

LOOP_ERRORS = Counter(
    "taskman_loop_errors_total",
    "Unexpected errors a loop of this node caught, logged and survived, by loop.",
    ["loop"],
    registry=REGISTRY,
)
LEADER_RESIGNED = Counter(
    "taskman_leader_resigned_total",
    "Times this node gave up leadership because it could not perform the leader's duties.",
    registry=REGISTRY,
)

RUNNERS = Gauge("taskman_runners_running", "Runner processes alive now.", registry=REGISTRY)
SLOTS_FREE = Gauge("taskman_slots_free", "Slots free for new attempts.", registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "taskman_queue_depth",
    "Tasks by state (published by the leader only).",
    ["state"],
    registry=REGISTRY,
)
ZK_CONNECTED = Gauge(
    "taskman_zookeeper_connected",
    "1 while the ZooKeeper session is confirmed.",
    registry=REGISTRY,
)
IS_LEADER = Gauge("taskman_is_leader", "1 while this node is the leader.", registry=REGISTRY)
OLDEST_HEARTBEAT_AGE = Gauge(
    "taskman_oldest_heartbeat_age_seconds",
    "Seconds since the last accepted heartbeat of this node's oldest running attempt.",
    registry=REGISTRY,
)

SUBMIT_TO_START = Histogram(
    "taskman_submit_to_start_seconds",
    "From due (submit, not_before, retry or reclaim) to claim, by the DB clock.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CLAIM_SECONDS = Histogram(
    "taskman_claim_seconds",
    "ZooKeeper claim plus the claiming UPDATE.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SPAWN_SECONDS = Histogram(
    "taskman_runner_spawn_seconds",
    "From spawn to the runner's ready message.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "taskman_attempt_duration_seconds",
    "Attempt wall time, by outcome.",
    ["plugin", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
