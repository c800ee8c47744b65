"""One clock for every timestamp the stand-in writes, so they compare consistently."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    return time.time()


def iso(ts: float) -> str:
    # Fixed width with microseconds and "Z", as Polar writes them: also sorts as text.
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> float:
    """Unix seconds of an ISO 8601 string; naive values are taken as UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
