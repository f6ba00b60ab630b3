"""``taskman schedule ...`` against a real MariaDB (the CLI's run(), in process)."""

from __future__ import annotations

import json

import pytest

from taskman.cli import run
from taskman.cli.exitcodes import Exit


def cli(capsys: pytest.CaptureFixture[str], dsn: str, *argv: str) -> tuple[int, str, str]:
    code = run(["schedule", *argv, "--dsn", dsn])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_schedule_commands_round_trip(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    add = (
        "add",
        "nightly",
        "demo.tasks:add",
        "--plugin",
        "demo",
        "--args",
        "[1, 2]",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--misfire",
        "catch_up",
        "--max-catch-up",
        "3",
        "--overlap",
        "skip",
    )
    code, out, err = cli(capsys, dsn, *add, "--json")
    assert code == Exit.OK, err
    made = json.loads(out)
    assert made["cron"] == "30 2 * * *" and made["timezone"] == "Europe/Berlin"
    assert (made["misfire"], made["max_catch_up"], made["overlap"]) == ("catch_up", 3, "skip")
    assert made["args"] == [1, 2] and not made["paused"]
    # The same add again is a no-op; a different definition needs --replace.
    assert cli(capsys, dsn, *add)[0] == Exit.OK
    code, _, err = cli(capsys, dsn, *add[:-1], "allow")
    assert code == Exit.INVALID and "--replace" in err
    code, out, _ = cli(capsys, dsn, *add[:-1], "allow", "--replace", "--json")
    assert code == Exit.OK and json.loads(out)["overlap"] == "allow"

    code, out, _ = cli(
        capsys, dsn, "add", "pulse", "demo.tasks:add", "--plugin", "demo", "--every", "5"
    )
    assert code == Exit.OK and "every 5 s" in out
    code, out, _ = cli(capsys, dsn, "list")
    assert code == Exit.OK
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["nightly", "pulse"]
    assert "30 2 * * * Europe/Berlin" in out

    code, out, _ = cli(capsys, dsn, "pause", "pulse", "--json")
    assert code == Exit.OK and json.loads(out)["paused"] is True
    code, out, _ = cli(capsys, dsn, "show", "pulse")
    assert code == Exit.OK and "state: paused" in out
    code, out, _ = cli(capsys, dsn, "resume", "pulse", "--json")
    assert code == Exit.OK and json.loads(out)["paused"] is False
    code, out, _ = cli(capsys, dsn, "remove", "pulse")
    assert code == Exit.OK and "removed" in out
    code, out, _ = cli(capsys, dsn, "list", "--json")
    assert [s["name"] for s in json.loads(out)] == ["nightly"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ("--cron", "61 * * * *"),
            Exit.INVALID,
            "invalid cron expression '61 * * * *': Bad minute",
        ),
        (("--cron", "0 * * * * *"), Exit.INVALID, "use every=<seconds>"),
        (
            ("--cron", "0 9 * * *", "--timezone", "Mars/Base"),
            Exit.INVALID,
            "unknown timezone 'Mars/Base'",
        ),
        (("--every", "0"), Exit.INVALID, "every must be an integer from 1"),
    ],
)
def test_bad_schedules_get_clear_errors(
    capsys: pytest.CaptureFixture[str],
    dsn: str,
    argv: tuple[str, ...],
    code: Exit,
    message: str,
) -> None:
    got, _, err = cli(capsys, dsn, "add", "bad", "demo.tasks:add", "--plugin", "demo", *argv)
    assert got == code and message in err, err
    assert cli(capsys, dsn, "list", "--json")[1].strip() == "[]"


def test_unknown_schedule_is_not_found(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    for command in ("show", "pause", "resume", "remove"):
        code, _, err = cli(capsys, dsn, command, "ghost")
        assert code == Exit.NOT_FOUND and "no schedule named 'ghost'" in err
