"""Verification against Polar's recomputation lag, and the API when Temporal is down."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from polar.v2026_10 import PolarAsync
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from polar_credits.models.orders import OrderCreditsState
from polar_credits.rules import parse_rules
from polar_credits.worker import build_worker
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    METER_ID,
    TEST_RULES,
    WEBHOOK_SECRET,
    credit_pack_order,
    seeded_standin,
)
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.signing import polar_signed_headers
from tests.support.standin import StandinProcess

LAG = 2.0


@pytest.fixture(scope="module")
def laggy_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    process = seeded_standin(tmp_path_factory.mktemp("laggy") / "standin.sqlite3", balance_lag=LAG)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def laggy_queue(
    temporal_env: WorkflowEnvironment, laggy_standin: StandinProcess
) -> AsyncIterator[str]:
    queue = f"credits-laggy-{uuid.uuid4().hex[:8]}"
    polar = PolarAsync(laggy_standin.token, base_url=laggy_standin.base_url)
    async with build_worker(temporal_env.client, queue, polar, parse_rules(TEST_RULES)):
        yield queue


async def run_order(
    client: Client, queue: str, standin: StandinProcess, timeout_seconds: float
) -> OrderCreditsState:
    customer_id = standin.create_customer(name="Lag Test")["id"]
    order_id = str(uuid.uuid4())
    return await client.execute_workflow(
        OrderCreditsWorkflow.run,
        credit_pack_order(
            customer_id, order_id, timeout_seconds=timeout_seconds, first_interval_seconds=0.5
        ),
        id=f"lag-test-{order_id}",
        task_queue=queue,
        execution_timeout=None,
    )


async def test_verification_waits_out_polars_recomputation_lag(
    temporal_env: WorkflowEnvironment, laggy_queue: str, laggy_standin: StandinProcess
) -> None:
    state = await run_order(temporal_env.client, laggy_queue, laggy_standin, timeout_seconds=30)
    [check] = state.verifications
    assert state.status == "verified"
    assert check.verified and check.balance == 10
    assert check.checks >= 2, "the first read came before Polar recomputed the balance"
    assert state.ingest is not None and state.ingest.inserted == 1


async def test_lag_beyond_the_bound_is_flagged_unverified_not_failed(
    temporal_env: WorkflowEnvironment, laggy_queue: str, laggy_standin: StandinProcess
) -> None:
    state = await run_order(temporal_env.client, laggy_queue, laggy_standin, timeout_seconds=0.3)
    assert state.status == "unverified"
    assert state.ingest is not None and state.ingest.inserted == 1
    assert not state.verifications[0].verified
    # The grant itself stands: Polar shows it once it has recomputed.
    customer_id = state.customer_id
    async with asyncio.timeout(15):
        while True:
            meters = await PolarAsync(
                laggy_standin.token, base_url=laggy_standin.base_url
            ).customer_meters.list(customer_id=customer_id, meter_id=METER_ID)
            if meters.items and meters.items[0].balance == 10:
                break
            await asyncio.sleep(0.5)


async def test_api_answers_503_when_temporal_is_unreachable(
    laggy_standin: StandinProcess, tmp_path: Path
) -> None:
    customer_id = laggy_standin.create_customer(name="Down")["id"]
    order_id = laggy_standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)[
        "order"
    ]["id"]
    port = free_port()
    api = ServiceProcess(
        "api",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens there
            "CREDITS_API_PORT": str(port),
        },
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=tmp_path / "api.log",
    ).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            order = (
                await http.get(
                    f"{laggy_standin.base_url}/v1/orders/{order_id}",
                    headers={"Authorization": f"Bearer {laggy_standin.token}"},
                )
            ).json()
            body = json.dumps(
                {
                    "type": "order.paid",
                    "timestamp": order["created_at"],
                    "api_version": "2026-10",
                    "data": order,
                }
            ).encode()
            response = await http.post(
                f"http://127.0.0.1:{port}/webhooks/polar",
                content=body,
                headers=polar_signed_headers(WEBHOOK_SECRET, body),
            )
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        api.stop()
    assert response.status_code == 503
    assert "retry" in response.json()["detail"]
    assert ready.status_code == 503
    assert "Temporal unavailable" in api.log()
