"""The webhook edge of allowances, over HTTP to the API process: what each `subscription.*`
delivery and each paid subscription order answers, which run it reaches, and what it leaves
alone. Payloads are built here (signed as Polar signs them), so the order of deliveries is the
test's to choose: a webhook before the paid order, a late one after the end."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from polar_credits.identity import allowance_workflow_id, order_workflow_id
from polar_credits.models.allowances import AllowanceState
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow
from tests.conftest import UNRULED_PRODUCT_ID, YEARLY_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import grant_events, new_customer, order_paid_body, post_signed


def subscription(customer_id: str, product_id: str = YEARLY_PRODUCT_ID, **changes) -> dict:
    """Polar's subscription as its webhooks carry it (the fields the service reads, and the
    customer's details, which it must not keep)."""
    now = datetime.now(UTC)
    data = {
        "id": str(uuid.uuid4()),
        "status": "active",
        "customer_id": customer_id,
        "product_id": product_id,
        "created_at": now.isoformat(),
        "modified_at": now.isoformat(),
        "started_at": now.isoformat(),
        "current_period_start": now.isoformat(),
        "current_period_end": (now + timedelta(days=365)).isoformat(),
        "cancel_at_period_end": False,
        "ends_at": None,
        "ended_at": None,
        "seats": None,
        "metadata": {},
        "customer": {"id": customer_id, "email": "someone@example.com", "name": "Some One"},
    }
    return data | changes


async def send(stack: Stack, http: httpx.AsyncClient, event: str, data: dict) -> httpx.Response:
    body = json.dumps({"type": event, "timestamp": data["modified_at"], "data": data}).encode()
    return await post_signed(stack, http, body)


async def run_state(
    stack: Stack, subscription_id: str, until: Callable[[AllowanceState], bool]
) -> AllowanceState:
    handle = stack.temporal.get_workflow_handle(allowance_workflow_id(subscription_id))
    deadline = time.monotonic() + 20
    while True:
        state = await handle.query(SubscriptionAllowanceWorkflow.state)
        if until(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


def subscription_create_order(stack: Stack, customer_id: str, sub: dict[str, Any]) -> dict:
    """A paid `subscription_create` order of `customer_id` at the stand-in, naming `sub` as
    Polar's order does; not delivered (the test signs and posts it)."""
    return stack.standin.create_paid_order(
        customer_id,
        YEARLY_PRODUCT_ID,
        billing_reason="subscription_create",
        subscription={
            "id": sub["id"],
            "status": "active",
            "current_period_start": sub["current_period_start"],
            "current_period_end": sub["current_period_end"],
            "started_at": sub["started_at"],
        },
        deliver=False,
    )


async def test_a_webhook_before_the_paid_order_starts_the_run_which_waits_for_payment(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    sub = subscription(customer_id)
    created = await send(stack, http, "subscription.created", sub)
    assert created.status_code == 202, created.text
    answer = created.json()
    assert answer["status"] == "signalled"
    assert answer["workflow_id"] == allowance_workflow_id(sub["id"])
    waiting = await run_state(stack, sub["id"], lambda s: s.facts is not None)
    assert waiting.status == "waiting_for_payment" and waiting.grants_total == 0

    # The first paid order: its run starts as usual, and the allowance run learns it is paid.
    paid = subscription_create_order(stack, customer_id, sub)
    order_id = paid["order"]["id"]
    body = await order_paid_body(stack, order_id)
    first = await post_signed(stack, http, body)
    assert first.status_code == 202 and first.json()["status"] == "started", first.text
    assert first.json()["allowance_workflow_id"] == allowance_workflow_id(sub["id"])
    granted = await run_state(stack, sub["id"], lambda s: s.grants_total > 0)
    assert (granted.status, granted.grants_total, granted.units_total) == ("active", 1, 100)

    # The same order.paid again: a duplicate for the order, nothing new for the allowance.
    again = await post_signed(stack, http, body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["allowance_workflow_id"] == allowance_workflow_id(sub["id"])
    await asyncio.sleep(1)
    assert (await run_state(stack, sub["id"], lambda s: True)).grants_total == 1
    allowance = [
        e for e in grant_events(stack, customer_id) if e["metadata"]["reason"] == "allowance"
    ]
    assert len(allowance) == 1

    # Both runs are found by the subscription.
    order_run = await stack.temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
    allowance_run = await stack.temporal.get_workflow_handle(
        allowance_workflow_id(sub["id"])
    ).describe()
    for described in (order_run, allowance_run):
        assert described.typed_search_attributes.get(sa.POLAR_SUBSCRIPTION_ID) == sub["id"]


async def test_after_revocation_a_late_webhook_reaches_nothing_and_starts_nothing(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    sub = subscription(customer_id)
    assert (await send(stack, http, "subscription.active", sub)).json()["status"] == "signalled"
    ended_at = datetime.now(UTC) + timedelta(seconds=1)
    revoked = sub | {
        "status": "canceled",
        "ended_at": ended_at.isoformat(),
        "modified_at": ended_at.isoformat(),
    }
    answer = await send(stack, http, "subscription.revoked", revoked)
    assert answer.status_code == 202 and answer.json()["status"] == "signalled"
    handle = stack.temporal.get_workflow_handle(allowance_workflow_id(sub["id"]))
    result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result["status"] == "ended"

    # An older version of the subscription, delivered late: the run stays ended, and no
    # second run starts for it.
    late = await send(stack, http, "subscription.updated", sub)
    assert late.status_code == 202, late.text
    assert late.json()["status"] == "ignored"
    assert "ended" in late.json()["detail"]
    described = await handle.describe()  # the latest run for the id: still the ended one
    assert described.status == WorkflowExecutionStatus.COMPLETED
    assert grant_events(stack, customer_id) == []  # never paid: nothing granted


async def test_a_subscription_without_an_allowance_rule_gets_no_run(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    sub = subscription(new_customer(stack), product_id=UNRULED_PRODUCT_ID)
    answer = await send(stack, http, "subscription.updated", sub)
    assert answer.status_code == 202
    assert answer.json()["status"] == "ignored" and answer.json()["workflow_id"] is None
    with pytest.raises(RPCError) as err:
        await stack.temporal.get_workflow_handle(allowance_workflow_id(sub["id"])).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"id": None}, "data.id"),
        ({"status": 3}, "data.status"),
        ({"modified_at": "yesterday"}, "data.modified_at"),
        ({"seats": "many"}, "data.seats"),
    ],
)
async def test_a_malformed_subscription_is_refused_and_starts_nothing(
    stack: Stack, http: httpx.AsyncClient, change: dict, where: str
) -> None:
    sub = subscription(new_customer(stack))
    answer = await send(stack, http, "subscription.updated", sub | change)
    assert answer.status_code == 400
    assert where in answer.json()["detail"]
    with pytest.raises(RPCError):
        await stack.temporal.get_workflow_handle(allowance_workflow_id(sub["id"])).describe()
