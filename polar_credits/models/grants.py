"""Grants as they go to Polar: one negative event each, and Polar's answer."""


from dataclasses import dataclass
from enum import StrEnum


class PolarErrorType(StrEnum):
    """ApplicationError types that retry policies and the workflow refer to by name."""

    GRANT_REJECTED = "PolarRejectedGrant"  # a 422: no retry can fix it
    RATE_LIMITED = "PolarRateLimited"
    UNAVAILABLE = "PolarUnavailable"
    AUTH = "PolarAuthError"
    ORDER_NOT_FOUND = "PolarOrderNotFound"  # a preview by order id: Polar has no such order
    # Not Polar's: an amount above the per-grant maximum, held and never sent (no retry).
    GRANT_OVER_MAX = "GrantOverMaximum"


@dataclass
class Grant:
    """One rule's credit for one order: becomes one negative event in Polar."""

    rule_id: str
    meter: str
    meter_id: str
    event_name: str
    property: str
    units: int
    customer_id: str
    order_id: str
    external_id: str
    reason: str
    # The rule's stable key (its `key`, else its id), which `external_id` is built from; None
    # in grants decided before rules had keys (their key was the rule id).
    rule_key: str | None = None


@dataclass
class IngestResult:
    """Polar's answer for an order's events.

    Several orders share one ingest call, and Polar counts `inserted` and `duplicates` for
    the whole call, so they are exact for the order only when the call's answer says so
    (all inserted, all duplicates, or the call held only this order); otherwise None.
    `confirmed` is always the number of the order's events Polar holds now.
    """

    inserted: int | None
    duplicates: int | None
    confirmed: int = 0
    # Polar's clock (ISO) just after the call that confirmed the events: a meter recomputed
    # at or after it counts them.
    stored_by: str | None = None
    batch_events: int = 0
    # The first attempt's answer: duplicates then cannot be this run's own earlier call.
    first_attempt: bool | None = None

    def granted_before(self, grants: int) -> bool:
        """Polar held every one of the order's events before this run sent them."""
        return bool(self.first_attempt) and self.inserted == 0 and self.duplicates == grants


@dataclass
class IngestGrantsInput:
    grants: list[Grant]
