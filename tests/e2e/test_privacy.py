"""Personal data in every field of an order.paid payload, through every path the edge has
(started, duplicate, ignored for an unknown value, refused), and in a subscription's webhooks:
afterwards no log and no workflow history holds any of it."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from polar_credits.identity import allowance_workflow_id, order_workflow_id
from tests.conftest import CREDIT_PRODUCT_ID, Stack
from tests.e2e.test_allowance_webhooks import subscription
from tests.e2e.test_pipeline import grant_events, order_paid_body, post_signed
from tests.histories.record import history_texts

EMAIL, NAME = "victim@example.com", "Victim Person"
PHONE, STREET = "+1 555 0100 4477", "12 Secret Garden Lane"
PERSONAL = (EMAIL, NAME, PHONE, STREET)

# What a decision reads by necessity: Polar's own ids, enums, amounts and timestamps.
READ_AS_IS = {
    "id", "customer_id", "product_id", "subscription_id", "status", "billing_reason",
    "currency", "created_at", "type", "timestamp", "api_version",
}  # fmt: skip


def with_personal_data(value: Any, key: str = "") -> Any:
    """Every free-text field Polar could fill with a buyer's data holds some."""
    if isinstance(value, dict):
        return {k: with_personal_data(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [with_personal_data(item, key) for item in value]
    if isinstance(value, str) and key not in READ_AS_IS:
        return f"{NAME} <{EMAIL}> {PHONE}, {STREET}"
    return value


async def deliver(http: httpx.AsyncClient, stack: Stack, payload: dict) -> httpx.Response:
    return await post_signed(stack, http, json.dumps(payload).encode())


async def test_no_personal_data_reaches_logs_or_histories(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    since = datetime.now(UTC)
    customer_id = stack.standin.create_customer(email=EMAIL, name=NAME)["id"]
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    payload = with_personal_data(json.loads(await order_paid_body(stack, placed["order"]["id"])))
    data = payload["data"]
    data["metadata"] = {
        "buyer_email": EMAIL,
        "buyer_name": NAME,
        "phone": PHONE,
        "campaign": "launch",  # the one key the rules name: it may enter the history
    }
    data["customer"].update(email=EMAIL, name=NAME)
    data["billing_name"] = NAME
    data["custom_field_data"] = {"phone": PHONE, "address": STREET}
    assert any(EMAIL in json.dumps(v) for v in data.values())

    started = await deliver(http, stack, payload)
    assert started.status_code == 202, started.text
    duplicate = await deliver(http, stack, payload)
    assert duplicate.json()["status"] == "duplicate"
    unknown = copy.deepcopy(payload)
    unknown["data"].update(id=str(uuid.uuid4()), billing_reason="subscription_gift")
    assert (await deliver(http, stack, unknown)).json()["status"] == "ignored"
    refused = copy.deepcopy(payload)
    refused["data"].update(id=str(uuid.uuid4()), product_id="p" * 3000)
    assert (await deliver(http, stack, refused)).json()["status"] == "refused"

    handle = stack.temporal.get_workflow_handle(order_workflow_id(data["id"]))
    await asyncio.wait_for(handle.result(), timeout=60)
    assert len(grant_events(stack, customer_id)) == 2, "both rules granted, launch included"

    histories = []
    query = f"StartTime >= '{since.isoformat()}'"
    async for execution in stack.temporal.list_workflows(query):
        history = await stack.temporal.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        histories.append(history.to_json())
    assert histories, "the run's history is among those scanned"
    # Histories hold payloads base64-encoded in JSON form; decode what they carry.
    decoded = "\n".join(t for h in histories for t in history_texts(json.loads(h)))
    assert "launch" in decoded, "the scan reads the payloads (the allowed key is there)"
    logs = stack.api.log() + "\n" + caplog.text
    for personal in PERSONAL:
        assert personal not in decoded, f"{personal!r} in a workflow history"
        assert personal not in logs, f"{personal!r} in a log"


async def test_no_personal_data_reaches_an_allowance_history(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a subscription's webhooks, which carry the customer in full."""
    caplog.set_level("DEBUG")
    customer_id = stack.standin.create_customer(email=f"2.{EMAIL}", name=NAME)["id"]
    data = subscription(customer_id)
    data["metadata"] = {"buyer_email": EMAIL, "note": f"{NAME}, {PHONE}, {STREET}"}
    data["customer"] |= {
        "email": EMAIL,
        "name": NAME,
        "billing_address": {"line1": STREET},
        "phone": PHONE,
    }
    data["customer_cancellation_comment"] = f"{NAME} <{EMAIL}>"
    for event in ("subscription.created", "subscription.updated"):
        body = json.dumps({"type": event, "timestamp": data["modified_at"], "data": data})
        answer = await post_signed(stack, http, body.encode())
        assert answer.json()["status"] == "signalled", answer.text

    handle = stack.temporal.get_workflow_handle(allowance_workflow_id(data["id"]))
    await asyncio.sleep(1)  # the run takes the messages
    history = (await handle.fetch_history()).to_json()
    decoded = "\n".join(history_texts(json.loads(history)))
    assert data["id"] in decoded and customer_id in decoded, "the scan reads the payloads"
    logs = stack.api.log() + "\n" + caplog.text
    for personal in PERSONAL:
        assert personal not in decoded, f"{personal!r} in the allowance history"
        assert personal not in logs, f"{personal!r} in a log"
