"""The decision record end to end, on the "Starter kit" (tests/conftest.py): each rule's
verdict in the order run's `state`, the first paid order looked up in Polar, the per-customer
cap across concurrent orders, and the rules preview over HTTP and from the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from temporalio.client import WorkflowHandle
from typer.testing import CliRunner

from polar_credits import search_attributes as sa
from polar_credits.cli import app
from polar_credits.models.orders import OrderCreditsState
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import KIT_PRODUCT_ID, OPERATOR_TOKEN, Stack
from tests.e2e.test_pipeline import grant_events, new_customer
from tests.e2e.test_subscriptions import credited


async def state_of(stack: Stack, delivery: dict) -> tuple[WorkflowHandle, OrderCreditsState]:
    """The run's `state` query: what an operator (and GET /grants/{id}) reads."""
    await credited(stack, delivery)
    handle = stack.temporal.get_workflow_handle(delivery["body"]["workflow_id"])
    state = await handle.query(OrderCreditsWorkflow.state)
    assert state is not None
    return handle, state


def verdicts(state: OrderCreditsState) -> dict[str, str]:
    assert state.decision is not None
    return {v.rule_id: v.reason for v in state.decision.verdicts}


def units_by_rule(stack: Stack, customer_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for event in grant_events(stack, customer_id):
        rule = event["metadata"]["rule_id"]
        totals[rule] = totals.get(rule, 0) - event["metadata"]["units"]
    return totals


async def buy_kit(stack: Stack, customer_id: str) -> tuple[dict, OrderCreditsState]:
    placed = stack.standin.create_paid_order(customer_id, KIT_PRODUCT_ID)
    handle, state = await state_of(stack, placed["delivery"])
    return placed["order"], state


async def test_an_orders_decision_shows_why_and_the_second_order_is_not_first(
    stack: Stack,
) -> None:
    customer_id = new_customer(stack)
    first_order, first = await buy_kit(stack, customer_id)
    assert first.status == "verified", first
    assert first.decision is not None
    assert first.decision.rules_version == stack.rules.version
    assert first.decision.first_order is not None
    assert first.decision.first_order.describe() == (
        "first paid order for this product: yes (no earlier paid order)"
    )
    reasons = verdicts(first)
    assert reasons["kit-welcome"] == "matched: 100 units"
    assert reasons["kit-repeat"] == (
        "first_order = false, but this is the customer's first paid order for the product"
    )
    assert reasons["kit-loyalty"] == (
        "matched: 60 units (within the cap: 0 granted before, max_units_per_customer 100)"
    )
    assert reasons["starter-bonus"] == "product not in products"
    assert [(g.rule_id, g.units) for g in first.grants] == [
        ("kit-welcome", 100),
        ("kit-loyalty", 60),
    ]

    _, second = await buy_kit(stack, customer_id)
    assert second.decision is not None and second.decision.first_order is not None
    assert second.decision.first_order.earlier_order_id == first_order["id"]
    reasons = verdicts(second)
    assert reasons["kit-welcome"].startswith(
        f"first_order = true, but an earlier paid order {first_order['id']}"
    )
    assert reasons["kit-repeat"] == "matched: 10 units"
    assert reasons["kit-loyalty"] == (
        "capped: 40 of 60 units (60 granted before, max_units_per_customer 100)"
    )
    assert units_by_rule(stack, customer_id) == {
        "kit-welcome": 100,
        "kit-repeat": 10,
        "kit-loyalty": 100,
    }


async def test_the_granting_rules_keys_tag_the_run(stack: Stack) -> None:
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, KIT_PRODUCT_ID)
    handle, _ = await state_of(stack, placed["delivery"])
    described = await handle.describe()
    keys = described.typed_search_attributes.get(sa.CREDIT_RULE_KEYS)
    assert sorted(keys or []) == ["kit-loyalty", "kit-welcome"]


async def test_concurrent_orders_of_one_customer_grant_exactly_the_cap(stack: Stack) -> None:
    """Two orders paid at once, each through the webhook, the API and the worker: the loyalty
    rule grants 60 + 40, never 120; exactly one order is the customer's first."""
    customer_id = new_customer(stack)
    orders = [
        stack.standin.create_paid_order(customer_id, KIT_PRODUCT_ID, deliver=False)["order"]
        for _ in range(2)
    ]
    deliveries = await asyncio.gather(
        *(asyncio.to_thread(stack.standin.send_webhook, order["id"]) for order in orders)
    )
    states = [(await state_of(stack, delivery))[1] for delivery in deliveries]
    loyalty = sorted(sum(g.units for g in s.grants if g.rule_id == "kit-loyalty") for s in states)
    assert loyalty == [40, 60]
    welcomed = [s for s in states if any(g.rule_id == "kit-welcome" for g in s.grants)]
    assert len(welcomed) == 1, "ties are broken one way: one order is the first"
    assert units_by_rule(stack, customer_id)["kit-loyalty"] == 100


def preview_url(stack: Stack) -> str:
    return f"{stack.api_url}/rules/preview"


async def test_preview_by_payload_and_by_order_id_grants_nothing(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    first_order, _ = await buy_kit(stack, customer_id)
    before = grant_events(stack, customer_id)
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    # An order Polar has not seen yet: the `data` of its order.paid, as Polar would send it.
    payload = await order_json(stack, first_order["id"])
    payload["id"] = str(uuid.uuid4())
    payload["created_at"] = datetime.now(UTC).isoformat()  # made after the first one
    answer = await http.post(preview_url(stack), json=payload, headers=auth, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    reasons = {v["rule_id"]: v["reason"] for v in body["verdicts"]}
    assert reasons["kit-welcome"].startswith("first_order = true, but an earlier paid order")
    assert reasons["kit-loyalty"] == (
        "would be capped: 40 of 60 units (60 granted before, max_units_per_customer 100)"
    )
    assert [(g["rule_id"], g["units"]) for g in body["grants"]] == [
        ("kit-repeat", 10),
        ("kit-loyalty", 40),
    ]
    assert body["rules_version"] == stack.rules.version

    # By id: the worker reads the order from Polar.
    answer = await http.post(
        preview_url(stack), json={"order_id": first_order["id"]}, headers=auth, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["first_order"].startswith("first paid order for this product: yes")

    missing = await http.post(
        preview_url(stack), json={"order_id": str(uuid.uuid4())}, headers=auth, timeout=60
    )
    assert missing.status_code == 404, missing.text
    bad = await http.post(preview_url(stack), json={"id": 3}, headers=auth)
    assert bad.status_code == 422

    # Nothing granted, nothing reserved: a real order still gets 40 (60 + 40 = the cap).
    assert grant_events(stack, customer_id) == before
    _, second = await buy_kit(stack, customer_id)
    assert [(g.rule_id, g.units) for g in second.grants] == [
        ("kit-repeat", 10),
        ("kit-loyalty", 40),
    ]


async def test_preview_needs_the_operator_token(stack: Stack, http: httpx.AsyncClient) -> None:
    body = {"order_id": str(uuid.uuid4())}
    assert (await http.post(preview_url(stack), json=body)).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await http.post(preview_url(stack), json=body, headers=wrong)).status_code == 401


async def test_rules_explain_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    customer_id = new_customer(stack)
    order, _ = await buy_kit(stack, customer_id)
    env = {
        **os.environ,
        "CREDITS_API_URL": stack.api_url,
        "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "COLUMNS": "200",
    }
    runner = CliRunner()
    # The worker runs in this event loop: the CLI's blocking call goes to a thread.
    by_id = await asyncio.to_thread(
        runner.invoke, app, ["rules", "explain", "--order-id", order["id"]], env=env
    )
    assert by_id.exit_code == 0, by_id.output
    assert "kit-welcome" in by_id.output and "matched: 100 units" in by_id.output
    assert "would grant 160 units in 2 grant(s)" in by_id.output

    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(await order_json(stack, order["id"])))
    as_json = await asyncio.to_thread(
        runner.invoke, app, ["rules", "explain", "--payload", str(payload), "--json"], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["units"] == 160

    neither = await asyncio.to_thread(runner.invoke, app, ["rules", "explain"], env=env)
    assert neither.exit_code == 2
    unknown = await asyncio.to_thread(
        runner.invoke, app, ["rules", "explain", "--order-id", str(uuid.uuid4())], env=env
    )
    assert unknown.exit_code == 3, unknown.output


async def order_json(stack: Stack, order_id: str) -> dict:
    async with httpx.AsyncClient(
        base_url=stack.standin.base_url,
        headers={"Authorization": f"Bearer {stack.standin.token}"},
    ) as client:
        return (await client.get(f"/v1/orders/{order_id}")).raise_for_status().json()
