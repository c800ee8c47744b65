"""Every event the service sends to Polar's Events API: a negative event raises a customer's
balance in a Sum meter (a grant), a positive one takes credit back (a revoke).

Each format is pinned by tests/test_identity.py. A Sum meter only counts JSON numbers: units
are always ints, never strings like "-10". Metadata carries ids and the operator's reason,
never a customer's email or name.
"""

from __future__ import annotations

from typing import Any

from polar_credits.backfills import BackfillPageInput
from polar_credits.identity import backfill_external_id, safe_key_part
from polar_credits.models.allowances import AllowanceGrantInput
from polar_credits.models.grants import Grant
from polar_credits.operator_grants import ManualGrantIngestInput, RevokeIngestInput

# Every event's `source`: what an operator filters on in Polar to see this service's events.
SOURCE = "polar-credits"

PolarEvent = dict[str, Any]


def grant_event(grant: Grant) -> PolarEvent:
    """An order grant: raises the customer's balance by `grant.units`."""
    return {
        "name": grant.event_name,
        "customer_id": grant.customer_id,
        "external_id": grant.external_id,
        "metadata": {
            grant.property: -grant.units,
            "rule_id": grant.rule_id,
            "order_id": safe_key_part(grant.order_id),  # within Polar's 500 characters
            "reason": grant.reason,
            "source": SOURCE,
        },
    }


def allowance_event(input: AllowanceGrantInput, units: int, external_id: str) -> PolarEvent:
    """One allowance period: raises the customer's balance by `units`."""
    rule = input.rule
    return {
        "name": rule.event_name,
        "customer_id": input.customer_id,
        "external_id": external_id,
        "metadata": {
            rule.property: -units,
            "rule_id": rule.rule_id,
            "subscription_id": safe_key_part(input.subscription_id),
            "period_start": input.period_start,
            "reason": "allowance",
            "source": SOURCE,
        },
    }


def manual_grant_event(input: ManualGrantIngestInput) -> PolarEvent:
    """An operator's manual grant, keyed on the idempotency key."""
    return {
        "name": input.meter.event_name,
        "customer_id": input.customer_id,
        "external_id": input.external_id,
        "metadata": {
            input.meter.property: -input.units,
            "reason": input.reason,
            "source": SOURCE,
            "grant": "manual",
        },
    }


def revoke_events(input: RevokeIngestInput) -> list[PolarEvent]:
    """The compensating events of a revoke, each keyed on the grant event it revokes."""
    return [
        {
            "name": planned.meter.event_name,
            "customer_id": input.customer_id,
            "external_id": planned.external_id,
            "metadata": {
                planned.meter.property: planned.units,  # positive: takes credit back
                "reason": input.reason,
                "source": SOURCE,
                "revokes": planned.grant_external_id,
            },
        }
        for planned in input.events
    ]


def backfill_event(input: BackfillPageInput, customer_id: str) -> PolarEvent:
    """A backfill's grant to one customer: raises the balance by the backfill's units."""
    return {
        "name": input.meter.event_name,
        "customer_id": customer_id,
        "external_id": backfill_external_id(input.key, customer_id),
        "metadata": {
            input.meter.property: -input.units,
            "backfill": input.key,
            "reason": input.reason,
            "source": SOURCE,
        },
    }
