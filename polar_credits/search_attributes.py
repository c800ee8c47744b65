"""The search attributes every crediting run carries: operators find grants in the Temporal UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from temporalio.common import SearchAttributeKey, SearchAttributePair

if TYPE_CHECKING:
    from polar_credits.models.facts import OrderFacts

POLAR_ORDER_ID = SearchAttributeKey.for_keyword("PolarOrderId")
POLAR_CUSTOMER_ID = SearchAttributeKey.for_keyword("PolarCustomerId")
POLAR_PRODUCT_ID = SearchAttributeKey.for_keyword("PolarProductId")
# On every subscription-related run (its orders' runs and its allowance run).
POLAR_SUBSCRIPTION_ID = SearchAttributeKey.for_keyword("PolarSubscriptionId")
CREDIT_STATUS = SearchAttributeKey.for_keyword("CreditStatus")
CREDIT_UNITS = SearchAttributeKey.for_int("CreditUnits")
# The keys of the rules that granted on an order run (a rule file that drops a key which
# has granted is refused at start-up: the count of runs by this attribute says so).
CREDIT_RULE_KEYS = SearchAttributeKey.for_keyword_list("CreditRuleKeys")

ALL = (
    POLAR_ORDER_ID,
    POLAR_CUSTOMER_ID,
    POLAR_PRODUCT_ID,
    POLAR_SUBSCRIPTION_ID,
    CREDIT_STATUS,
    CREDIT_UNITS,
    CREDIT_RULE_KEYS,
)


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` flags that register them on `temporal server start-dev`."""
    kinds = {"KEYWORD": "Keyword", "INT": "Int", "KEYWORD_LIST": "KeywordList"}
    return [
        flag
        for key in ALL
        for flag in ("--search-attribute", f"{key.name}={kinds[key.indexed_value_type.name]}")
    ]


# Temporal caps a keyword value (2 KB by default); Polar's ids are 36 characters. A longer
# id is kept out of the attribute (the run is still found by its workflow id).
MAX_KEYWORD_CHARS = 256


def identity_values(
    order_id: str, customer_id: str, product_id: str | None
) -> list[tuple[SearchAttributeKey[str], str]]:
    """The identity attributes of an order run, each only if present and within the cap."""
    return _within_cap(
        [
            (POLAR_ORDER_ID, order_id),
            (POLAR_CUSTOMER_ID, customer_id),
            (POLAR_PRODUCT_ID, product_id),
        ]
    )


def subscription_values(
    subscription_id: str | None, customer_id: str, product_id: str | None
) -> list[tuple[SearchAttributeKey[str], str]]:
    """The identity attributes of a subscription's allowance run, within the cap."""
    return _within_cap(
        [
            (POLAR_SUBSCRIPTION_ID, subscription_id),
            (POLAR_CUSTOMER_ID, customer_id),
            (POLAR_PRODUCT_ID, product_id),
        ]
    )


def _within_cap(
    wanted: list[tuple[SearchAttributeKey[str], str | None]],
) -> list[tuple[SearchAttributeKey[str], str]]:
    return [(key, value) for key, value in wanted if value and len(value) <= MAX_KEYWORD_CHARS]


def identity_pairs(
    order_id: str, customer_id: str, product_id: str | None
) -> list[SearchAttributePair[Any]]:
    """`identity_values` as the pairs a run's start sets."""
    return [
        SearchAttributePair(key, value)
        for key, value in identity_values(order_id, customer_id, product_id)
    ]


def order_start_attributes(facts: OrderFacts) -> list[SearchAttributePair[Any]]:
    """Set when an order run starts (by the webhook, a rerun or reconciliation), so an operator
    finds the run in the UI before its first task runs (a subscription's order runs also by
    the subscription)."""
    pairs = [SearchAttributePair(CREDIT_STATUS, "pending")]
    pairs += identity_pairs(facts.order_id, facts.customer_id, facts.product_id)
    subscription_id = facts.subscription_id
    if subscription_id and len(subscription_id) <= MAX_KEYWORD_CHARS:
        pairs.append(SearchAttributePair(POLAR_SUBSCRIPTION_ID, subscription_id))
    return pairs
