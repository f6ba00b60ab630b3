"""The chaos harness: run tasks through a fault on the real multi-datacenter lab, then check.

The checker trusts nothing the nodes say about themselves. It reads the task and
attempt rows from a Galera node of the majority, and the execution log that
``demo.tasks:sleep`` appends to itself ('<task> <attempt> <token> <pid> <event>'),
and asserts the guarantees of shared/design/invariants.md.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from taskman import Client, Outcome, Task, TaskState
from taskman.lab.multidc import MultiDCLab

# An attempt may be re-executed only if its runner was killed, fenced or lost.
RE_EXECUTABLE = {Outcome.NODE_LOST, Outcome.CRASHED, Outcome.FENCED, Outcome.HEARTBEAT_TIMEOUT}
# Outcomes written by someone else than the attempt's owner: its result may have been lost.
LOST_RESULT = {Outcome.NODE_LOST, Outcome.FENCED, Outcome.HEARTBEAT_TIMEOUT}
TASK_SECONDS = 5.0


class BoundExceededError(AssertionError):
    """Liveness, not safety: recovery too slow, or work re-run outside the fault's target."""


@dataclass
class Fault:
    """What a scenario did: when (driver's wall clock, same machine as the databases), where."""

    at: float
    target_dc: str | None = None
    target_node: str | None = None
    # While this window lasted the target datacenter was cut off: it must commit nothing.
    minority_window: tuple[float, float] | None = None
    bound: float = 0.0  # recovery bound in seconds
    notes: list[str] = field(default_factory=list)

    def hit(self, node: str, datacenter: str) -> bool:
        """Whether an attempt on ``node`` in ``datacenter`` was in the fault's reach."""
        if self.target_node is None and self.target_dc is None:
            return True
        return node == self.target_node or datacenter == self.target_dc


@dataclass
class Result:
    scenario: str
    submitted: int = 0
    completed: int = 0
    re_executions: int = 0
    collateral: int = 0  # re-executions of attempts outside the fault's target
    stale_rejected: int = 0
    max_recovery: float | None = None
    bound: float = 0.0
    lost: int = 0
    seconds: float = 0.0
    max_overlap: float = 0.0  # the longest two attempts of one task ran at once, seconds
    notes: str = ""


POOLED_PLUGINS = Path(__file__).parent / "plugins"  # demo-pooled: demo.tasks, pooled
RESULTS: list[Result] = []


def read_exec_log(path: Path) -> list[tuple[int, int, int, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:  # a line torn by a SIGKILL mid-write is not evidence
            task, attempt, token, pid, event = parts
            rows.append((int(task), int(attempt), int(token), int(pid), event))
    return rows


# Two attempts of one task may run at the same time only inside this window
# (docs/architecture.md, "Overlap"): the protocol allows none; the beats that
# measure it are 0.1 s apart and written by separate processes.
OVERLAP_WINDOW = 0.25


def read_beats(path: Path) -> dict[tuple[int, int], tuple[float, float]]:
    """(task, attempt) -> (first, last) wall time the attempt's runner was seen alive."""
    beats = Path(f"{path}.beats")
    if not beats.exists():
        return {}
    seen: dict[tuple[int, int], tuple[float, float]] = {}
    for line in beats.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # torn by a SIGKILL mid-write
        key, when = (int(parts[0]), int(parts[1])), float(parts[2])
        first, last = seen.get(key, (when, when))
        seen[key] = (min(first, when), max(last, when))
    return seen


def overlap(beats: dict[tuple[int, int], tuple[float, float]], task_id: int) -> float:
    """The longest two attempts of a task were seen alive at once (0 if never)."""
    spans = sorted((a, span) for (t, a), span in beats.items() if t == task_id)
    worst = 0.0
    for i, (_, (_, last)) in enumerate(spans):
        for _, (first, _) in spans[i + 1 :]:
            worst = max(worst, last - first)
    return worst


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s: {message}")


def live_client(lab: MultiDCLab, avoid: str | None = None) -> Client:
    """A client on a Galera node that is Synced in the Primary component."""
    for dc in lab.galera_dcs:
        if dc != avoid and lab.galera_synced(dc):
            return Client(lab.dsn(dc), retry_deadline=20.0)
    raise AssertionError("no Synced Galera node to talk to")


def node_events(lab: MultiDCLab, event: str, since: dict[str, int]) -> list[dict[str, Any]]:
    found = []
    for node_id in lab.node_ids():
        found += [
            e for e in lab.node_events(node_id, since.get(node_id, 0)) if e.get("event") == event
        ]
    return found


def log_offsets(lab: MultiDCLab) -> dict[str, int]:
    offsets = {}
    for node_id in lab.node_ids():
        log = lab.node_log(node_id)
        offsets[node_id] = log.stat().st_size if log.exists() else 0
    return offsets


class Scenario:
    """Submit tasks, wait until they run, inject a fault, wait for the end, check."""

    def __init__(
        self, lab: MultiDCLab, name: str, *, tasks: int = 9, seconds: float = TASK_SECONDS
    ) -> None:
        self.lab = lab
        self.name = name
        self.count = tasks
        self.seconds = seconds
        self.log = lab.base_dir / f"exec-{name}-{time.time_ns()}.log"
        self.ids: list[int] = []
        self.offsets = log_offsets(lab)
        self.started = time.monotonic()

    @property
    def session(self) -> float:
        return float(self.lab.state.node_options["session_timeout"])

    def submit(self) -> None:
        with live_client(self.lab) as client:
            # Every third task in a pooled runner: the checker's rules hold for both modes.
            self.ids = [
                client.submit(
                    "demo.tasks:sleep",
                    plugin="demo-pooled" if i % 3 == 2 else "demo",
                    args=(self.seconds, str(self.log)),
                    max_attempts=3,
                    retry_backoff=0,
                )
                for i in range(self.count)
            ]

    def wait_running(self, timeout: float = 30.0) -> dict[str, list[int]]:
        """Wait until every task runs (its runner wrote 'start'); return tasks per node."""
        with live_client(self.lab) as client:

            def all_running() -> dict[str, list[int]] | None:
                started = {row[0] for row in read_exec_log(self.log) if row[4] == "start"}
                if not set(self.ids) <= started:
                    return None
                by_node: dict[str, list[int]] = {}
                for task_id in self.ids:
                    task = client.get(task_id)
                    if task.state is not TaskState.RUNNING or task.owner is None:
                        return None
                    by_node.setdefault(task.owner, []).append(task_id)
                return by_node

            result: dict[str, list[int]] = wait_until(
                all_running, timeout, f"{self.name}: all {self.count} tasks running"
            )
            return result

    def runner_pids(self, task_ids: list[int]) -> list[int]:
        wanted = set(task_ids)
        return [r[3] for r in read_exec_log(self.log) if r[4] == "start" and r[0] in wanted]

    def wait_done(self, timeout: float = 90.0, avoid: str | None = None) -> list[Task]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with live_client(self.lab, avoid) as client:
                    tasks = [client.get(i) for i in self.ids]
            except Exception:  # noqa: BLE001 - a Galera node may drop us mid-read; ask another
                tasks = []
            if tasks and all(t.state.terminal for t in tasks):
                return tasks
            if time.monotonic() > deadline:
                states = Counter(t.state.value for t in tasks)
                raise AssertionError(f"{self.name}: tasks not terminal after {timeout} s: {states}")
            time.sleep(0.2)

    def check(self, fault: Fault, notes: str = "") -> Result:
        """Read everything back and assert the invariants; record the result row."""
        tasks = self.wait_done()
        rows = read_exec_log(self.log)
        beats = read_beats(self.log)
        worst_overlap = 0.0
        problems: list[str] = []
        re_executions = 0
        collateral = 0
        lost_results = 0
        recoveries: list[float] = []
        for task in tasks:
            attempts = sorted(task.attempts, key=lambda a: a.attempt)
            # Every submitted task terminal, and here: succeeded.
            if task.state is not TaskState.SUCCEEDED:
                problems.append(f"task {task.id} ended {task.state.value}: {task.error}")
                continue
            # No stale-token write accepted: fences grow with every attempt; the task holds the max.
            fences = [a.fence for a in attempts]
            if fences != sorted(set(fences)):
                problems.append(f"task {task.id}: attempt fences do not strictly increase {fences}")
            if task.fence != max(fences):
                problems.append(f"task {task.id}: final fence {task.fence} != max {max(fences)}")
            final = attempts[-1]
            if final.outcome is not Outcome.SUCCEEDED or final.fence != task.fence:
                problems.append(f"task {task.id}: last attempt {final} is not the succeeded one")
            if task.result is None or task.result.get("fence") != task.fence:
                problems.append(f"task {task.id}: result {task.result} not from the final token")
            # Re-executions only for attempts killed, fenced, timed out or lost.
            for earlier in attempts[:-1]:
                re_executions += 1
                if not fault.hit(earlier.node, earlier.datacenter):
                    collateral += 1
                if earlier.outcome not in RE_EXECUTABLE:
                    problems.append(
                        f"task {task.id} attempt {earlier.attempt} re-executed after "
                        f"outcome {earlier.outcome.value}"
                    )
            # Succeeded at most once, and by the holder of the final token.
            done = [(r[1], r[2]) for r in rows if r[0] == task.id and r[4] == "done"]
            if done.count((task.attempt, task.fence)) != 1:
                problems.append(
                    f"task {task.id}: 'done' lines {done}, expected one ({task.attempt}, "
                    f"{task.fence})"
                )
            # An earlier attempt may have finished its work and lost its result with its
            # owner (frozen or dead before recording it): at-least-once, counted, never
            # recorded. Any other earlier 'done' is a second execution that was not allowed.
            by_key = {(a.attempt, a.fence): a for a in attempts}
            for key in done:
                if key == (task.attempt, task.fence):
                    continue
                earlier_attempt = by_key.get(key)
                if earlier_attempt is None or earlier_attempt.outcome not in LOST_RESULT:
                    problems.append(f"task {task.id}: extra 'done' from attempt {key}")
                else:
                    lost_results += 1
            # No two attempts ran at the same time (beyond the stated window).
            both = overlap(beats, task.id)
            worst_overlap = max(worst_overlap, both)
            if both > OVERLAP_WINDOW:
                problems.append(
                    f"task {task.id}: two attempts ran at once for {both:.2f} s "
                    f"(window {OVERLAP_WINDOW} s)"
                )
            # Every execution the log shows was a claim the database recorded.
            known = {(a.attempt, a.fence) for a in attempts}
            for r in rows:
                if r[0] == task.id and (r[1], r[2]) not in known:
                    problems.append(f"task {task.id}: log line {r} has no attempt row")
            # Recovery: the fault to the start of the next attempt.
            for before, after in itertools.pairwise(attempts):
                if (
                    before.outcome in RE_EXECUTABLE
                    and after.started_at is not None
                    and fault.hit(before.node, before.datacenter)
                ):
                    recoveries.append(after.started_at.timestamp() - fault.at)
            # The cut-off side committed nothing while it was cut off.
            if fault.minority_window and fault.target_dc:
                lo, hi = fault.minority_window
                for a in attempts:
                    if a.datacenter != fault.target_dc:
                        continue
                    for when, what in ((a.started_at, "started"), (a.ended_at, "ended")):
                        if (
                            when is not None
                            and lo + 0.5 < when.timestamp() < hi
                            and not (what == "ended" and a.outcome in RE_EXECUTABLE)
                        ):
                            problems.append(
                                f"task {task.id} attempt {a.attempt} {what} in {a.datacenter} "
                                f"at {_fmt(when)} while it was cut off"
                            )
        slow: list[str] = []
        if fault.bound and recoveries and max(recoveries) > fault.bound:
            slow.append(f"recovery {max(recoveries):.2f} s exceeds the bound {fault.bound:.1f} s")
        if collateral:
            slow.append(f"{collateral} attempts outside the fault's target were re-run")
        stale = len(node_events(self.lab, "task.fenced", self.offsets))
        result = Result(
            scenario=self.name,
            submitted=len(self.ids),
            completed=sum(t.state is TaskState.SUCCEEDED for t in tasks),
            re_executions=re_executions,
            collateral=collateral,
            stale_rejected=stale,
            max_recovery=max(recoveries) if recoveries else None,
            bound=fault.bound,
            lost=sum(not t.state.terminal for t in tasks),
            seconds=time.monotonic() - self.started,
            max_overlap=worst_overlap,
            notes="; ".join([*fault.notes, notes] if notes else fault.notes),
        )
        if lost_results:
            result.notes += f"; {lost_results} finished runs lost with their owner"
        RESULTS.append(result)
        assert not problems, f"{self.name}: invariant violations:\n" + "\n".join(problems)
        if slow:
            raise BoundExceededError(f"{self.name}: " + "; ".join(slow))
        return result


def _fmt(when: datetime) -> str:
    return when.strftime("%H:%M:%S.%f")[:-3]


def format_table(results: list[Result]) -> str:
    header = (
        f"{'scenario':<24} {'tasks':>5} {'done':>5} {'re-exec':>7} {'collat':>6} {'stale':>5} "
        f"{'recovery s':>10} {'bound s':>7} {'overlap s':>9} {'lost':>4} {'run s':>6}  notes"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        rec = "-" if r.max_recovery is None else f"{r.max_recovery:.2f}"
        bound = "-" if not r.bound else f"{r.bound:.1f}"
        lines.append(
            f"{r.scenario:<24} {r.submitted:>5} {r.completed:>5} {r.re_executions:>7} {r.collateral:>6} "
            f"{r.stale_rejected:>5} {rec:>10} {bound:>7} {r.max_overlap:>9.2f} {r.lost:>4} "
            f"{r.seconds:>6.1f}  {r.notes}"
        )
    return "\n".join(lines)


# -- faults -------------------------------------------------------------------------------


def busiest(by_node: dict[str, list[int]], among: list[str] | None = None) -> str:
    candidates = {n: ids for n, ids in by_node.items() if among is None or n in among}
    assert candidates, f"no running tasks on {among}"
    return max(candidates, key=lambda n: len(candidates[n]))


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
