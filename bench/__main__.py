"""``python -m bench``: run the benchmark suite and print its figures with the set-up.

Every figure is measured in this one run, against servers this run starts: MariaDB
and a 3-server ZooKeeper ensemble on loopback (taskman.lab), nodes as real
``taskman node`` processes; for Celery's figures a RabbitMQ node (bench/rabbitmq.py). Where a figure exists for both runner modes (cold
spawn, zygote fork) both are measured here and their ratio printed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import claims, cluster_benches, galera, runner_start, submits, versus_celery
from bench.common import git_revision, lab, setup_description

IDLE_POLL = 2.0  # the latency figures' idle poll with wake-ups (seconds)
ALL = (
    "runner_start",
    "throughput",
    "latency",
    "claims",
    "recovery",
    "memory",
    "submit_many",
    "celery",
    "galera",
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=ALL, help="figures to measure (default: all)")
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per throughput run")
    parser.add_argument(
        "--slots", type=int, default=24, help="runner slots per node (no-op tasks: mostly start-up)"
    )
    parser.add_argument("--starts", type=int, default=100, help="runner starts per mode")
    parser.add_argument("--latency-samples", type=int, default=60)
    parser.add_argument("--claims", type=int, default=400, help="claims per queue size")
    parser.add_argument("--big-queue", type=int, default=1_000_000)
    parser.add_argument(
        "--submits", type=int, default=10_000, help="tasks per submit_many figure (and as singles)"
    )
    parser.add_argument("--recoveries", type=int, default=3)
    parser.add_argument(
        "--memory-runners", type=int, default=24, help="sleeping runners in the memory figure"
    )
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--modes", nargs="*", help="runner modes (default: all available)")
    parser.add_argument(
        "--celery-tasks",
        nargs="*",
        type=int,
        help="no-op tasks per Celery throughput figure (default: --tasks), e.g. 2000 20000",
    )
    parser.add_argument(
        "--celery-broker",
        help="an existing RabbitMQ on loopback for the Celery figures (default: the run "
        "starts its own node)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with celery and throughput: alternating rounds of Celery then each mode at "
        "--tasks (versus[...]; 0: none)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it works (CI)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--base-dir", type=Path, help="server data (default: a temp dir)")
    return parser


def sizes(args: argparse.Namespace) -> argparse.Namespace:
    """The figures and sizes to run: --smoke's tiny ones, or the options'."""
    if args.only is None:
        # The 3-datacenter Galera lab takes 20 s to come up: `--only galera` asks for it.
        args.only = [name for name in ALL if not (args.smoke and name == "galera")]
    if args.smoke:
        smoke_sizes(args)
        args.celery_tasks = None
    args.celery_tasks = args.celery_tasks or [args.tasks]
    return args


def main(argv: list[str] | None = None) -> int:
    # SIGTERM must unwind through the lab's context managers, or its servers outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = sizes(parser().parse_args(argv))

    modes = args.modes or default_modes()
    report: dict[str, Any] = {"revision": git_revision(), "modes": modes, "figures": {}}
    figures: dict[str, Any] = report["figures"]

    def record(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        print(f"-- {name} ...", flush=True)
        try:
            figures[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the others
            traceback.print_exc()
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"   {json.dumps(figures[name])}  ({time.monotonic() - t0:.0f} s)", flush=True)

    base = args.base_dir or Path(tempfile.mkdtemp(prefix="taskman-bench-"))
    if "runner_start" in args.only:
        for mode in modes:
            runner_mode = "cold" if mode == "baseline" else mode  # pooled: a warm runner
            record(
                f"runner_start[{mode}]",
                lambda m=runner_mode: runner_start.measure(m, args.starts),
            )
    if "submit_many" in args.only:  # embedded mode: no servers
        record("submit_many[sqlite]", lambda: submits.submit_rates(None, args.submits))
    with lab(base) as the_lab:
        report["setup"] = setup_description(the_lab)
        report["setup"].update(slots_per_node=args.slots, session_timeout=args.session_timeout)
        print("setup:", json.dumps(report["setup"]), flush=True)
        for mode in modes:
            if "throughput" in args.only:
                for nodes in (1, 2):
                    record(
                        f"throughput[{mode},{nodes} node{'s' if nodes > 1 else ''}]",
                        lambda m=mode, n=nodes: cluster_benches.throughput(
                            the_lab, m, args.tasks, n, args.slots
                        ),
                    )
            latency_figures(record, the_lab, mode, args)
            if "memory" in args.only:
                record(
                    f"memory[{mode}]",
                    lambda m=mode: cluster_benches.memory(the_lab, m, args.memory_runners),
                )
            if "recovery" in args.only:
                record(
                    f"recovery[{mode}]",
                    lambda m=mode: cluster_benches.recovery(
                        the_lab, m, args.recoveries, args.session_timeout
                    ),
                )
        idle_figures(record, the_lab, modes[-1], args)
        if "celery" in args.only:  # its results go to the lab's MariaDB, as taskman's do
            versus_celery.measure(
                record,
                the_lab,
                args.celery_tasks,
                min(args.tasks, versus_celery.ISOLATED_TASKS),
                args.latency_samples,
                args.celery_broker,
                versus_celery.HeadToHead(
                    lambda m, n: cluster_benches.throughput(the_lab, m, n, 1, args.slots),
                    modes,
                    args.tasks,
                    args.rounds if "throughput" in args.only else 0,
                ),
            )
        if "submit_many" in args.only:
            record("submit_many[mariadb]", lambda: submits.submit_rates(the_lab, args.submits))
        if "claims" in args.only:
            for queued in (10_000, args.big_queue):
                record(
                    f"claims[{queued} queued]",
                    lambda q=queued: claims.claim_cost(the_lab, q, args.claims),
                )
        if "galera" in args.only:  # brings the 3-datacenter lab up and down itself
            galera.run(record, the_lab, modes, args.tasks, args.slots)
    report["ratios"] = ratios(figures, modes, args.big_queue)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, value in figures.items() if "error" in value]
    return 1 if failed else 0


def smoke_sizes(args: argparse.Namespace) -> None:
    """Tiny sizes: the suite works (CI); says nothing about speed."""
    args.tasks, args.starts, args.latency_samples = 40, 5, 5
    args.claims, args.big_queue, args.recoveries = 20, 20_000, 1
    args.submits = 200
    args.memory_runners = 4
    args.session_timeout = 4.0
    args.rounds = 1


def default_modes() -> list[str]:
    """Every runner mode this tree has: "baseline" for a tree from before the zygote."""
    if not cluster_benches.zygote_supported():
        return ["baseline"]
    modes = ["cold", "zygote"]
    if cluster_benches.pooled_supported():
        modes.append("pooled")
    return modes


Record = Callable[[str, Callable[[], Any]], None]


def latency_figures(record: Record, the_lab: Any, mode: str, args: argparse.Namespace) -> None:
    """Idle submit-to-start: polled every 0.5 s and 0.05 s, and woken (idle poll IDLE_POLL)."""
    if "latency" not in args.only:
        return
    samples = args.latency_samples
    for poll in (0.5, 0.05):
        record(
            f"latency[{mode},poll {poll}s]",
            lambda p=poll: cluster_benches.latency(the_lab, mode, samples, p),
        )
    record(
        f"latency[{mode},wake,idle poll {IDLE_POLL}s]",
        lambda: cluster_benches.latency(the_lab, mode, samples, 0.05, IDLE_POLL),
    )
    record(
        f"latency[{mode},wake datagram,idle poll {IDLE_POLL}s]",
        lambda: cluster_benches.latency(the_lab, mode, samples, 0.05, IDLE_POLL, datagrams=True),
    )


def idle_figures(record: Record, the_lab: Any, mode: str, args: argparse.Namespace) -> None:
    """What idleness costs: an idle node's statements/s, and ZooKeeper writes of a submit flood."""
    if "latency" not in args.only:
        return
    flood = 50 if args.smoke else 1000
    for idle in (None, IDLE_POLL):
        name = "poll 0.05s" if idle is None else f"wake,idle poll {idle}s"
        record(
            f"idle_queries[{name}]",
            lambda i=idle: cluster_benches.idle_queries(the_lab, mode, 0.05, i),
        )
    record("wake_flood", lambda: cluster_benches.wake_flood(the_lab, mode, flood))


def ratios(figures: dict[str, Any], modes: list[str], big: int) -> dict[str, float]:
    """Ratios between figures of this run only."""
    out: dict[str, float] = {}

    def get(name: str, *keys: str) -> float | None:
        value: Any = figures.get(name)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value)

    if "cold" in modes and "zygote" in modes:
        cold = get("runner_start[cold]", "to_ready", "median_ms")
        warm = get("runner_start[zygote]", "to_ready", "median_ms")
        if cold and warm:
            out["runner_start cold/zygote (median to ready)"] = round(cold / warm, 1)
        for nodes in ("1 node", "2 nodes"):
            c = get(f"throughput[cold,{nodes}]", "tasks_per_s")
            z = get(f"throughput[zygote,{nodes}]", "tasks_per_s")
            if c and z:
                out[f"throughput zygote/cold ({nodes})"] = round(z / c, 2)
    for mode in modes:
        polled = get(f"latency[{mode},poll 0.05s]", "median_ms")
        woken = get(f"latency[{mode},wake,idle poll {IDLE_POLL}s]", "median_ms")
        if polled and woken:
            out[f"latency poll 0.05s / wake ({mode}, median)"] = round(polled / woken, 2)
    busy = get("idle_queries[poll 0.05s]", "statements_per_s")
    quiet = get(f"idle_queries[wake,idle poll {IDLE_POLL}s]", "statements_per_s")
    if busy and quiet:
        out["idle node statements/s poll 0.05s / wake"] = round(busy / quiet, 1)
    for mode in modes:
        one = get(f"throughput[{mode},1 node]", "tasks_per_s")
        two = get(f"throughput[{mode},2 nodes]", "tasks_per_s")
        if one and two:
            out[f"throughput 2 nodes/1 node ({mode})"] = round(two / one, 2)
    out.update(versus_celery.ratios(figures, modes))
    for backend in ("mariadb", "sqlite"):
        one = get(f"submit_many[{backend}]", "submit_per_s")
        many = get(f"submit_many[{backend}]", "submit_many_per_s")
        if one and many:
            out[f"submit_many/submit rate ({backend})"] = round(many / one, 1)
    small = get("claims[10000 queued]", "claim_one_at_a_time", "median_ms")
    large = get(f"claims[{big} queued]", "claim_one_at_a_time", "median_ms")
    if small and large:
        out[f"claim cost {big}/10000 queued (median)"] = round(large / small, 2)
    sb = get("claims[10000 queued]", "claim_batched_8", "median_ms")
    if small and sb:
        out["claim cost one-at-a-time/batched (10000 queued)"] = round(small / sb, 2)
    piped = get("claims[10000 queued]", "claim_pipelined_8", "median_ms")
    if piped and sb:
        out["claim cost pipelined/multi batch of 8 (10000 queued)"] = round(piped / sb, 2)
    out.update(galera.ratios(figures))
    return out


def print_report(report: dict[str, Any]) -> None:
    print("\n== taskman benchmark ==")
    print(f"revision: {report['revision']}")
    for key, value in report.get("setup", {}).items():
        print(f"  {key}: {value}")
    print("figures:")
    for name, value in report["figures"].items():
        print(f"  {name}: {json.dumps(value)}")
    print("ratios (same run):")
    for name, value in report["ratios"].items():
        print(f"  {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
