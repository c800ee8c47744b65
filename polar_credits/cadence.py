"""Allowance cadences (`every = "1 month"`): when each grant period of a subscription starts.

Pure calendar arithmetic, safe inside workflow code. Every period start is counted from the
anchor (the subscription's own start), never from the previous period, so month ends do not
drift: an anchor on Jan 31 gives Feb 28 (29 in a leap year), then Mar 31.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

UNITS = ("day", "week", "month", "year")
_EVERY = re.compile(r"\s*([0-9]{1,4})\s+(day|week|month|year)s?\s*", re.ASCII)


@dataclass(frozen=True)
class Cadence:
    count: int
    unit: str

    def __str__(self) -> str:
        return f"{self.count} {self.unit}{'' if self.count == 1 else 's'}"

    def start(self, anchor: datetime, index: int) -> datetime:
        """The start of grant period `index` (0 is the anchor itself)."""
        steps = self.count * index
        if self.unit == "day":
            return anchor + timedelta(days=steps)
        if self.unit == "week":
            return anchor + timedelta(weeks=steps)
        months = steps if self.unit == "month" else 12 * steps
        return _add_months(anchor, months)

    def index_at(self, anchor: datetime, moment: datetime) -> int:
        """The period that holds `moment`: the largest index whose start is not after it
        (0 for a moment before the anchor)."""
        if moment <= anchor:
            return 0
        # An estimate from the average length, corrected by stepping: exact for any calendar.
        approx = {"day": 1.0, "week": 7.0, "month": 30.436875, "year": 365.2425}[self.unit]
        index = max(0, int((moment - anchor).total_seconds() / 86400 / (approx * self.count)))
        while index > 0 and self.start(anchor, index) > moment:
            index -= 1
        while self.start(anchor, index + 1) <= moment:
            index += 1
        return index


def parse_cadence(text: str) -> Cadence:
    """`"1 month"`, `"2 weeks"`, `"1 year"`: a positive count and a unit (day, week, month,
    year). Raises ValueError with what is accepted."""
    match = _EVERY.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f'{text!r} is not a cadence: write a count and a unit, e.g. "1 month" or '
            f'"2 weeks" (units: {", ".join(UNITS)})'
        )
    return Cadence(count=int(match.group(1)), unit=match.group(2))


def _add_months(at: datetime, months: int) -> datetime:
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    # Jan 31 + 1 month is Feb 28/29: clamp to the month's last day, as billing does.
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)
