"""Billing period arithmetic: the end of the n-th interval after an anchor, calendar-aware."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

INTERVALS = ("day", "week", "month", "year")


def _add_months(at: datetime, months: int) -> datetime:
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    # Jan 31 + 1 month is Feb 28/29: clamp to the month's last day, as billing does.
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def shift(anchor: float, interval: str, count: int) -> float:
    """`anchor` plus `count` intervals, counted from the anchor so month ends do not drift."""
    at = datetime.fromtimestamp(anchor, UTC)
    if interval == "day":
        moved = at + timedelta(days=count)
    elif interval == "week":
        moved = at + timedelta(weeks=count)
    elif interval == "month":
        moved = _add_months(at, count)
    elif interval == "year":
        moved = _add_months(at, 12 * count)
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return moved.timestamp()
