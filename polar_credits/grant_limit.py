"""The one per-grant maximum: no single grant of any kind moves more units than this.

Every kind of grant is held to it: an order rule's grant (fixed, per seat, per currency
unit), an allowance period, a backfill's grant to one customer, a manual grant and a revoke.
Operators' amounts above it are refused (422) before anything starts; an amount the service
computes above it (units per seat × a huge seat count) is held: recorded in the run, shown as
the `held_over_max` CreditStatus, logged and counted, never sent to Polar
(docs/rules.md, "One per-grant maximum").
"""

from __future__ import annotations

MAX_GRANT_UNITS = 1_000_000_000
# The CreditStatus of a run whose computed amount was held (orders and allowance runs).
HELD_OVER_MAX = "held_over_max"


def over_max(units: int) -> bool:
    return units > MAX_GRANT_UNITS


def held_reason(units: int) -> str:
    """Why an amount was held, as the run records it and an operator reads it."""
    return (
        f"{units} units is above the per-grant maximum of {MAX_GRANT_UNITS} units: held, "
        "nothing sent to Polar"
    )
