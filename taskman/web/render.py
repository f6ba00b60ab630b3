"""How the admin UI's pages render: the Jinja environment, its filters, the throughput chart."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from taskman.store.dashboard import Bucket

TEMPLATES = Path(__file__).resolve().parent / "templates"


# -- formatting ----------------------------------------------------------------
def _ts(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _ago(value: datetime | float | None) -> str:
    if value is None:
        return "—"
    stamp = value.timestamp() if isinstance(value, datetime) else value
    delta = time.time() - stamp
    if delta < 0:
        return "in " + _seconds(-delta)
    return _seconds(delta) + " ago"


def _between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{max(0.0, min(1.0, value)) * 100:.0f}%"


def _fence(value: int) -> Markup:
    # The token is a zxid: its high 32 bits are ZooKeeper's epoch, worth seeing.
    return Markup('{} <span class="muted">(0x{:x})</span>').format(value, value)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # task args, results, tracebacks and output may hold HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=_ts, ago=_ago, seconds=_seconds, pretty=_pretty, pct=_pct, fence=_fence, between=_between
    )
    return env


def throughput_bars(buckets: list[Bucket], width: int = 600, height: int = 120) -> dict[str, Any]:
    """Stacked bars for the throughput chart, oldest bucket on the left."""
    ordered = list(reversed(buckets))
    peak = max([b.total for b in ordered] + [1])
    slot = width / max(len(ordered), 1)
    bars = []
    for i, bucket in enumerate(ordered):
        y = float(height)
        segments = []
        for state in ("succeeded", "failed", "aborted", "expired"):
            n = bucket.counts.get(state, 0)
            if n:
                h = max(n / peak * (height - 4), 1.5)
                y -= h
                segments.append({"state": state, "y": round(y, 1), "h": round(h, 1), "n": n})
        label = "now" if bucket.age == 0 else f"-{bucket.age * 5}m"
        bars.append(
            {
                "x": round(i * slot + 3, 1),
                "w": round(slot - 6, 1),
                "segments": segments,
                "label": label,
                "bucket": bucket,
            }
        )
    totals = {
        state: sum(b.counts.get(state, 0) for b in buckets)
        for state in ("succeeded", "failed", "aborted", "expired")
    }
    return {"bars": bars, "width": width, "height": height, "peak": peak, "totals": totals}
