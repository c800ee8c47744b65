"""Rules v2 end to end: the Promo pack's sale rule (a metadata `in` condition, a currency, a
minimum amount, a validity window, priority and stop) decides through the real pipeline, from
the stand-in's order.paid to the grant in Polar (tests/test_rules_v2.py has the tables)."""

from __future__ import annotations

import pytest

from tests.conftest import PROMO_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import grant_events, new_customer
from tests.e2e.test_subscriptions import credited


@pytest.mark.parametrize(
    ("metadata", "rule", "units"),
    [
        ({"campaign": "spring"}, "promo-sale", 50),  # the sale replaces the default
        ({"campaign": "launch"}, "promo-sale", 50),
        ({"campaign": "autumn"}, "promo-default", 10),  # not one of the sale's campaigns
        ({}, "promo-default", 10),
    ],
)
async def test_the_sale_rule_replaces_the_default_only_for_its_campaigns(
    stack: Stack, metadata: dict, rule: str, units: int
) -> None:
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, PROMO_PRODUCT_ID, metadata=metadata)
    state = await credited(stack, placed["delivery"])
    assert state.status == "verified", state
    assert [(g.rule_id, g.units) for g in state.grants] == [(rule, units)]
    [event] = grant_events(stack, customer_id)
    assert event["metadata"]["units"] == -units and event["metadata"]["rule_id"] == rule
