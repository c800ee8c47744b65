"""Allowance cadences: what `every` accepts, and when each grant period starts (no drift)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polar_credits.cadence import Cadence, parse_cadence


def at(year: int, month: int, day: int, hour: int = 10) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "count", "unit", "shown"),
    [
        ("1 month", 1, "month", "1 month"),
        ("1 months", 1, "month", "1 month"),
        ("2 weeks", 2, "week", "2 weeks"),
        ("2 week", 2, "week", "2 weeks"),
        ("1 day", 1, "day", "1 day"),
        ("1 year", 1, "year", "1 year"),
        ("12 months", 12, "month", "12 months"),
        ("9999 days", 9999, "day", "9999 days"),
        ("  3   years ", 3, "year", "3 years"),
    ],
)
def test_accepted_cadences(text: str, count: int, unit: str, shown: str) -> None:
    cadence = parse_cadence(text)
    assert (cadence.count, cadence.unit, str(cadence)) == (count, unit, shown)


@pytest.mark.parametrize(
    "text",
    ["0 month", "month", "1 fortnight", "1.5 month", "", "10000 days", "-1 month", "1 monthly"],
)
def test_refused_cadences_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_cadence(text)
    message = str(err.value)
    assert f"{text!r} is not a cadence" in message
    assert '"1 month"' in message and "day, week, month, year" in message


@pytest.mark.parametrize(
    ("every", "anchor", "expected"),
    [
        # Counted from the anchor: Jan 31 gives every month's last day, not Feb 28 → Mar 28.
        (
            "1 month",
            at(2027, 1, 31),
            [at(2027, 1, 31), at(2027, 2, 28), at(2027, 3, 31), at(2027, 4, 30), at(2027, 5, 31)],
        ),
        ("1 month", at(2027, 12, 31), [at(2027, 12, 31), at(2028, 1, 31), at(2028, 2, 29)]),
        ("1 month", at(2027, 1, 30), [at(2027, 1, 30), at(2027, 2, 28), at(2027, 3, 30)]),
        ("2 months", at(2027, 1, 31), [at(2027, 1, 31), at(2027, 3, 31), at(2027, 5, 31)]),
        ("2 months", at(2027, 12, 31), [at(2027, 12, 31), at(2028, 2, 29), at(2028, 4, 30)]),
        ("1 year", at(2028, 2, 29), [at(2028, 2, 29), at(2029, 2, 28), at(2030, 2, 28)]),
        ("1 week", at(2027, 1, 31), [at(2027, 1, 31), at(2027, 2, 7), at(2027, 2, 14)]),
        ("2 weeks", at(2027, 12, 24), [at(2027, 12, 24), at(2028, 1, 7), at(2028, 1, 21)]),
        ("1 day", at(2028, 2, 28), [at(2028, 2, 28), at(2028, 2, 29), at(2028, 3, 1)]),
    ],
)
def test_period_starts(every: str, anchor: datetime, expected: list[datetime]) -> None:
    cadence = parse_cadence(every)
    assert [cadence.start(anchor, i) for i in range(len(expected))] == expected


@pytest.mark.parametrize(
    ("every", "anchor", "index", "expected"),
    [
        ("1 month", at(2027, 1, 31), 12, at(2028, 1, 31)),
        ("1 month", at(2027, 1, 31), 13, at(2028, 2, 29)),  # leap year
        ("1 month", at(2027, 1, 31), 14, at(2028, 3, 31)),  # no drift after February
        ("1 year", at(2028, 2, 29), 4, at(2032, 2, 29)),
        ("1 year", at(2028, 2, 29), 5, at(2033, 2, 28)),
        ("1 week", at(2027, 1, 1), 52, at(2027, 12, 31)),
        ("3 days", at(2027, 1, 1), 100, at(2027, 10, 28)),
    ],
)
def test_far_period_starts(every: str, anchor: datetime, index: int, expected: datetime) -> None:
    assert parse_cadence(every).start(anchor, index) == expected


def test_period_starts_keep_the_anchor_time_and_zone() -> None:
    anchor = datetime(2027, 1, 31, 23, 59, 58, tzinfo=UTC)
    start = Cadence(1, "month").start(anchor, 1)
    assert start == datetime(2027, 2, 28, 23, 59, 58, tzinfo=UTC)
    assert start.tzinfo is UTC


ANCHORS = [at(2027, 1, 29), at(2027, 1, 30), at(2027, 1, 31), at(2027, 8, 31), at(2028, 2, 29)]
CADENCES = ["1 month", "2 months", "1 week", "1 year", "3 days"]


@pytest.mark.parametrize("anchor", ANCHORS, ids=lambda a: a.date().isoformat())
@pytest.mark.parametrize("every", CADENCES)
def test_index_at_finds_the_period_holding_the_moment(every: str, anchor: datetime) -> None:
    cadence = parse_cadence(every)
    moment = anchor - timedelta(days=3)
    while moment < anchor + timedelta(days=3 * 366):
        index = cadence.index_at(anchor, moment)
        if moment < anchor:
            assert index == 0, moment
        else:
            assert cadence.start(anchor, index) <= moment < cadence.start(anchor, index + 1), moment
        moment += timedelta(hours=13)


@pytest.mark.parametrize("anchor", ANCHORS, ids=lambda a: a.date().isoformat())
@pytest.mark.parametrize("every", CADENCES)
def test_index_at_a_period_start_is_that_period(every: str, anchor: datetime) -> None:
    cadence = parse_cadence(every)
    for k in range(40):
        start = cadence.start(anchor, k)
        assert cadence.index_at(anchor, start) == k
        if k:
            assert cadence.index_at(anchor, start - timedelta(microseconds=1)) == k - 1


def test_index_at_before_the_anchor_is_zero_and_far_moments_are_exact() -> None:
    anchor = at(2027, 1, 31)
    monthly = Cadence(1, "month")
    assert monthly.index_at(anchor, anchor - timedelta(days=400)) == 0
    assert monthly.index_at(anchor, anchor) == 0
    assert monthly.index_at(anchor, at(2127, 1, 31)) == 1200
    assert monthly.index_at(anchor, at(2127, 1, 31) - timedelta(seconds=1)) == 1199
