"""The webhook while Temporal is down, frozen or refusing, with real processes: a 503 comes
well within Polar's 10 s only when Temporal is unavailable, and the delivery that Polar
retries afterwards is the one that starts the run, once."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from polar_credits.identity import allowance_workflow_id, order_workflow_id
from polar_credits.temporal_client import CORE_LOGGER
from tests.conftest import OPERATOR_TOKEN, TEST_RULES, WEBHOOK_SECRET, YEARLY_PRODUCT_ID
from tests.e2e.test_operators import cli
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.signing import polar_signed_headers
from tests.support.temporal import TemporalProcess

# Polar gives up on a delivery after 10 s; the API's own deadline is 5 s by default.
POLAR_TIMEOUT_SECONDS = 10.0


def order_paid(order_id: str) -> bytes:
    return json.dumps(
        {
            "type": "order.paid",
            "timestamp": "2026-11-30T12:00:00Z",
            "data": {
                "id": order_id,
                "customer_id": str(uuid.uuid4()),
                "product_id": str(uuid.uuid4()),
                "status": "paid",
                "billing_reason": "purchase",
                "created_at": "2026-11-30T12:00:00Z",
            },
        }
    ).encode()


async def deliver(api_url: str, body: bytes) -> tuple[httpx.Response, float]:
    """One delivery attempt as Polar makes it: freshly signed, and given up after 10 s."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=POLAR_TIMEOUT_SECONDS) as http:
        response = await http.post(
            f"{api_url}/webhooks/polar",
            content=body,
            headers=polar_signed_headers(WEBHOOK_SECRET, body),
        )
    return response, time.monotonic() - started


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url)


@pytest.fixture
def temporal(tmp_path: Path) -> Iterator[TemporalProcess]:
    process = TemporalProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def start_api(
    temporal: TemporalProcess,
    log_dir: Path,
    rules_file: Path | None = None,
    log_format: str = "text",
    **extra: str,
) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "api",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TEMPORAL_ADDRESS": temporal.address,
            "CREDITS_TASK_QUEUE": "outage-test",
            "CREDITS_API_PORT": str(port),
            "CREDITS_RULES_FILE": str(rules_file or ""),
            "CREDITS_LOG_FORMAT": log_format,
            **extra,
        },
        # /healthz, not /readyz: the API must come up while Temporal is down.
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=log_dir / "api.log",
    ).start()


def api_url(api: ServiceProcess) -> str:
    return api.ready_url.removesuffix("/healthz")


async def runs_of(temporal: TemporalProcess, order_id: str) -> list[str]:
    client = await Client.connect(temporal.address)
    query = f"WorkflowId = '{order_workflow_id(order_id)}'"
    return [w.run_id async for w in client.list_workflows(query)]


async def test_temporal_stopped_answers_503_fast_then_accepts_when_it_returns(
    temporal: TemporalProcess, tmp_path: Path
) -> None:
    api = start_api(temporal, tmp_path)  # Temporal is not running yet
    try:
        order_id = str(uuid.uuid4())
        response, took = await deliver(api_url(api), order_paid(order_id))
        assert response.status_code == 503, response.text
        assert took < POLAR_TIMEOUT_SECONDS - 2, f"answered in {took:.1f} s"
        assert "Temporal" in response.json()["detail"]
        assert (await get(f"{api_url(api)}/readyz")).status_code == 503
        metrics = (await get(f"{api_url(api)}/metrics")).text
        deliveries = 'polar_credits_webhook_deliveries_total{event_type="order.paid",'
        assert deliveries + 'outcome="temporal_unavailable"} 1.0' in metrics, metrics
        start_error = r'^polar_credits_temporal_start_errors_total\{cause="\w+",workflow="order"'
        assert re.search(start_error, metrics, re.M), metrics

        temporal.start()
        response, _ = await deliver(api_url(api), order_paid(order_id))  # Polar's retry
        assert response.status_code == 202 and response.json()["status"] == "started"
        assert len(await runs_of(temporal, order_id)) == 1
        assert "Traceback" not in api.log()
    finally:
        api.stop()


async def test_a_subscription_webhook_while_temporal_is_down_is_retried_not_lost(
    temporal: TemporalProcess, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(TEST_RULES)
    api = start_api(temporal, tmp_path, rules)  # Temporal is not running yet
    try:
        subscription = {
            "id": str(uuid.uuid4()),
            "status": "active",
            "customer_id": str(uuid.uuid4()),
            "product_id": YEARLY_PRODUCT_ID,
            "modified_at": "2026-11-30T12:00:00Z",
        }
        body = json.dumps(
            {
                "type": "subscription.updated",
                "timestamp": "2026-11-30T12:00:00Z",
                "data": subscription,
            }
        ).encode()
        response, took = await deliver(api_url(api), body)
        assert response.status_code == 503, response.text
        assert took < POLAR_TIMEOUT_SECONDS - 2, f"answered in {took:.1f} s"

        temporal.start()
        response, _ = await deliver(api_url(api), body)  # Polar's retry
        assert response.status_code == 202 and response.json()["status"] == "signalled"
        client = await Client.connect(temporal.address)
        run = client.get_workflow_handle(allowance_workflow_id(subscription["id"]))
        assert (await run.describe()).status == WorkflowExecutionStatus.RUNNING
    finally:
        api.stop()


async def test_temporal_frozen_answers_503_within_the_deadline(
    temporal: TemporalProcess, tmp_path: Path
) -> None:
    temporal.start()
    api = start_api(temporal, tmp_path)
    try:
        warm, _ = await deliver(api_url(api), order_paid(str(uuid.uuid4())))
        assert warm.status_code == 202, warm.text  # connected before the freeze

        order_id = str(uuid.uuid4())
        temporal.freeze()
        try:
            response, took = await deliver(api_url(api), order_paid(order_id))
        finally:
            temporal.thaw()
        assert response.status_code == 503, response.text
        assert took < POLAR_TIMEOUT_SECONDS - 2, f"answered in {took:.1f} s"

        # Polar retries. The frozen attempt may have reached Temporal after all: then the
        # retry is a duplicate. Either way the order has exactly one run.
        deadline = time.monotonic() + 30
        while True:
            response, _ = await deliver(api_url(api), order_paid(order_id))
            if response.status_code != 503 or time.monotonic() > deadline:
                break
        assert response.status_code in (200, 202), response.text
        assert response.json()["status"] in ("started", "duplicate")
        assert len(await runs_of(temporal, order_id)) == 1
    finally:
        api.stop()


async def test_temporal_refusing_a_run_is_not_an_outage(tmp_path: Path) -> None:
    """Temporal refuses a start it judges invalid (here: a server whose workflow ids may
    be 40 bytes at most). Polar must not retry that for half an hour and then disable the
    endpoint: the answer is a 2xx `refused`, logged and counted, while /readyz stays 200."""
    temporal = TemporalProcess(tmp_path, "limit.maxIDLength=40").start()
    api = start_api(temporal, tmp_path)
    try:
        order_id = str(uuid.uuid4())  # its workflow id has 50 characters
        response, _ = await deliver(api_url(api), order_paid(order_id))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "refused"
        assert "Temporal refused the run" in answer["detail"]
        assert (await get(f"{api_url(api)}/readyz")).status_code == 200
        metrics = (await get(f"{api_url(api)}/metrics")).text
        assert 'polar_credits_webhooks_total{outcome="refused"} 1' in metrics
        refused = '{cause="invalid_argument",workflow="order"} 1.0'
        assert "polar_credits_temporal_start_errors_total" + refused in metrics, metrics
        assert f"order {order_id}: refused for good" in api.log()
        assert await runs_of(temporal, order_id) == []
    finally:
        api.stop()
        temporal.stop()


ESC = "\x1b"


def assert_formatted(log: str, log_format: str) -> None:
    """Every line is the service's own: one JSON object each, or text without the colour
    escapes the SDK's core writes when it prints for itself."""
    assert ESC not in log, log[-3000:]
    if log_format == "json":
        for line in filter(str.strip, log.splitlines()):
            entry = json.loads(line)  # fails on any line that is not one JSON object
            assert {"time", "level", "logger", "message"} <= entry.keys(), line


async def wait_for_line(process: ServiceProcess, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in process.log():
        assert time.monotonic() < deadline, f"no {text!r} in:\n{process.log()[-3000:]}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_sdk_cores_warnings_reach_the_apis_formatter(
    temporal: TemporalProcess, tmp_path: Path, log_format: str
) -> None:
    """Temporal goes away under a connected API: the client's core retries and warns. Those
    warnings come through the service's logging like every other line (logger
    `temporalio.core`), not printed by the core itself in colour around the formatter."""
    temporal.start()
    api = start_api(temporal, tmp_path, log_format=log_format)
    try:
        warm, _ = await deliver(api_url(api), order_paid(str(uuid.uuid4())))
        assert warm.status_code == 202, warm.text
        temporal.stop()
        response, _ = await deliver(api_url(api), order_paid(str(uuid.uuid4())))
        assert response.status_code == 503, response.text
        await wait_for_line(api, CORE_LOGGER, 10)
    finally:
        api.stop()
    log = api.log()
    assert "retried" in log, log[-3000:]  # the core's own warning, forwarded
    assert_formatted(log, log_format)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_sdk_cores_warnings_reach_the_workers_formatter(
    temporal: TemporalProcess, tmp_path: Path, log_format: str
) -> None:
    """The worker's polls fail once Temporal is gone: the core's warnings about them are
    lines of the worker's own format too."""
    temporal.start()
    rules = tmp_path / "rules.toml"
    rules.write_text(TEST_RULES)
    probes = free_port()
    worker = ServiceProcess(
        "worker",
        ["worker.py"],
        env={
            "POLAR_ACCESS_TOKEN": "polar_oat_not_used",
            "POLAR_API_URL": "http://127.0.0.1:9",  # never called: no order reaches it
            "TEMPORAL_ADDRESS": temporal.address,
            "CREDITS_RULES_FILE": str(rules),
            "CREDITS_TASK_QUEUE": "outage-test",
            "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
            "CREDITS_LOG_FORMAT": log_format,
            "CREDITS_WORKER_METRICS_PORT": str(probes),
        },
        ready_url=f"http://127.0.0.1:{probes}/readyz",  # 200 once it polls
        log_path=tmp_path / "worker.log",
    ).start(timeout=60)
    try:
        temporal.stop()
        await wait_for_line(worker, CORE_LOGGER, 60)
    finally:
        worker.stop()
    assert_formatted(worker.log(), log_format)


async def test_temporal_refusing_an_operator_request_is_a_422_not_an_outage(
    tmp_path: Path,
) -> None:
    """A Temporal whose payloads may be 512 bytes at most (Temporal Cloud's limit is 2 MB):
    the manual grant's input passes it, and Temporal refuses the start for good
    (INVALID_ARGUMENT, "Blob data size exceeds limit"). The operator is told so, 422 with
    Temporal's reason, not "unavailable, try again"; and the CLI exits with its usage code."""
    temporal = TemporalProcess(
        tmp_path, "limit.blobSize.error=512", "limit.blobSize.warn=256"
    ).start()
    rules = tmp_path / "rules.toml"
    rules.write_text(TEST_RULES)
    api = start_api(temporal, tmp_path, rules, CREDITS_OPERATOR_TOKEN=OPERATOR_TOKEN)
    try:
        key = f"blob-{uuid.uuid4()}"
        grant = {
            "customer_id": str(uuid.uuid4()),
            "meter": "api_calls",
            "units": 5,
            "reason": "a reason long enough to pass the server's blob limit " * 3,
            "idempotency_key": key,
        }
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{api_url(api)}/grants",
                json=grant,
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            )
        assert response.status_code == 422, response.text
        assert "INVALID_ARGUMENT" in response.json()["detail"], response.text
        assert (await get(f"{api_url(api)}/readyz")).status_code == 200

        result = cli(
            api_url(api),
            OPERATOR_TOKEN,
            "grants",
            "create",
            "--customer",
            grant["customer_id"],
            "--meter",
            "api_calls",
            "--units",
            "5",
            "--reason",
            grant["reason"],
            "--idempotency-key",
            f"{key}-cli",
        )
        assert result.exit_code == 2, result.output  # usage: not 5, "try again"
        client = await Client.connect(temporal.address)
        runs = [w async for w in client.list_workflows("WorkflowType = 'ManualGrantWorkflow'")]
        assert runs == []
    finally:
        api.stop()
        temporal.stop()
