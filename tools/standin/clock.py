"""The stand-in's one clock: real time (optionally skewed forward) or a manual clock tests move.

Every timestamp the stand-in writes comes from `now()`; only signatures use `wall()`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

MODES = ("real", "manual")


class Clock:
    def __init__(self, mode: str = "real", start: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"clock mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        # Manual: the time itself. Real: a forward skew added by advance().
        self._manual = time.time() if start is None else start
        self._skew = 0.0

    @property
    def manual(self) -> bool:
        return self.mode == "manual"

    def now(self) -> float:
        return self._manual if self.manual else time.time() + self._skew

    def advance(self, seconds: float) -> None:
        if self.manual:
            self._manual += seconds
        else:
            self._skew += seconds

    def set(self, at: float) -> None:
        if not self.manual:
            raise ValueError("the clock can be set only in manual mode")
        self._manual = at


_clock = Clock()


def install(clock: Clock) -> Clock:
    """Makes `clock` the process's clock (one app per process)."""
    global _clock
    _clock = clock
    return clock


def current() -> Clock:
    return _clock


def now() -> float:
    return _clock.now()


def wall() -> float:
    # Webhook signatures are checked against the receiver's real clock (5 min tolerance).
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
