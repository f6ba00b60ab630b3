"""Every Prometheus metric a node exports, in one place.

Names follow Prometheus conventions (``taskman_..._total``, ``_seconds``); label
sets stay small (plugin, outcome, reason, state, datacenter) so cardinality stays
bounded. ``promtool check metrics`` passes on a node's exposition (a test runs it).
The names are public (alerting rules and dashboards use them, see
docs/operations.md): add, never rename; a rename exports both names for a while.
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

SCHEDULE_TICKS_MISSED = Counter(
    "taskman_schedule_ticks_missed_total",
    "Schedule ticks the leader saw later than their misfire grace (then skipped, run once "
    "or caught up, as each schedule's misfire policy says).",
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
WAKEUPS = Counter(
    "taskman_wakeups_total",
    "Times a wake-up signal (ZooKeeper's wake znode changed) made this node look for work.",
    registry=REGISTRY,
)
WAKE_DATAGRAMS = Counter(
    "taskman_wake_datagrams_total",
    "Datagrams received on this node's wake_address: accepted (a wake-up), ignored (not one).",
    ["result"],
    registry=REGISTRY,
)
WAKE_BUMPS = Counter(
    "taskman_wake_bumps_total",
    "Wake-up signals this node sent (retries, reclaims, schedule ticks), by result.",
    ["result"],
    registry=REGISTRY,
)
POLLS = Counter(
    "taskman_polls_total",
    "Times this node read the queue for work: busy (poll_interval) or idle (idle_poll_interval).",
    ["pace"],
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
NODES_LIVE = Gauge(
    "taskman_nodes_live",
    "Live nodes (coordinator members) by datacenter, as the leader sees them; a datacenter "
    "seen during the leader's term stays, at 0, when its last node leaves (published by the "
    "leader only).",
    ["datacenter"],
    registry=REGISTRY,
)
OLDEST_QUEUED_AGE = Gauge(
    "taskman_oldest_queued_age_seconds",
    "Seconds the longest-waiting due queued task has waited since it became due (submit, "
    "not_before, retry or reclaim), by the DB clock (the leader's; 0 on other nodes).",
    registry=REGISTRY,
)
SCHEDULE_LAG = Gauge(
    "taskman_schedule_lag_seconds",
    "Seconds the most overdue unpaused schedule's next tick is behind the DB clock "
    "(the leader's; 0 on other nodes).",
    registry=REGISTRY,
)
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


# Known label values start at 0: increase() and rate() miss the first increment of a
# series that appears with it, and an alert on "any fenced write" must see the first.
for _write in ("heartbeat", "outcome"):
    FENCED.labels(_write)
for _reason in ("node_lost", "heartbeat_timeout"):
    RECLAIMED.labels(_reason)
for _result in ("sent", "failed"):
    WAKE_BUMPS.labels(_result)
for _result in ("accepted", "ignored"):
    WAKE_DATAGRAMS.labels(_result)
for _pace in ("busy", "idle"):
    POLLS.labels(_pace)


def start_plugin(plugin: str) -> None:
    """Export a plugin's counters (and its crashed-attempt count) at 0 from the node's start."""
    for counter in (TASKS_CLAIMED, TASKS_SUCCEEDED, TASKS_FAILED, TASKS_RETRIED, TASKS_ABORTED):
        counter.labels(plugin)
    ATTEMPT_SECONDS.labels(plugin, "crashed")
