"""The core pipeline end to end: Polar stand-in → signed webhook → API → Temporal → grant."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from polar_credits import search_attributes as sa
from polar_credits.activities.credits import CreditActivities
from polar_credits.identity import order_workflow_id
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import IngestGrantsInput
from polar_credits.models.orders import OrderCreditsState
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    METER_ID,
    UNRULED_PRODUCT_ID,
    WEBHOOK_SECRET,
    Stack,
)
from tests.support.signing import polar_signed_headers

EMAIL = "ada.lovelace@example.com"
NAME = "Ada Lovelace"


def new_customer(stack: Stack) -> str:
    suffix = uuid.uuid4().hex[:8]
    return stack.standin.create_customer(email=f"ada+{suffix}@example.com", name=NAME)["id"]


def undelivered_order(stack: Stack) -> tuple[str, str]:
    """A paid order whose webhook has not been sent: (customer id, order id)."""
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    return customer_id, placed["order"]["id"]


async def post_signed(stack: Stack, http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(
        f"{stack.api_url}/webhooks/polar",
        content=body,
        headers=polar_signed_headers(WEBHOOK_SECRET, body),
    )


async def result_of(stack: Stack, workflow_id: str) -> OrderCreditsState:
    handle = stack.temporal.get_workflow_handle(workflow_id, result_type=OrderCreditsState)
    return await asyncio.wait_for(handle.result(), timeout=60)


async def balance(stack: Stack, customer_id: str) -> float:
    meters = await stack.polar.customer_meters.list(customer_id=customer_id, meter_id=METER_ID)
    return meters.items[0].balance


def grant_events(stack: Stack, customer_id: str) -> list[dict]:
    return [e for e in stack.standin.events(customer_id=customer_id) if e["name"] == "api_usage"]


async def order_paid_body(stack: Stack, order_id: str, **changes) -> bytes:
    """The JSON Polar would post for this order, optionally altered."""
    async with httpx.AsyncClient(
        base_url=stack.standin.base_url,
        headers={"Authorization": f"Bearer {stack.standin.token}"},
    ) as client:
        order = (await client.get(f"/v1/orders/{order_id}")).raise_for_status().json()
    order.update(changes)
    payload = {
        "type": "order.paid",
        "timestamp": order["created_at"],
        "api_version": "2026-10",
        "data": order,
    }
    return json.dumps(payload).encode()


async def assert_no_run(stack: Stack, order_id: str) -> None:
    with pytest.raises(RPCError) as err:
        await stack.temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


async def test_paid_order_grants_units_once_and_verifies_balance(stack: Stack) -> None:
    customer_id = stack.standin.create_customer(email=EMAIL, name=NAME)["id"]

    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)

    order_id = placed["order"]["id"]
    delivery = placed["delivery"]
    assert delivery["status_code"] == 202, stack.api.log()[-3000:]
    assert delivery["body"]["status"] == "started"
    workflow_id = delivery["body"]["workflow_id"]
    assert workflow_id == order_workflow_id(order_id)
    assert delivery["body"]["ui_url"].endswith(f"/namespaces/default/workflows/{workflow_id}")

    state = await result_of(stack, workflow_id)
    assert state.status == "verified"
    assert [(g.rule_id, g.units) for g in state.grants] == [("starter-bonus", 10)]
    assert state.ingest is not None and state.ingest.inserted == 1
    assert state.verifications[0].verified and state.verifications[0].balance == 10

    events = grant_events(stack, customer_id)
    assert len(events) == 1
    assert events[0]["metadata"]["units"] == -10
    assert events[0]["metadata"]["order_id"] == order_id
    assert await balance(stack, customer_id) == 10

    handle = stack.temporal.get_workflow_handle(workflow_id)
    described = await handle.describe()
    attrs = described.typed_search_attributes
    assert attrs.get(sa.CREDIT_STATUS) == "verified"
    assert attrs.get(sa.CREDIT_UNITS) == 10
    assert attrs.get(sa.POLAR_ORDER_ID) == order_id
    assert attrs.get(sa.POLAR_CUSTOMER_ID) == customer_id
    assert attrs.get(sa.POLAR_PRODUCT_ID) == CREDIT_PRODUCT_ID
    queried = await handle.query("state", result_type=OrderCreditsState)
    assert queried.status == "verified"

    # An operator finds the run by order id in the Temporal UI (visibility is eventually
    # consistent, so poll briefly).
    found = []
    for _ in range(50):
        found = [w.id async for w in stack.temporal.list_workflows(f"PolarOrderId = '{order_id}'")]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found == [workflow_id]

    # No personal data in the history.
    history = json.dumps((await handle.fetch_history()).to_json_dict())
    assert EMAIL not in history and NAME not in history


async def test_five_deliveries_of_one_order_grant_once(stack: Stack) -> None:
    for concurrent in (True, False):
        customer_id, order_id = undelivered_order(stack)
        # Same webhook id (Polar's own retries) and new ids (other events, manual redelivery).
        ids = ["msg_same", "msg_same", None, None, "msg_other"]
        if concurrent:
            answers = await asyncio.gather(
                *(
                    asyncio.to_thread(stack.standin.send_webhook, order_id, webhook_id=wid)
                    for wid in ids
                )
            )
        else:
            answers = [stack.standin.send_webhook(order_id, webhook_id=wid) for wid in ids]

        statuses = sorted((a["status_code"], a["body"]["status"]) for a in answers)
        assert statuses == [(200, "duplicate")] * 4 + [(202, "started")], statuses
        state = await result_of(stack, order_workflow_id(order_id))
        assert state.status == "verified"
        assert len(grant_events(stack, customer_id)) == 1
        assert await balance(stack, customer_id) == 10

        # A redelivery long after the run completed is still refused.
        late = stack.standin.send_webhook(order_id)
        assert late["body"]["status"] == "duplicate"
        assert len(grant_events(stack, customer_id)) == 1


async def test_ingest_activity_run_twice_is_deduplicated_by_polar(stack: Stack) -> None:
    customer_id = new_customer(stack)
    order = OrderFacts(
        order_id=str(uuid.uuid4()),
        customer_id=customer_id,
        billing_reason="purchase",
        status="paid",
        product_id=CREDIT_PRODUCT_ID,
    )
    activities = CreditActivities(stack.gateway, stack.rules)
    env = ActivityEnvironment()
    grants = await env.run(activities.evaluate_rules, order)

    first = await env.run(activities.ingest_order_grants, IngestGrantsInput(grants))
    second = await env.run(activities.ingest_order_grants, IngestGrantsInput(grants))

    assert (first.inserted, first.duplicates) == (1, 0)
    assert (second.inserted, second.duplicates) == (0, 1)
    assert len(grant_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == 10


async def test_timed_out_ingest_is_retried_without_double_grant(stack: Stack) -> None:
    """Polar stores the events but the answer never arrives in time: the retry is a duplicate."""
    customer_id = new_customer(stack)
    # Stored at once, answered after the SDK timeout (5 s) the test client uses.
    stack.standin.add_fault("events.ingest", status=None, count=1, response_delay_ms=6500)
    try:
        placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
        state = await result_of(stack, placed["delivery"]["body"]["workflow_id"])
    finally:
        stack.standin.clear_faults()
    assert state.status == "verified"
    # The retry's events were already stored: Polar counted them as duplicates.
    assert state.ingest is not None
    assert (state.ingest.inserted, state.ingest.duplicates) == (0, 1)
    assert len(grant_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == 10


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_signature", 403),
        ("missing_headers", 403),
        ("stale_timestamp", 403),
        ("future_timestamp", 403),
        ("oversized_body", 413),
        ("malformed_json", 400),
        ("wrong_shape", 400),
    ],
)
async def test_rejected_requests_change_nothing(
    stack: Stack, http: httpx.AsyncClient, case: str, expected: int
) -> None:
    customer_id, order_id = undelivered_order(stack)
    body = await order_paid_body(stack, order_id)
    headers = polar_signed_headers(WEBHOOK_SECRET, body)
    if case == "bad_signature":
        headers = polar_signed_headers("whsec_not_the_secret", body)
    elif case == "missing_headers":
        headers = {"content-type": "application/json"}
    elif case == "stale_timestamp":
        headers = polar_signed_headers(WEBHOOK_SECRET, body, timestamp=time.time() - 6 * 60)
    elif case == "future_timestamp":
        headers = polar_signed_headers(WEBHOOK_SECRET, body, timestamp=time.time() + 6 * 60)
    elif case == "oversized_body":
        body = body[:-1] + b"," + b'"padding": "' + b"x" * (1024 * 1024) + b'"}'
        headers = polar_signed_headers(WEBHOOK_SECRET, body)
    elif case == "malformed_json":
        body = body[:-5]
        headers = polar_signed_headers(WEBHOOK_SECRET, body)
    elif case == "wrong_shape":
        body = json.dumps(
            {"type": "order.paid", "timestamp": "x", "api_version": "2026-10", "data": {"id": 1}}
        ).encode()
        headers = polar_signed_headers(WEBHOOK_SECRET, body)

    response = await http.post(f"{stack.api_url}/webhooks/polar", content=body, headers=headers)

    assert response.status_code == expected, response.text
    assert response.json()["detail"]
    assert WEBHOOK_SECRET not in response.text
    await assert_no_run(stack, order_id)
    assert grant_events(stack, customer_id) == []


async def test_events_the_service_does_not_act_on_are_acknowledged_and_ignored(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id, order_id = undelivered_order(stack)
    body = (await order_paid_body(stack, order_id)).replace(b'"order.paid"', b'"order.created"')
    response = await post_signed(stack, http, body)
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    await assert_no_run(stack, order_id)


async def test_polar_5xx_then_success_grants_once(stack: Stack) -> None:
    customer_id = new_customer(stack)
    stack.standin.add_fault("events.ingest", status=503, count=2)
    try:
        placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
        state = await result_of(stack, placed["delivery"]["body"]["workflow_id"])
    finally:
        stack.standin.clear_faults()
    assert state.status == "verified"
    statuses = [r["status"] for r in stack.standin.requests("events.ingest")][-3:]
    assert statuses == [503, 503, 200]
    assert len(grant_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == 10


async def test_polar_429_is_waited_out_before_the_grant(stack: Stack) -> None:
    customer_id = new_customer(stack)
    stack.standin.add_fault("events.ingest", status=429, count=1, retry_after=3)
    try:
        placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
        state = await result_of(stack, placed["delivery"]["body"]["workflow_id"])
    finally:
        stack.standin.clear_faults()
    assert state.status == "verified"
    limited, granted = stack.standin.requests("events.ingest")[-2:]
    assert (limited["status"], granted["status"]) == (429, 200)
    assert granted["at"] - limited["at"] >= 3 - 0.05
    assert len(grant_events(stack, customer_id)) == 1


async def test_unknown_customer_fails_the_run_with_its_reason(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id, order_id = undelivered_order(stack)
    ghost = str(uuid.uuid4())
    body = await order_paid_body(stack, order_id, customer_id=ghost)
    response = await post_signed(stack, http, body)
    assert response.status_code == 202

    handle = stack.temporal.get_workflow_handle(order_workflow_id(order_id))
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=60)
    assert "422" in str(failure.value.cause)
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED
    assert described.typed_search_attributes.get(sa.CREDIT_STATUS) == "failed"
    state = await handle.query("state", result_type=OrderCreditsState)
    assert state.status == "failed" and "422" in (state.failure or "")
    assert stack.standin.events(customer_id=ghost) == []


async def test_order_without_matching_rule_grants_nothing(stack: Stack) -> None:
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, UNRULED_PRODUCT_ID)
    workflow_id = placed["delivery"]["body"]["workflow_id"]

    state = await result_of(stack, workflow_id)

    assert state.status == "no_rule"
    assert state.grants == [] and state.ingest is None
    assert grant_events(stack, customer_id) == []
    described = await stack.temporal.get_workflow_handle(workflow_id).describe()
    assert described.typed_search_attributes.get(sa.CREDIT_STATUS) == "no_rule"


async def test_health_and_readiness(stack: Stack, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{stack.api_url}/healthz")).json() == {"status": "ok", "detail": None}
    ready = await http.get(f"{stack.api_url}/readyz")
    assert ready.status_code == 200


async def test_webhook_logs_never_show_the_secret_or_customer_data(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    email, name = f"grace+{uuid.uuid4().hex[:6]}@example.com", "Grace Hopper"
    customer_id = stack.standin.create_customer(email=email, name=name)["id"]
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    await result_of(stack, placed["delivery"]["body"]["workflow_id"])
    assert caplog.records, "the API and worker log what they do"
    api_log = stack.api.log()
    assert "started order-credits-" in api_log
    for secret in (WEBHOOK_SECRET, stack.standin.token, email, name):
        assert secret not in caplog.text
        assert secret not in api_log


async def test_first_release_ingest_still_grants_once_through_the_gateway(stack: Stack) -> None:
    """Runs the first release started call `ingest_grants` with a list of grants."""
    customer_id = new_customer(stack)
    order = OrderFacts(
        order_id=str(uuid.uuid4()),
        customer_id=customer_id,
        billing_reason="purchase",
        status="paid",
        product_id=CREDIT_PRODUCT_ID,
    )
    activities = CreditActivities(stack.gateway, stack.rules)
    env = ActivityEnvironment()
    grants = await env.run(activities.evaluate_rules, order)

    first = await env.run(activities.ingest_grants, grants)
    second = await env.run(activities.ingest_grants, grants)

    assert (first.inserted, first.duplicates, first.confirmed) == (1, 0, 1)
    assert (second.inserted, second.duplicates, second.confirmed) == (0, 1, 1)
    assert len(grant_events(stack, customer_id)) == 1
