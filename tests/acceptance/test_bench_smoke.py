"""The benchmark suite runs end to end at tiny sizes (its speed is not judged here)."""

from __future__ import annotations

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
    for family in (*families, "submit_many"):
        assert any(name.startswith(family) for name in figures), family
