"""Rules v2 amounts and product/customer metadata end to end, from the stand-in's order.paid to
the grant in Polar: a pay-what-you-want product (matched on its product metadata) grants per
dollar paid, and the Edu pack's bonus goes to customers whose metadata says so, with no other
customer metadata entering the history (tests/test_rules_v2_amounts.py has the tables)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import EDU_PRODUCT_ID, PWYW_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import grant_events
from tests.e2e.test_subscriptions import credited
from tests.histories.record import history_texts

PHONE = "+44 20 7946 0111"


def customer(stack: Stack, metadata: dict | None = None) -> str:
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    return stack.standin.create_customer(email=email, metadata=metadata)["id"]


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        (1234, 123),  # $12.34 at 10 units a dollar, rounded down
        (0, 5),  # a $0 order: min_units
        (100_000, 500),  # $1,000: max_units
    ],
)
async def test_pay_what_you_want_grants_per_dollar_paid(
    stack: Stack, amount: int, units: int
) -> None:
    customer_id = customer(stack)
    placed = stack.standin.create_paid_order(customer_id, PWYW_PRODUCT_ID, amount=amount)
    state = await credited(stack, placed["delivery"])
    assert state.status == "verified", state
    assert [(g.rule_id, g.units) for g in state.grants] == [("pwyw-credits", units)]
    [event] = grant_events(stack, customer_id)
    assert event["metadata"]["units"] == -units
    # Idempotency keys use the rule's key, not its id.
    assert event["external_id"].endswith(":rule:pay-what-you-want")


@pytest.mark.parametrize(
    ("metadata", "rule", "units"),
    [
        ({"segment": "edu", "phone": PHONE}, "edu-bonus", 20),
        ({"segment": "nonprofit"}, "edu-bonus", 20),
        ({"segment": "business", "phone": PHONE}, "edu-default", 5),
        ({}, "edu-default", 5),
    ],
)
async def test_the_edu_bonus_goes_by_customer_metadata_and_copies_only_its_key(
    stack: Stack, metadata: dict, rule: str, units: int
) -> None:
    customer_id = customer(stack, metadata)
    placed = stack.standin.create_paid_order(customer_id, EDU_PRODUCT_ID)
    state = await credited(stack, placed["delivery"])
    assert state.status == "verified", state
    assert [(g.rule_id, g.units) for g in state.grants] == [(rule, units)]
    assert [e["metadata"]["units"] for e in grant_events(stack, customer_id)] == [-units]

    workflow_id = placed["delivery"]["body"]["workflow_id"]
    history = await stack.temporal.get_workflow_handle(workflow_id).fetch_history()
    decoded = "\n".join(history_texts(json.loads(history.to_json())))
    if "segment" in metadata:
        assert metadata["segment"] in decoded  # the key the rules name is copied ...
    assert PHONE not in decoded and "phone" not in decoded  # ... and no other
