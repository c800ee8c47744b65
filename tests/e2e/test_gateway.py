"""The one gateway to Polar, against the stand-in over HTTP and a real Temporal budget:
batching, poison isolation, one budget for every worker, 429s waited out by everyone, and
verification that never fails a granted run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from polar.v2026_10 import PolarAsync
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from polar_credits import search_attributes as sa
from polar_credits.activities.gateway import PolarGateway
from polar_credits.identity import order_workflow_id
from polar_credits.models.grants import PolarErrorType
from polar_credits.models.orders import OrderCreditsState
from polar_credits.rules import parse_rules
from polar_credits.worker import build_worker
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import TEST_RULES, Stack, credit_pack_order
from tests.support.standin import StandinProcess


def grant_event(customer_id: str, order_id: str) -> dict:
    return {
        "name": "api_usage",
        "customer_id": customer_id,
        "external_id": f"polar-credits:order:{order_id}:rule:gateway-test",
        "metadata": {"units": -10, "order_id": order_id, "rule_id": "gateway-test"},
    }


async def gateways(
    env: WorkflowEnvironment, standin: StandinProcess, count: int, per_minute: int
) -> AsyncIterator[list[PolarGateway]]:
    """`count` workers, each with its own Temporal connection and gateway, as separate
    processes would be, on one task queue: they share one budget."""
    queue = f"gateway-{uuid.uuid4().hex[:8]}"
    target = env.client.service_client.config.target_host
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            client = await Client.connect(target)
            polar = PolarAsync(standin.token, base_url=standin.base_url, timeout=5.0)
            found.append(
                await stack.enter_async_context(
                    build_worker(
                        client, queue, polar, parse_rules(TEST_RULES), per_minute=per_minute
                    )
                )
            )
        yield found


@pytest.fixture
async def gateway(
    temporal_env: WorkflowEnvironment, standin: StandinProcess
) -> AsyncIterator[PolarGateway]:
    async for [one] in gateways(temporal_env, standin, 1, per_minute=600):
        yield one


def calls(standin: StandinProcess, endpoint: str) -> int:
    return len(standin.requests(endpoint))


def grant_events(standin: StandinProcess, customer_ids: list[str]) -> list[dict]:
    return [
        e
        for customer_id in set(customer_ids)
        for e in standin.events(customer_id=customer_id)
        if e["name"] == "api_usage"
    ]


async def test_grants_of_many_orders_travel_in_one_ingest_call(
    gateway: PolarGateway, standin: StandinProcess
) -> None:
    customers = [standin.create_customer()["id"] for _ in range(5)]
    orders = [(customers[i % 5], str(uuid.uuid4())) for i in range(30)]
    before = calls(standin, "events.ingest")

    outcomes = await asyncio.gather(*(gateway.ingest([grant_event(*o)]) for o in orders))

    assert calls(standin, "events.ingest") - before == 1
    assert len(grant_events(standin, customers)) == 30
    assert all(o.confirmed == 1 and o.batch_events == 30 for o in outcomes)
    assert all((o.inserted, o.duplicates) == (1, 0) for o in outcomes)
    # "Stored by" is on Polar's clock (the Date of its answer, whole seconds), not ours.
    assert all(o.stored_by.microsecond == 0 for o in outcomes)

    # The same batch again (an answer lost, a retry) with five new orders: one call, and
    # only the five new grants are stored.
    again = orders + [(customers[0], str(uuid.uuid4())) for _ in range(5)]
    outcomes = await asyncio.gather(*(gateway.ingest([grant_event(*o)]) for o in again))
    assert calls(standin, "events.ingest") - before == 2
    assert len(grant_events(standin, customers)) == 35
    # Polar counts for the whole call: which orders were the duplicates is not known.
    assert all(o.confirmed == 1 and o.inserted is None for o in outcomes)


async def test_an_event_polar_rejects_fails_only_its_own_order(
    gateway: PolarGateway, standin: StandinProcess
) -> None:
    customers = [standin.create_customer()["id"] for _ in range(9)]
    ghost = str(uuid.uuid4())  # not a customer of this organization
    orders = [(c, str(uuid.uuid4())) for c in customers[:4]]
    orders += [(ghost, str(uuid.uuid4()))]
    orders += [(c, str(uuid.uuid4())) for c in customers[4:]]
    before = calls(standin, "events.ingest")

    outcomes = await asyncio.gather(
        *(gateway.ingest([grant_event(*o)]) for o in orders), return_exceptions=True
    )

    poisoned = outcomes.pop(4)
    assert isinstance(poisoned, ApplicationError)
    assert poisoned.type == PolarErrorType.GRANT_REJECTED and poisoned.non_retryable
    assert "422" in poisoned.message and "Customer does not exist" in poisoned.message
    assert "events.0.customer_id" in poisoned.message, "the place is the order's own event"
    assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
    assert len(grant_events(standin, customers)) == 9
    assert standin.events(customer_id=ghost) == []
    # The rejected call, then the rest at once.
    assert calls(standin, "events.ingest") - before == 2


async def test_a_rejection_that_names_no_event_is_isolated_by_halving(
    gateway: PolarGateway, standin: StandinProcess
) -> None:
    customers = [standin.create_customer()["id"] for _ in range(4)]
    standin.add_fault("events.ingest", status=422, count=1)
    try:
        before = calls(standin, "events.ingest")
        outcomes = await asyncio.gather(
            *(gateway.ingest([grant_event(c, str(uuid.uuid4()))]) for c in customers)
        )
    finally:
        standin.clear_faults()
    assert all(o.confirmed == 1 for o in outcomes)
    assert len(grant_events(standin, customers)) == 4
    statuses = [r["status"] for r in standin.requests("events.ingest")[before:]]
    assert statuses == [422, 200, 200], "refused whole, then each half went through"


async def test_meter_reads_of_many_customers_are_one_call(
    gateway: PolarGateway, standin: StandinProcess
) -> None:
    from tests.conftest import METER_ID

    customers = [standin.create_customer()["id"] for _ in range(150)]
    before = calls(standin, "customer_meters.list")
    rows = await asyncio.gather(*(gateway.customer_meter(c, METER_ID) for c in customers))
    # Polar pages hold 100: 150 customers are two calls, not 150.
    assert calls(standin, "customer_meters.list") - before == 2
    assert [r.customer_id for r in rows if r is not None] == customers
    assert all(r.balance == 0 for r in rows if r is not None)


async def test_every_worker_spends_from_one_budget(
    temporal_env: WorkflowEnvironment, standin: StandinProcess
) -> None:
    """Two workers, each allowed "120 a minute": together they still make 120 a minute (a
    burst of 12, then one call every 0.56 s), not 240."""
    customer_id = standin.create_customer()["id"]
    before = calls(standin, "events.list")
    async for pair in gateways(temporal_env, standin, 2, per_minute=120):
        await asyncio.gather(
            *(
                gw.order_events(customer_id, "api_usage", str(uuid.uuid4()))
                for gw in pair
                for _ in range(12)
            )
        )
    times = sorted(r["at"] for r in standin.requests("events.list")[before:])
    assert len(times) == 24
    # Beyond the burst of 12, each call waits its 60/108 s turn: 24 calls take 12 turns.
    assert times[-1] - times[0] >= 12 * 60 / 108 - 0.5, times


async def test_a_429_is_waited_out_by_every_worker(
    temporal_env: WorkflowEnvironment, standin: StandinProcess
) -> None:
    customer_id = standin.create_customer()["id"]
    before = calls(standin, "events.list")
    async for first, second in gateways(temporal_env, standin, 2, per_minute=600):
        standin.add_fault("events.list", status=429, count=1, retry_after=3)
        try:
            with pytest.raises(ApplicationError) as limited:
                await first.order_events(customer_id, "api_usage", "o-1")
            await second.order_events(customer_id, "api_usage", "o-2")
        finally:
            standin.clear_faults()
    assert limited.value.type == PolarErrorType.RATE_LIMITED
    rejected, allowed = standin.requests("events.list")[before:]
    assert (rejected["status"], allowed["status"]) == (429, 200)
    assert allowed["at"] - rejected["at"] >= 3 - 0.1, "the other worker waited too"


@pytest.mark.parametrize("status", [429, 404, 503])
async def test_reads_failing_past_every_retry_never_fail_a_granted_run(
    stack: Stack, status: int
) -> None:
    customer_id = stack.standin.create_customer()["id"]
    order_id = str(uuid.uuid4())
    stack.standin.add_fault("customer_meters.list", status=status, count=10_000, retry_after=1)
    started = time.monotonic()
    try:
        handle = await stack.temporal.start_workflow(
            OrderCreditsWorkflow.run,
            credit_pack_order(customer_id, order_id, timeout_seconds=4, first_interval_seconds=0.2),
            id=order_workflow_id(order_id),
            task_queue=stack.settings.credits_task_queue,
        )
        state = await asyncio.wait_for(handle.result(), timeout=60)
    finally:
        stack.standin.clear_faults()
    assert isinstance(state, OrderCreditsState)
    assert state.status == "unverified", state
    assert [v.verified for v in state.verifications] == [False]
    assert state.verifications[0].checks >= 2, "it kept checking until its bound"
    assert time.monotonic() - started < 30
    events = [e for e in stack.standin.events(customer_id=customer_id) if e["name"] == "api_usage"]
    assert len(events) == 1, "granted once, never again"
    described = await handle.describe()
    assert described.status is not None and described.status.name == "COMPLETED"
    assert described.typed_search_attributes.get(sa.CREDIT_STATUS) == "unverified"
