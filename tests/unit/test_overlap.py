"""The chaos checker's overlap rule over an execution log's beats."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.support import overlap, read_beats


def test_attempts_one_after_the_other_do_not_overlap(tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    Path(f"{log}.beats").write_text("1 1 10.0\n1 1 10.5\n1 2 11.0\n1 2 12.0\n2 1 10.0\n")
    assert overlap(read_beats(log), 1) == 0.0
    assert overlap(read_beats(log), 2) == 0.0


def test_an_attempt_seen_alive_after_the_next_started_overlaps_by_the_difference(
    tmp_path: Path,
) -> None:
    log = tmp_path / "exec.log"
    # Attempt 1 still beat at 12.4 while attempt 2 started at 12.0; a torn line is ignored.
    Path(f"{log}.beats").write_text("3 1 10.0\n3 2 12.0\n3 1 12.4\n3 2 13.0\n3 1\n")
    assert abs(overlap(read_beats(log), 3) - 0.4) < 1e-9
