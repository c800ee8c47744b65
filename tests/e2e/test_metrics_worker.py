"""The worker's Prometheus endpoint, scraped after a grant: the Temporal SDK's metrics and
the service's (grants by rule and meter, verification, Polar calls, the budget) on one port."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowHandle

from polar_credits.identity import allowance_workflow_id
from polar_credits.models.allowances import (
    AllowanceState,
    SubscriptionFacts,
    SubscriptionObservation,
)
from polar_credits.worker import build_worker
from polar_credits.worker_metrics import worker_runtime
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow
from tests.conftest import SEAT_HEAVY_PRODUCT_ID, Stack, credit_pack_order
from tests.support.net import free_port


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for sample, found, value in samples(text)
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    )


async def test_the_worker_endpoint_has_sdk_and_service_metrics_after_a_grant(
    stack: Stack,
) -> None:
    port = free_port()
    runtime = worker_runtime(port, host="127.0.0.1")
    client = await Client.connect(stack.settings.temporal_address, runtime=runtime)
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    customer_id = stack.standin.create_customer()["id"]
    async with build_worker(client, queue, stack.polar, stack.rules, per_minute=6000):
        state = await client.execute_workflow(
            OrderCreditsWorkflow.run,
            credit_pack_order(
                customer_id, str(uuid.uuid4()), timeout_seconds=20, first_interval_seconds=0.5
            ),
            id=f"metrics-{uuid.uuid4()}",
            task_queue=queue,
        )
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert state.status == "verified", state

    # The SDK's own metrics: the run and its activities, on this task queue.
    assert total(text, "temporal_workflow_completed_total", task_queue=queue) >= 1, text
    assert total(text, "temporal_activity_execution_latency_count", task_queue=queue) >= 1
    # The service's: what was granted, by rule and meter, and that Polar's meter showed it.
    grant = {"rule": "starter-bonus", "meter": "api_calls", "task_queue": queue}
    assert total(text, "polar_credits_grant_events_total", **grant) == 1
    assert total(text, "polar_credits_granted_units_total", **grant) == 10
    assert total(text, "polar_credits_verifications_total", outcome="verified") == 1
    # The gateway: its calls by action and outcome, its permits and what waits for one.
    ingests = {"action": "ingesting grant events", "outcome": "ok"}
    assert total(text, "polar_credits_polar_calls_total", **ingests) >= 1
    assert total(text, "polar_credits_polar_calls_total", outcome="rate_limited") == 0
    assert total(text, "polar_credits_polar_permits_total") >= 2  # the ingest and a read
    assert total(text, "polar_credits_polar_permit_wait_seconds_count") >= 2
    assert total(text, "polar_credits_polar_budget_per_minute") == 6000
    assert {labels["kind"] for name, labels, _ in samples(text) if name.endswith("_waiting")} == {
        "ingest",
        "read",
        "call",
    }


async def test_held_amounts_and_refused_messages_are_counted(stack: Stack) -> None:
    """Issue 16: an allowance period above the per-grant maximum and a message naming another
    customer than the subscription's are counted on the worker's endpoint (workflow metrics:
    recorded once, never again when the run replays)."""
    port = free_port()
    runtime = worker_runtime(port, host="127.0.0.1")
    client = await Client.connect(stack.settings.temporal_address, runtime=runtime)
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    facts = SubscriptionFacts(
        subscription_id=str(uuid.uuid4()),
        customer_id=stack.standin.create_customer()["id"],
        product_id=SEAT_HEAVY_PRODUCT_ID,
        status="active",
        modified_at=now.isoformat(),
        started_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        current_period_start=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        current_period_end=(now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        seats=10**9,
    )
    async with build_worker(client, queue, stack.polar, stack.rules, per_minute=6000):
        handle = await client.start_workflow(
            SubscriptionAllowanceWorkflow.run,
            AllowanceState(subscription_id=facts.subscription_id),
            id=allowance_workflow_id(facts.subscription_id),
            task_queue=queue,
            start_signal="observe",
            start_signal_args=[SubscriptionObservation(facts=facts, paid_order_id="order-1")],
        )
        try:
            await until(handle, lambda s: s.held_total == 1)
            other = replace(facts, customer_id="someone-else", modified_at=None)
            await handle.signal(
                SubscriptionAllowanceWorkflow.observe, SubscriptionObservation(other)
            )
            await until(handle, lambda s: s.refused_total == 1)
            async with httpx.AsyncClient(timeout=10) as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            await handle.terminate("test over")
    held = {"kind": "allowance", "task_queue": queue}
    assert total(text, "polar_credits_grants_held_over_max_total", **held) == 1, text
    refused = {"reason": "customer_mismatch", "task_queue": queue}
    assert total(text, "polar_credits_allowance_messages_refused_total", **refused) == 1
    assert total(text, "polar_credits_grant_events_total", task_queue=queue) == 0


async def until(handle: WorkflowHandle, done: Callable[[AllowanceState], bool]) -> None:
    deadline = time.monotonic() + 20
    while not done(state := await handle.query(SubscriptionAllowanceWorkflow.state)):
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)
