"""Amounts: how many units a rule grants. Fixed, per seat, per currency unit (rounded, held
within min/max), a capped allowance period (top up to, rollover cap), and what a
per-customer cap leaves. Pure arithmetic on facts already known: no I/O, no decisions.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from polar_credits.models.ledger import CapOutcome, CapReservation

if TYPE_CHECKING:
    from polar_credits.models.allowances import AllowanceGrant, AllowanceRule
    from polar_credits.models.facts import OrderFacts
    from polar_credits.rules.schema import Rule

# Currencies whose amounts Polar (through Stripe) counts in whole units, not hundredths:
# Stripe's list of zero-decimal currencies.
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
ROUNDING = {"down": ROUND_FLOOR, "up": ROUND_CEILING, "nearest": ROUND_HALF_UP}


def fixed_units(rule: Rule, seats: int | None) -> int | None:
    """Fixed units, or units per seat (a purchase without seats counts as one seat)."""
    if rule.units_per_seat is not None:
        return rule.units_per_seat * max(seats or 1, 1)
    return rule.units


def order_units(rule: Rule, order: OrderFacts) -> int:
    """What a rule grants for an order it matches; 0 means no grant."""
    if rule.units_per_currency_unit is None:
        return fixed_units(rule, order.seats) or 0
    assert rule.rounding is not None
    exact = rule.units_per_currency_unit * currency_units(order.net_amount, order.currency)
    units = int(exact.to_integral_value(rounding=ROUNDING[rule.rounding]))
    if rule.min_units is not None:
        units = max(units, rule.min_units)
    if rule.max_units is not None:
        units = min(units, rule.max_units)
    return max(units, 0)


def currency_units(amount: int, currency: str) -> Decimal:
    """Polar's integer minor units (cents) as currency units; zero-decimal currencies (JPY,
    KRW, ...) are already whole units."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return Decimal(amount)
    return Decimal(amount) / 100


# -- an allowance period -----------------------------------------------------------------


def reads_balance(rule: AllowanceRule) -> bool:
    """Whether a period's amount depends on the customer's balance (a capped rule)."""
    return rule.top_up_to is not None or rule.rollover_cap is not None


def period_units(rule: AllowanceRule) -> int:
    """A period's amount for a rule that does not read the balance."""
    return rule.units or 0


def capped_units(
    rule: AllowanceRule, balance: float, modified_at: datetime | None, recent: list[AllowanceGrant]
) -> tuple[int, float]:
    """What a capped rule grants, from a balance Polar may not have recomputed yet.

    The balance counted is Polar's, plus this run's own grants stored after Polar last
    recomputed it (the read cannot show them yet). Usage not recomputed yet is not counted,
    which only makes the balance look higher: the grant can come out smaller than it should,
    never larger. Returns (units to grant, balance counted)."""
    pending = sum(
        g.units
        for g in recent
        if not g.already_granted
        and g.stored_by is not None
        and (modified_at is None or datetime.fromisoformat(g.stored_by) > modified_at)
    )
    counted = balance + pending
    if rule.top_up_to is not None:
        return max(0, int(rule.top_up_to - counted)), counted
    assert rule.units is not None and rule.rollover_cap is not None
    # Unused credit above the cap is not carried: the new period's grant shrinks by it
    # (credits are never taken away, so a balance far above the cap just gets no grant).
    excess = max(0.0, counted - rule.rollover_cap)
    return max(0, int(rule.units - excess)), counted


# -- a per-customer cap ------------------------------------------------------------------


def cap_outcome(reservation: CapReservation, granted_before: int) -> CapOutcome:
    """What a ledger holding `granted_before` units of the rule allows this reservation."""
    allowed = max(0, min(reservation.units, reservation.cap - granted_before))
    return CapOutcome(
        rule_key=reservation.rule_key,
        grant_id=reservation.grant_id,
        wanted=reservation.units,
        allowed=allowed,
        granted_before=granted_before,
        cap=reservation.cap,
    )
