"""Moments from outside (an operator's filter, a webhook's dates) as UTC, or refused.

A valid ISO date near the ends of the calendar (`0001-01-01T00:00:00+01:00`,
`9999-12-31T23:59:59-01:00`) has no UTC equivalent that `datetime` can hold: converting it
raises OverflowError, which would surface as a 500. Every conversion of an outside moment to
UTC goes through `to_utc`, so such a value is a clear refusal instead.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a naive one is taken as UTC already); ValueError when it is out of
    range once converted (a ValueError reads as a validation error in pydantic)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of range once converted to UTC") from None
