"""Matching: whether a rule applies to an order (with the first condition that fails, in one
line) or, for a cadence rule, to a subscription as it is now.

One `if` per condition in `mismatch`, each returning its reason; the `first_order` condition
needs a lookup in Polar and is judged by the engine (engine.py), not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from polar_credits.models.allowances import SubscriptionFacts
    from polar_credits.models.facts import OrderFacts

# What a rule's metadata conditions may ask for by equality; anything else is a MetadataTest.
SCALARS = (str, int, bool)
Scalar = str | int | bool


class MetadataTest(Protocol):
    """A metadata condition other than equality (schema.py's MetadataTest)."""

    @property
    def one_of(self) -> Sequence[Scalar] | None: ...
    @property
    def exists(self) -> bool | None: ...


class RuleConditions(Protocol):
    """The conditions of a rule that matching reads (schema.py's Rule has them): this module
    needs no more of the schema, which delegates its `verdict` here."""

    @property
    def every(self) -> str | None: ...
    @property
    def billing_reasons(self) -> Sequence[str]: ...
    @property
    def during_trial(self) -> bool: ...
    @property
    def products(self) -> Sequence[str] | None: ...
    @property
    def currencies(self) -> Sequence[str] | None: ...
    @property
    def min_net_amount(self) -> int | None: ...
    @property
    def discounted(self) -> bool | None: ...
    @property
    def metadata(self) -> Mapping[str, Scalar | MetadataTest] | None: ...
    @property
    def product_metadata(self) -> Mapping[str, Scalar | MetadataTest] | None: ...
    @property
    def customer_metadata(self) -> Mapping[str, Scalar | MetadataTest] | None: ...
    @property
    def active_from(self) -> datetime | None: ...
    @property
    def active_until(self) -> datetime | None: ...


def verdict(rule: RuleConditions, order: OrderFacts) -> tuple[bool, str]:
    """Whether the rule matches the order, with a one-line reason: the first condition that
    fails, or "matched"."""
    problem = mismatch(rule, order)
    return (problem is None, problem or "matched")


def mismatch(rule: RuleConditions, order: OrderFacts) -> str | None:
    """The first of the rule's conditions the order fails, said in one line, or None."""
    if rule.every is not None:
        return "a cadence rule: granted by the subscription's allowance run, not on orders"
    if order.billing_reason not in rule.billing_reasons:
        return f"billing reason {order.billing_reason} not in [{', '.join(rule.billing_reasons)}]"
    if not rule.during_trial and order.subscription_status == "trialing":
        return "the subscription is trialing and during_trial = false"
    if rule.products is not None and order.product_id not in rule.products:
        return "product not in products"
    if rule.currencies is not None and order.currency.lower() not in _currencies(rule):
        return f"currency {order.currency.lower()} not in [{', '.join(rule.currencies)}]"
    if rule.min_net_amount is not None and order.net_amount < rule.min_net_amount:
        return f"net amount {order.net_amount} below min_net_amount {rule.min_net_amount}"
    if rule.discounted is not None and (order.discount_amount > 0) != rule.discounted:
        return "the order has a discount" if order.discount_amount > 0 else "no discount"
    if not _active_at(rule, order.created_at):
        return f"order created at {order.created_at} is outside active_from/active_until"
    if problem := metadata_mismatch("metadata", rule.metadata, order.metadata):
        return problem
    if problem := metadata_mismatch(
        "product_metadata", rule.product_metadata, order.product_metadata
    ):
        return problem
    if problem := metadata_mismatch(
        "customer_metadata", rule.customer_metadata, order.customer_metadata
    ):
        return problem
    return None


def applies_to_subscription(rule: RuleConditions, facts: SubscriptionFacts) -> bool:
    """A cadence rule, for a subscription as it is now (its product, trial state and
    metadata)."""
    return (
        rule.every is not None
        and _covers(rule, facts.product_id, facts.status)
        and metadata_mismatch("metadata", rule.metadata, facts.metadata) is None
        and metadata_mismatch("", rule.product_metadata, facts.product_metadata) is None
        and metadata_mismatch("", rule.customer_metadata, facts.customer_metadata) is None
    )


def metadata_mismatch(
    label: str, conditions: Mapping[str, Scalar | MetadataTest] | None, metadata: Mapping[str, Any]
) -> str | None:
    """The first metadata condition that does not hold, said in one line, or None."""
    for key, wanted in (conditions or {}).items():
        if isinstance(wanted, SCALARS):
            if not _same(metadata.get(key), wanted):
                return f"{label} {key} is {_shown_value(metadata, key)}, not {wanted!r}"
            continue
        if _test_holds(wanted, key, metadata):
            continue
        if wanted.exists is not None:
            return f"{label} {key} is {'absent' if wanted.exists else 'present'}"
        return f"{label} {key} is {_shown_value(metadata, key)}, not in {wanted.one_of!r}"
    return None


def _test_holds(test: MetadataTest, key: str, metadata: Mapping[str, Any]) -> bool:
    if test.exists is not None:
        return (key in metadata) == test.exists
    assert test.one_of is not None
    return any(_same(metadata.get(key), wanted) for wanted in test.one_of)


def _covers(rule: RuleConditions, product_id: str | None, subscription_status: str | None) -> bool:
    """The product and trial conditions, the same for orders and subscriptions."""
    if not rule.during_trial and subscription_status == "trialing":
        return False
    return rule.products is None or product_id in rule.products


def _currencies(rule: RuleConditions) -> set[str]:
    return {c.lower() for c in rule.currencies or ()}


def _active_at(rule: RuleConditions, created_at: str | None) -> bool:
    """Within the validity window, judged on the order's own timestamp; an order that does
    not say when it was made matches no windowed rule."""
    if rule.active_from is None and rule.active_until is None:
        return True
    if created_at is None:
        return False
    moment = datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if rule.active_from is not None and moment < rule.active_from:
        return False
    return rule.active_until is None or moment < rule.active_until


def _shown_value(metadata: Mapping[str, Any], key: str) -> str:
    if key not in metadata:
        return "absent"
    return repr(metadata[key])[:60]


def _same(actual: object, wanted: str | int | bool) -> bool:
    # True == 1 in Python; a rule asking for `true` must not match a metadata value of 1.
    return type(actual) is type(wanted) and actual == wanted
