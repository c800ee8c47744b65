"""From Polar's order object to the facts a crediting decision may use.

Reads only the fields a decision uses, and reads them leniently: a value Polar adds later
(a new status, a new billing reason, a new field anywhere) must never make a correctly
signed delivery unreadable. Deliberately leaves out everything personal (the customer's
email, name, billing address) and every metadata key the rules do not name: the result is
written into workflow histories.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionFacts
from polar_credits.models.facts import MetadataValue, OrderFacts
from polar_credits.moments import to_utc
from polar_credits.rules import BillingReason, MetadataKeys

# Order statuses and billing reasons this release knows (POLAR_FACTS.md, "Orders and
# subscriptions"). Anything else is Polar's news: accepted, granted nothing, counted.
KNOWN_STATUSES = frozenset({"pending", "paid", "refunded", "partially_refunded", "void", "draft"})
KNOWN_BILLING_REASONS = frozenset(get_args(BillingReason))

# Polar's ids are 36-character UUIDs. Far longer ones cannot be Polar's, and Temporal caps
# search attribute values; an order id of any length up to this is accepted (its workflow
# id is hashed beyond 200 characters), customer and product ids up to 256.
MAX_ORDER_ID_CHARS = 4096
MAX_REFERENCE_ID_CHARS = 256
# Polar's own limit on a metadata string value.
MAX_METADATA_VALUE_CHARS = 500
# Amounts are integer cents; beyond 2**53 a JSON number is no longer exact anywhere.
MAX_AMOUNT = 2**53

Amount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]


class WithMetadata(BaseModel):
    """An order's or subscription's `product` or `customer` object: only its metadata is
    read (never the customer's email, name or address)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    metadata: dict[str, Any] | None = None


# Every date of a subscription the service converts to UTC (grant keys, timers, ordering).
SUBSCRIPTION_DATE_FIELDS = (
    "modified_at",
    "started_at",
    "current_period_start",
    "current_period_end",
    "current_meter_period_start",
    "ends_at",
    "ended_at",
)


class SubscriptionSnapshot(BaseModel):
    """The subscription as the order recorded it when the order was made, or as a
    `subscription.*` webhook shows it now (`PolarSubscription`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr | None = Field(default=None, min_length=1)
    status: StrictStr | None = None
    customer_id: StrictStr | None = None
    product_id: StrictStr | None = None
    modified_at: datetime | None = None
    started_at: datetime | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    current_meter_period_start: datetime | None = None
    cancel_at_period_end: bool = False
    ends_at: datetime | None = None
    ended_at: datetime | None = None
    seats: Amount | None = None
    metadata: dict[str, Any] | None = None
    # Present on a `subscription.*` webhook's data; an order's snapshot lacks them (the
    # order's own `product` and `customer` stand in).
    product: WithMetadata | None = None
    customer: WithMetadata | None = None

    def date_refusal(self, label: str = "subscription") -> str | None:
        """Why one of its dates can never be read, or None: a valid ISO date can still
        overflow once converted to UTC, where every grant key and timer is computed."""
        return _date_refusal(
            label, {name: getattr(self, name) for name in SUBSCRIPTION_DATE_FIELDS}
        )


class PolarSubscription(SubscriptionSnapshot):
    """The data of a `subscription.*` webhook: Polar's subscription, the fields read."""

    id: StrictStr = Field(min_length=1)
    status: StrictStr
    customer_id: StrictStr = Field(min_length=1)

    def refusal(self) -> str | None:
        for name in ("id", "customer_id", "product_id"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_REFERENCE_ID_CHARS:
                return f"subscription {name} is longer than {MAX_REFERENCE_ID_CHARS} characters"
        return self.date_refusal()


class PaidOrder(BaseModel):
    """The part of Polar's order object the service reads; every other field is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr = Field(min_length=1)
    customer_id: StrictStr = Field(min_length=1)
    product_id: StrictStr | None = None
    subscription_id: StrictStr | None = None
    status: StrictStr
    billing_reason: StrictStr
    subscription: SubscriptionSnapshot | None = None
    currency: StrictStr = "usd"
    subtotal_amount: Amount = 0
    discount_amount: Amount = 0
    net_amount: Amount = 0
    tax_amount: Amount = 0
    total_amount: Amount = 0
    refunded_amount: Amount = 0
    seats: Amount | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    product: WithMetadata | None = None
    customer: WithMetadata | None = None

    def unknown_values(self) -> dict[str, str]:
        """Fields whose value this release does not know: nothing is granted for them."""
        unknown = {}
        if self.status not in KNOWN_STATUSES:
            unknown["status"] = self.status
        if self.billing_reason not in KNOWN_BILLING_REASONS:
            unknown["billing_reason"] = self.billing_reason
        return unknown

    def refusal(self, metadata_keys: MetadataKeys | frozenset[str]) -> str | None:
        """Why this payload can never be processed, or None. Only for values no real Polar
        order has; the answer tells Polar to stop retrying, and operators see it. Whether a
        readable order may grant is a decision: the engine's `grant_refusal`."""
        if len(self.id) > MAX_ORDER_ID_CHARS:
            return f"order id is longer than {MAX_ORDER_ID_CHARS} characters"
        for name in ("customer_id", "product_id", "subscription_id"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_REFERENCE_ID_CHARS:
                return f"{name} is longer than {MAX_REFERENCE_ID_CHARS} characters"
        keys = _keys(metadata_keys)
        for label, metadata, allowed in (
            ("metadata", self.metadata, keys.order),
            ("product metadata", _metadata_of(self.product), keys.product),
            ("customer metadata", _metadata_of(self.customer), keys.customer),
        ):
            for key, value in _allowed_metadata(metadata, allowed).items():
                if isinstance(value, str) and len(value) > MAX_METADATA_VALUE_CHARS:
                    return (
                        f"{label} {for_log(key, 40)!r} is longer than "
                        f"{MAX_METADATA_VALUE_CHARS} characters"
                    )
        dates = _date_refusal("order", {"created_at": self.created_at})
        if dates is None and self.subscription is not None:
            dates = self.subscription.date_refusal("order's subscription")
        return dates


def order_facts(
    order: PaidOrder, metadata_keys: MetadataKeys | frozenset[str] = frozenset()
) -> OrderFacts:
    """`metadata_keys`: the keys the rules name (`RulesFile.metadata_keys`; a frozenset
    is order metadata keys only); no other metadata is copied."""
    snapshot = order.subscription or SubscriptionSnapshot()
    keys = _keys(metadata_keys)
    return OrderFacts(
        order_id=order.id,
        customer_id=order.customer_id,
        billing_reason=order.billing_reason,
        status=order.status,
        product_id=order.product_id,
        subscription_id=order.subscription_id,
        subscription_status=snapshot.status,
        currency=order.currency,
        subtotal_amount=order.subtotal_amount,
        discount_amount=order.discount_amount,
        net_amount=order.net_amount,
        tax_amount=order.tax_amount,
        total_amount=order.total_amount,
        refunded_amount=order.refunded_amount,
        seats=order.seats,
        metadata=_allowed_metadata(order.metadata, keys.order),
        created_at=order.created_at.isoformat() if order.created_at else None,
        product_metadata=_allowed_metadata(_metadata_of(order.product), keys.product),
        customer_metadata=_allowed_metadata(_metadata_of(order.customer), keys.customer),
        subscription_period_start=_utc_second(snapshot.current_period_start),
        subscription_meter_period_start=_utc_second(snapshot.current_meter_period_start),
    )


def subscription_facts(
    snapshot: SubscriptionSnapshot,
    metadata_keys: MetadataKeys | frozenset[str] = frozenset(),
    order: PaidOrder | None = None,
) -> SubscriptionFacts:
    """The facts an allowance run decides from; an order's snapshot lacks some of the
    subscription's ids and its product and customer, which the order itself gives."""
    keys = _keys(metadata_keys)
    product = snapshot.product or (order.product if order else None)
    customer = snapshot.customer or (order.customer if order else None)
    subscription_id = snapshot.id or (order.subscription_id if order else None)
    customer_id = snapshot.customer_id or (order.customer_id if order else None)
    assert subscription_id and customer_id
    return SubscriptionFacts(
        subscription_id=subscription_id,
        customer_id=customer_id,
        product_id=snapshot.product_id or (order.product_id if order else None),
        status=snapshot.status or "active",
        # To the microsecond: two changes within one second must still be ordered.
        modified_at=to_utc(snapshot.modified_at).isoformat() if snapshot.modified_at else None,
        started_at=_utc_second(snapshot.started_at),
        current_period_start=_utc_second(snapshot.current_period_start),
        current_period_end=_utc_second(snapshot.current_period_end),
        cancel_at_period_end=snapshot.cancel_at_period_end,
        ends_at=_utc_second(snapshot.ends_at),
        ended_at=_utc_second(snapshot.ended_at),
        seats=snapshot.seats if snapshot.seats is not None else (order.seats if order else None),
        metadata=_allowed_metadata(snapshot.metadata, keys.order),
        product_metadata=_allowed_metadata(_metadata_of(product), keys.product),
        customer_metadata=_allowed_metadata(_metadata_of(customer), keys.customer),
    )


def _keys(metadata_keys: MetadataKeys | frozenset[str]) -> MetadataKeys:
    if isinstance(metadata_keys, MetadataKeys):
        return metadata_keys
    return MetadataKeys(order=frozenset(metadata_keys))


def _metadata_of(holder: WithMetadata | None) -> dict[str, Any] | None:
    return holder.metadata if holder else None


def _utc_second(moment: datetime | None) -> str | None:
    """One spelling per instant, so the same period always gives the same grant key."""
    if moment is None:
        return None
    return to_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date_refusal(label: str, dates: dict[str, datetime | None]) -> str | None:
    for name, moment in dates.items():
        if moment is None:
            continue
        try:
            to_utc(moment)
        except ValueError as exc:
            return f"{label} {name}: {exc}"
    return None


def _allowed_metadata(
    metadata: dict[str, Any] | None, keys: frozenset[str]
) -> dict[str, MetadataValue]:
    # Polar's metadata values are strings, integers, floats or booleans; anything else under
    # an allowed key is not something a rule can compare with, so it is left out too.
    return {
        key: value
        for key, value in (metadata or {}).items()
        if key in keys and isinstance(value, str | int | float | bool)
    }
