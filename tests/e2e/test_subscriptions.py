"""Subscriptions on the stand-in, as Polar behaves: the meter is reset at every renewal,
and the renewal's order.paid comes after the reset. Each cycle's allowance is granted once
per subscription period, whatever the number of orders for that period."""

from __future__ import annotations

import asyncio

import httpx

from polar_credits.models.orders import OrderCreditsState
from tests.conftest import SUBSCRIPTION_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import balance, grant_events, new_customer

ALLOWANCE = 250  # the subscriber-allowance rule


async def credited(stack: Stack, delivery: dict) -> OrderCreditsState:
    assert delivery["status_code"] in (200, 202), delivery
    handle = stack.temporal.get_workflow_handle(
        delivery["body"]["workflow_id"], result_type=OrderCreditsState
    )
    return await asyncio.wait_for(handle.result(), timeout=60)


def order_paid(answer: dict) -> dict:
    [delivery] = [d for d in answer["deliveries"] if d["type"] == "order.paid"]
    return delivery


async def test_each_cycle_is_credited_once_and_survives_the_reset(stack: Stack) -> None:
    """Subscribe, renew three times, re-bill a renewed period, cancel: one cycle's allowance
    after every reset, and nothing for the re-bill or the canceled subscription's final invoice."""
    customer_id = new_customer(stack)
    made = stack.standin.subscribe(customer_id, SUBSCRIPTION_PRODUCT_ID)
    subscription = made["subscription"]
    assert (await credited(stack, order_paid(made))).status == "verified"
    assert await balance(stack, customer_id) == ALLOWANCE

    for cycle in (1, 2, 3):
        renewed = stack.standin.renew(subscription["id"])
        state = await credited(stack, order_paid(renewed))
        assert state.status == "verified", state
        # The reset wiped the last cycle's credits; this cycle's grant came after it.
        assert await balance(stack, customer_id) == ALLOWANCE, f"after renewal {cycle}"
        assert len(grant_events(stack, customer_id)) == 1 + cycle

    # A second, different paid order for the period just credited (a retried invoice, a
    # manual re-bill) grants nothing: its grant has the period's key, which Polar holds.
    period_start = renewed["order"]["subscription"]["current_period_start"]
    rebill = stack.standin.create_paid_order(
        customer_id,
        SUBSCRIPTION_PRODUCT_ID,
        billing_reason="subscription_cycle",
        subscription={
            "id": subscription["id"],
            "status": "active",
            "current_period_start": period_start,
        },
    )
    assert rebill["order"]["id"] != renewed["order"]["id"]
    state = await credited(stack, rebill["delivery"])
    assert state.status == "already_granted"
    assert await balance(stack, customer_id) == ALLOWANCE
    assert len(grant_events(stack, customer_id)) == 4

    # Canceled at period end; at that end Polar publishes the final invoice as a cycle order
    # of a canceled subscription. It pays for no new period: it grants nothing, and the last
    # period's credits stay (no reset comes with it).
    stack.standin.subscription_action(subscription["id"], "cancel")
    ended = stack.standin.renew(subscription["id"])
    final = ended["order"]
    assert (final["billing_reason"], final["subscription"]["status"]) == (
        "subscription_cycle",
        "canceled",
    )
    assert (await credited(stack, order_paid(ended))).status == "no_rule"
    assert await balance(stack, customer_id) == ALLOWANCE
    assert len(grant_events(stack, customer_id)) == 4


async def test_a_proration_order_grants_nothing_unless_a_rule_lists_it(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    made = stack.standin.subscribe(customer_id, SUBSCRIPTION_PRODUCT_ID)
    await credited(stack, order_paid(made))
    proration = stack.standin.create_paid_order(
        customer_id,
        SUBSCRIPTION_PRODUCT_ID,
        billing_reason="subscription_update",
        subscription={"id": made["subscription"]["id"], "status": "active"},
    )
    assert (await credited(stack, proration["delivery"])).status == "no_rule"
    assert len(grant_events(stack, customer_id)) == 1
