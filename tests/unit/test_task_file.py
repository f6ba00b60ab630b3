"""`taskman submit --from-file`: reading JSON lines, and the flags it refuses (no database)."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskman.cli import build_parser, run
from taskman.cli.exitcodes import Exit
from taskman.cli.task_file import PER_TASK_FLAGS, read_task_file
from taskman.errors import ValidationError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_lines_become_items_and_remember_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"function": "demo.tasks:add", "plugin": "demo", "args": [1, 2]}\n'
        "\n"
        '   \n{"function": "demo.tasks:add", "plugin": "demo", '
        '"not_before": "2030-01-01T10:00:00+02:00", "not_after": "2030-01-02T00:00:00Z", '
        '"limits": {"memory_mb": 64}}\n',
    )
    tasks = read_task_file(path)
    assert tasks.name == path
    assert tasks.lines == [1, 4]
    assert tasks.items[0] == {"function": "demo.tasks:add", "plugin": "demo", "args": [1, 2]}
    second = tasks.items[1]
    assert second["not_before"] == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    assert second["not_after"] == datetime(2030, 1, 2, 0, 0, tzinfo=UTC)
    assert second["limits"] == {"memory_mb": 64}


def test_stdin_is_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"function": "m:f", "plugin": "p"}\n'))
    tasks = read_task_file("-")
    assert (tasks.name, tasks.lines, tasks.items) == (
        "<stdin>",
        [1],
        [{"function": "m:f", "plugin": "p"}],
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"function": "m:f", "plugin": "p",}', "tasks.jsonl line 3: not valid JSON"),
        ('["m:f", "p"]', "tasks.jsonl line 3: expected a JSON object of a task's fields, got list"),
        (
            '{"function": "m:f", "plugin": "p", "not_after": "tomorrow"}',
            "tasks.jsonl line 3: not_after: 'tomorrow' is not an ISO 8601 time",
        ),
        (
            '{"function": "m:f", "plugin": "p", "not_before": "2030-01-01T00:00:00"}',
            "tasks.jsonl line 3: not_before: '2030-01-01T00:00:00' has no timezone",
        ),
        (
            '{"function": "m:f", "plugin": "p", "not_after": 1893456000}',
            "tasks.jsonl line 3: not_after must be an ISO 8601 time with a timezone, as a string",
        ),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    good = '{"function": "m:f", "plugin": "p"}\n'
    path = write(tmp_path, good + "\n" + line + "\n" + good)
    with pytest.raises(ValidationError) as caught:
        read_task_file(path)
    assert str(caught.value).startswith(f"{Path(path).parent}/{message}")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"cannot read .*missing\.jsonl"):
        read_task_file(str(tmp_path / "missing.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"function": "m:f", "plugin": "\xe9"}\n')
    with pytest.raises(ValidationError, match=r"cannot read .*latin1\.jsonl"):
        read_task_file(str(tmp_path / "latin1.jsonl"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["m:f", "--from-file", "x.jsonl"], "not allowed with argument function"),
        ([], "one of the arguments function --from-file is required"),
        (["m:f"], "the following arguments are required: --plugin"),
        (
            ["--from-file", "x.jsonl", "--plugin", "demo", "--limit", "open_files=9", "--wait"],
            "--plugin, --limit, --wait cannot be given with it",
        ),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        run(["submit", *argv, "--dsn", "sqlite:///./never-opened.sqlite3"])
    assert stopped.value.code == Exit.USAGE
    assert message in capsys.readouterr().err


def test_every_flag_of_one_task_is_refused_with_from_file() -> None:
    # A new per-task flag must be listed, or --from-file would silently ignore it.
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    submit = sub.choices["submit"]
    batch_level = {"help", "function", "from_file", "allow_unserved", "quiet", "dsn", "json"}
    batch_level |= {"zookeeper", "cluster"}  # the wake-up signal: one per batch
    flags = {
        a.dest: (a.option_strings[-1], a.default)
        for a in submit._actions
        if a.dest not in batch_level | {"retry_deadline"}
    }
    assert flags == {dest: (flag, default) for dest, flag, default in PER_TASK_FLAGS}
