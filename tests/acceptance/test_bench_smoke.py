"""The benchmark suite runs end to end at tiny sizes (its speed is not judged here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    broken = {name: f for name, f in figures.items() if isinstance(f, dict) and "error" in f}
    assert not broken, broken
    families = ("runner_start", "throughput", "latency", "claims", "recovery", "memory")
    for family in (*families, "submit_many", "celery"):
        assert any(name.startswith(family) for name in figures), family
    celery_runs = [f for name, f in figures.items() if name.startswith("celery[throughput,")]
    if _celery_installed() and Path("/usr/lib/rabbitmq/bin/rabbitmq-server").is_file():
        # The bench starts its own broker now: with both installed, Celery is measured.
        assert celery_runs, figures.get("celery")
        assert all(f["results_stored"] == f["tasks"] for f in celery_runs), celery_runs
        assert "median_ms" in figures["celery[latency,prefork 2]"]
    elif not celery_runs:
        assert "skipped" in figures["celery"]  # and says why


def _celery_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("celery", "sqlalchemy"))
