"""Instants from outside (Polar's payloads, operators' queries) as UTC datetimes.

A valid ISO date can still overflow once converted to UTC (`0001-01-01T00:00:00+01:00`):
callers refuse such a date as bad input instead of failing on it later."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(moment: datetime) -> datetime:
    """The same instant in UTC (a naive datetime is taken as UTC). ValueError when the
    instant falls outside the years 1 to 9999 in UTC."""
    try:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of range once converted to UTC") from None
