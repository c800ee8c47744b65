"""What an operator reads in the Temporal UI, end to end on the dev server: each run's static
summary and details (the list and the run's header), its current details (what it is doing
now), and the summaries of its activities and timers (the timeline). No customer email or
name, and no operator's free-text reason, in any of them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import ScheduleActionStartWorkflow, WorkflowHandle
from temporalio.converter import PayloadConverter

from polar_credits.identity import RECONCILE_SCHEDULE_ID as SCHEDULE_ID
from polar_credits.reconcile_schedule import ensure_reconcile_schedule
from tests.conftest import CREDIT_PRODUCT_ID, OPERATOR_TOKEN, YEARLY_PRODUCT_ID, Stack
from tests.e2e.test_allowances import (
    one_month_after,
    standin_on_real_time,  # noqa: F401 - autouse: the allowance run needs real time
    subscribed_and_granted,
)
from tests.e2e.test_operator_grants import manual_body
from tests.e2e.test_pipeline import result_of

EMAIL = "grace.hopper"  # + a suffix and the domain: one customer per test
NAME = "Grace Hopper"
REASON = "goodwill for Grace Hopper, ticket 4711"
SETTLE_SECONDS = 20.0

T = TypeVar("T")


async def eventually(read: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        value = await read()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def current_details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


def summary_of(event: HistoryEvent) -> str | None:
    if not event.user_metadata.HasField("summary"):
        return None
    return PayloadConverter.default.from_payload(event.user_metadata.summary, str)


async def timeline(handle: WorkflowHandle, kind: str) -> list[tuple[str, str | None]]:
    """(activity type or timer id, summary) of each scheduled activity or started timer."""
    rows = []
    async for event in handle.fetch_history_events():
        if kind == "activity" and event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            rows.append((name, summary_of(event)))
        if kind == "timer" and event.HasField("timer_started_event_attributes"):
            rows.append((event.timer_started_event_attributes.timer_id, summary_of(event)))
    return rows


def new_customer(stack: Stack) -> str:
    email = f"{EMAIL}+{uuid.uuid4().hex[:8]}@example.com"
    return stack.standin.create_customer(email=email, name=NAME)["id"]


def personal_free(*texts: str | None) -> None:
    for text in texts:
        assert text is not None
        for personal in (EMAIL, NAME, "Grace", "4711"):
            assert personal not in text, text


async def test_an_order_run_shows_its_order_then_its_outcome(stack: Stack) -> None:
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    order_id = placed["order"]["id"]
    workflow_id = placed["delivery"]["body"]["workflow_id"]
    assert (await result_of(stack, workflow_id)).status == "verified"

    handle = stack.temporal.get_workflow_handle(workflow_id)
    described = await handle.describe()
    summary = await described.static_summary()
    details = await described.static_details()
    # Known at start: the order, why it was billed, the product; abbreviated in the list.
    assert summary == f"order {order_id[:8]}… · purchase · product {CREDIT_PRODUCT_ID[:8]}…"
    assert details is not None
    assert "started by Polar's webhook" in details
    assert f"- order: `{order_id}`" in details
    assert f"- customer: `{customer_id}`" in details
    # Known once decided: the outcome, in the current details.
    done = await current_details(handle)
    assert done == "done · granted 10 credits · verified · rule starter-bonus"
    activities = await timeline(handle, "activity")
    assert ("ingest_order_grants", "ingest 10 credits") in activities
    assert ("verify_grants", "verify the balance on api_calls") in activities
    personal_free(summary, details, done, *(s for _, s in activities))


async def test_an_allowance_run_shows_the_date_of_its_next_period(stack: Stack) -> None:
    customer_id, made, handle, state = await subscribed_and_granted(stack)
    subscription = made["subscription"]
    next_period = one_month_after(subscription["started_at"])
    day, clock = next_period[:10], next_period[11:16]

    details = await eventually(
        lambda: current_details(handle), lambda d: d.startswith("waiting for the next period")
    )
    assert details == (
        f"waiting for the next period · {day} {clock} UTC · 1 period granted, 100 credits in all"
    )
    described = await handle.describe()
    summary = await described.static_summary()
    assert summary == (
        f"allowance · subscription {subscription['id'][:8]}… · product {YEARLY_PRODUCT_ID[:8]}…"
    )
    # The timeline: the grant names its amount and period; the timer says what it waits for.
    activities = await timeline(handle, "activity")
    assert [name for name, _ in activities] == ["grant_allowance"]
    started = subscription["started_at"]
    assert activities[0][1] == (
        f"grant 100 credits for the period from {started[:10]} {started[11:16]} UTC"
        " · rule monthly-on-yearly"
    )
    timers = await timeline(handle, "timer")
    assert timers and timers[-1][1] == f"next period {day} {clock} UTC"


async def test_a_manual_grant_shows_units_and_key_but_not_the_reason(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    key = f"ui-{uuid.uuid4().hex[:12]}"
    response = await http.post(
        f"{stack.api_url}/grants",
        json=manual_body(customer_id, key, units=25, reason=REASON),
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert response.status_code == 201, response.text
    handle = stack.temporal.get_workflow_handle(response.json()["id"])
    await asyncio.wait_for(handle.result(), timeout=60)

    described = await handle.describe()
    summary = await described.static_summary()
    details = await described.static_details()
    assert summary == f"manual grant 25 credits · meter api_calls · key {key[:8]}…"
    done = await current_details(handle)
    assert done == "done · granted 25 credits · verified"
    personal_free(summary, details, done, *(s for _, s in await timeline(handle, "activity")))


async def test_the_reconcile_schedule_starts_runs_that_say_what_they_are(stack: Stack) -> None:
    handle = stack.temporal.get_schedule_handle(SCHEDULE_ID)
    hourly = stack.settings.model_copy(update={"credits_reconcile_interval_seconds": 3600})
    try:
        await ensure_reconcile_schedule(stack.temporal, hourly)
        action = (await handle.describe()).schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        # As described, the action's user metadata is still a payload.
        assert action.static_summary is not None and not isinstance(action.static_summary, str)
        summary = PayloadConverter.default.from_payload(action.static_summary, str)
        assert summary == "reconciliation · scheduled"
    finally:
        await handle.delete()
