"""Capped allowances (top_up_to, rollover_cap): how much a period grants from a balance that
Polar may not have recomputed yet, and that a stale balance never leads to granting twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polar_credits.models.allowances import AllowanceGrant, AllowanceRule
from polar_credits.rules import capped_units

READ_AT = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)  # the balance's modified_at
AFTER, BEFORE, SAME = 5, -5, 0  # seconds from READ_AT at which Polar stored a grant


def rule(
    *, units: int | None = None, top_up_to: int | None = None, rollover_cap: int | None = None
) -> AllowanceRule:
    return AllowanceRule(
        rule_id="monthly",
        every="1 month",
        meter="api_calls",
        meter_id="m1",
        event_name="api_usage",
        property="units",
        units=units,
        top_up_to=top_up_to,
        rollover_cap=rollover_cap,
    )


def grant(units: int, stored: int | None, already_granted: bool = False) -> AllowanceGrant:
    """A recent grant of this run, stored `stored` seconds after READ_AT (None: not stored)."""
    return AllowanceGrant(
        rule_id="monthly",
        period_start="2027-02-01T10:00:00+00:00",
        units=units,
        external_id="x",
        already_granted=already_granted,
        stored_by=None if stored is None else (READ_AT + timedelta(seconds=stored)).isoformat(),
    )


TOP_UP = rule(top_up_to=100)
ROLLOVER = rule(units=100, rollover_cap=50)


@pytest.mark.parametrize(
    ("balance", "recent", "granted", "counted"),
    [
        (0, [], 100, 0),
        (30, [], 70, 30),
        (100, [], 0, 100),
        (250, [], 0, 250),  # above the cap: nothing, never negative
        (30.5, [], 69, 30.5),  # rounds down: never above the cap
        (-20, [], 120, -20),  # overdrawn: topped up to the cap
        # The previous grant is stored after the read: Polar's balance does not show it yet.
        (30, [grant(70, AFTER)], 0, 100),
        (10, [grant(40, AFTER), grant(20, AFTER)], 30, 70),
        (10, [grant(40, BEFORE), grant(20, AFTER)], 70, 30),
        # Stored before (or at) the recompute: already in Polar's balance, not counted twice.
        (30, [grant(70, BEFORE)], 70, 30),
        (30, [grant(70, SAME)], 70, 30),
        # Not this run's grant (Polar held it already), or never stored: not added.
        (30, [grant(70, AFTER, already_granted=True)], 70, 30),
        (30, [grant(70, None)], 70, 30),
    ],
)
def test_top_up_grants_the_difference_to_the_cap(
    balance: float, recent: list[AllowanceGrant], granted: int, counted: float
) -> None:
    assert capped_units(TOP_UP, balance, READ_AT, recent) == (granted, counted)


def test_without_a_recompute_time_every_stored_recent_grant_is_counted() -> None:
    recent = [grant(40, BEFORE), grant(20, None), grant(5, AFTER, already_granted=True)]
    assert capped_units(TOP_UP, 0, None, recent) == (60, 40)


@pytest.mark.parametrize(
    ("balance", "recent", "granted", "counted"),
    [
        (0, [], 100, 0),
        (50, [], 100, 50),  # up to the cap carries over in full
        (80, [], 70, 80),  # 30 above the cap: the grant shrinks by 30
        (150, [], 0, 150),
        (500, [], 0, 500),  # far above: no grant, nothing taken away
        (50.5, [], 99, 50.5),
        # Stale balance: the previous period's grant, stored after the read, is counted.
        (20, [grant(100, AFTER)], 30, 120),
        (0, [grant(100, AFTER)], 50, 100),
        (0, [grant(100, BEFORE)], 100, 0),
        (0, [grant(100, AFTER, already_granted=True)], 100, 0),
    ],
)
def test_rollover_grants_the_units_less_what_exceeds_the_cap(
    balance: float, recent: list[AllowanceGrant], granted: int, counted: float
) -> None:
    assert capped_units(ROLLOVER, balance, READ_AT, recent) == (granted, counted)


def test_a_zero_rollover_cap_grants_only_what_was_used() -> None:
    assert capped_units(rule(units=100, rollover_cap=0), 30, READ_AT, []) == (70, 30)


# The lagging balance: Polar last recomputed at READ_AT showing `stale`; since then this run
# stored `previous` units (AFTER), so the true balance is stale + previous.
LAGGING = [(stale, previous) for stale in (-30, 0, 20, 49.5, 80, 150) for previous in (0, 30, 100)]


@pytest.mark.parametrize(("stale", "previous"), LAGGING)
def test_a_stale_balance_never_tops_up_above_the_cap(stale: float, previous: int) -> None:
    granted, counted = capped_units(TOP_UP, stale, READ_AT, [grant(previous, AFTER)])
    assert counted == stale + previous
    assert granted >= 0
    assert stale + previous + granted <= max(100, stale + previous)


@pytest.mark.parametrize(("stale", "previous"), LAGGING)
def test_a_stale_balance_never_rolls_over_above_cap_plus_units(stale: float, previous: int) -> None:
    granted, counted = capped_units(ROLLOVER, stale, READ_AT, [grant(previous, AFTER)])
    assert counted == stale + previous
    assert 0 <= granted <= 100
    assert stale + previous + granted <= max(50 + 100, stale + previous)


@pytest.mark.parametrize(
    ("capped", "true_balance_after_two_periods"),
    [(TOP_UP, 100), (ROLLOVER, 150)],
    ids=["top_up_to", "rollover_cap"],
)
def test_two_periods_before_polar_recomputes_do_not_grant_twice(
    capped: AllowanceRule, true_balance_after_two_periods: int
) -> None:
    first, _ = capped_units(capped, 0, READ_AT, [])
    # The next period is due before Polar recomputed: the read still shows 0.
    second, counted = capped_units(capped, 0, READ_AT, [grant(first, AFTER)])
    assert (first, counted) == (100, 100)
    assert first + second == true_balance_after_two_periods
