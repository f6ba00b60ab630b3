"""The transition table is what the SQL does: read every state change out of both dialects.

Each ``UPDATE tasks SET ... state = <to> ... WHERE ... state = <from>`` statement of
``queries.py`` and ``queries_sqlite.py`` is one or more (from, to) pairs. Together
they must be exactly ``states.ALLOWED_TRANSITIONS``. A statement whose to-state is
a parameter (``state = %s``) may reach whatever the table allows from its
from-state: the store checks the parameter against the table
(``tests/integration/test_store_fencing.py`` proves the refusal on both backends).
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from taskman.states import ALLOWED_TRANSITIONS, TaskState
from taskman.store import queries, queries_sqlite

Pair = tuple[TaskState, TaskState]
UPDATE = re.compile(r"^\s*UPDATE\s+tasks\s+SET\s+(?P<set>.*?)\s+WHERE\s+(?P<where>.*)$", re.S)
TO = re.compile(r"(?<![\w.])state\s*=\s*('(?P<to>\w+)'|(?P<param>%s))")
FROM_ONE = re.compile(r"(?<![\w.])state\s*=\s*'(?P<state>\w+)'")
FROM_MANY = re.compile(r"(?<![\w.])state\s+IN\s*\((?P<states>[^)]*)\)")


def transitions(name: str, sql: str) -> set[Pair]:
    """The (from, to) pairs one statement can make; empty if it changes no task's state."""
    match = UPDATE.match(sql)
    if match is None:
        return set()
    to = TO.search(match["set"])
    if to is None:
        return set()
    where = match["where"]
    sources = [m["state"] for m in FROM_ONE.finditer(where)]
    for many in FROM_MANY.finditer(where):
        sources += re.findall(r"'(\w+)'", many["states"])
    if not sources:
        raise AssertionError(f"{name} changes a task's state without naming the state it leaves")
    froms = {TaskState(s) for s in sources}
    if to["param"]:
        return {(f, t) for f in froms for t in ALLOWED_TRANSITIONS[f]}
    return {(f, TaskState(to["to"])) for f in froms}


def statements(module: ModuleType) -> dict[str, str]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str)
    }


def table_pairs() -> set[Pair]:
    return {(f, t) for f, targets in ALLOWED_TRANSITIONS.items() for t in targets}


@pytest.mark.parametrize("module", [queries, queries_sqlite], ids=["mysql", "sqlite"])
def test_the_statements_make_exactly_the_transitions_of_the_table(module: ModuleType) -> None:
    made: dict[Pair, list[str]] = {}
    for name, sql in statements(module).items():
        for pair in transitions(name, sql):
            made.setdefault(pair, []).append(name)
    assert set(made) - table_pairs() == set(), "a statement makes a transition the table lacks"
    assert table_pairs() - set(made) == set(), "the table allows a transition no statement makes"
    # Spot checks that the reading above is the one meant.
    assert made[(TaskState.QUEUED, TaskState.RUNNING)] == ["CLAIM"]
    assert made[(TaskState.FAILED, TaskState.QUEUED)] == ["RETRY_TASK"]
    assert sorted(made[(TaskState.RUNNING, TaskState.ABORTED)]) == ["FINISH_FAILED"]


def test_the_reader_finds_sources_targets_and_parameters() -> None:
    q, r, f = TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED
    assert transitions("X", "UPDATE tasks SET heartbeat_at = NOW(6) WHERE id = %s") == set()
    assert transitions("X", "SELECT state FROM tasks WHERE state = 'queued'") == set()
    assert transitions(
        "X", "UPDATE tasks SET state = 'failed', x = 1 WHERE state IN ('queued', 'running')"
    ) == {(q, f), (r, f)}
    assert transitions("X", "UPDATE tasks SET state = %s WHERE id = %s AND state = 'running'") == {
        (r, t) for t in ALLOWED_TRANSITIONS[r]
    }
    # A new statement that does not say which state it leaves is refused, not ignored.
    with pytest.raises(AssertionError, match="without naming"):
        transitions("X", "UPDATE tasks SET state = 'queued' WHERE id = %s")


def test_every_state_has_an_entry_and_only_retry_leaves_a_terminal_state() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(TaskState)
    for state in TaskState:
        if state.terminal:
            assert ALLOWED_TRANSITIONS[state] <= {TaskState.QUEUED}, state
        else:
            assert ALLOWED_TRANSITIONS[state], state
