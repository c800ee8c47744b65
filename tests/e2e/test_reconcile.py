"""Reconciliation end to end: Polar (the stand-in) disables the webhook endpoint after ten
failed events and creates no event for orders paid meanwhile, so their webhooks are lost for
good. `POST /reconcile` (and `polar-credits reconcile now`) lists the paid orders through the
gateway and starts the missing runs: each lost order is granted exactly once, and a second
reconciliation repairs nothing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import ScheduleActionStartWorkflow
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from polar_credits.cli import app
from polar_credits.identity import RECONCILE_SCHEDULE_ID as SCHEDULE_ID
from polar_credits.identity import order_workflow_id
from polar_credits.reconcile_schedule import ensure_reconcile_schedule
from polar_credits.reconciliation import ReconcileInput
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    OPERATOR_TOKEN,
    UNRULED_PRODUCT_ID,
    WEBHOOK_SECRET,
    Stack,
)
from tests.support.net import free_port

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
WAIT_SECONDS = 60.0


def disable_the_endpoint(stack: Stack) -> None:
    """Ten events that all fail (nothing listens at the target): Polar disables the endpoint."""
    stack.standin.set_webhook_target(
        f"http://127.0.0.1:{free_port()}/webhooks/polar", WEBHOOK_SECRET
    )
    customer = stack.standin.create_customer()["id"]
    order = stack.standin.create_paid_order(customer, UNRULED_PRODUCT_ID, deliver=False)["order"]
    for _ in range(10):
        stack.standin.send_webhook(order["id"])
    assert stack.standin.webhook_target()["enabled"] is False


def grants_of(stack: Stack, customer_id: str) -> list[dict[str, Any]]:
    return [e for e in stack.standin.events(customer_id) if e["name"] == "api_usage"]


async def reconciled(http: httpx.AsyncClient, stack: Stack) -> dict[str, Any]:
    started = await http.post(f"{stack.api_url}/reconcile", headers=AUTH)
    assert started.status_code == 202, started.text
    run = started.json()
    for _ in range(int(WAIT_SECONDS / 0.2)):
        if run["status"] != "running":
            break
        await asyncio.sleep(0.2)
        answer = await http.get(f"{stack.api_url}/reconcile/{run['workflow_id']}", headers=AUTH)
        assert answer.status_code == 200, answer.text
        run = answer.json()
    assert run["status"] == "completed", run
    # Polar's orders hold the customers' emails and names: none reaches the history.
    history = await stack.temporal.get_workflow_handle(run["workflow_id"]).fetch_history()
    assert "@example.com" not in history.to_json() and "Test Buyer" not in history.to_json()
    return run["report"]


async def test_orders_paid_while_the_endpoint_was_disabled_are_granted_once(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    webhook_url = f"{stack.api_url}/webhooks/polar"
    lost: list[tuple[str, str]] = []  # (customer, order)
    try:
        disable_the_endpoint(stack)
        for _ in range(3):
            customer = stack.standin.create_customer()["id"]
            created = stack.standin.create_paid_order(customer, CREDIT_PRODUCT_ID)
            assert created["delivery"]["status"] == "endpoint_disabled"
            lost.append((customer, created["order"]["id"]))
    finally:
        stack.standin.set_webhook_target(webhook_url, WEBHOOK_SECRET)  # enabled again
    for _, order_id in lost:
        handle = stack.temporal.get_workflow_handle(order_workflow_id(order_id))
        try:
            await handle.describe()
            raise AssertionError("the webhook was delivered after all")
        except Exception as exc:  # noqa: BLE001
            assert "not found" in str(exc).lower()

    report = await reconciled(http, stack)
    assert report["started"] >= 3 and report["complete"]
    for customer, order_id in lost:
        for _ in range(int(WAIT_SECONDS / 0.2)):
            if grants_of(stack, customer):
                break
            await asyncio.sleep(0.2)
        [grant] = grants_of(stack, customer)
        assert grant["metadata"]["units"] == -10 and grant["metadata"]["order_id"] == order_id
        run = await stack.temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
        assert run.search_attributes.get("PolarOrderId") == [order_id]

    # Nothing left to repair; the runs it started are counted, never started again.
    second = await reconciled(http, stack)
    assert second["started"] == 0 and second["already_handled"] >= 3
    assert second["watermark"] >= report["watermark"]
    for customer, _ in lost:
        assert len(grants_of(stack, customer)) == 1


async def test_reconcile_now_from_the_cli_prints_the_report(stack: Stack) -> None:
    env = {"CREDITS_API_URL": stack.api_url, "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN}
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["reconcile", "now", "--json"], env={**os.environ, **env}
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert run["status"] == "completed"
    assert {"started", "already_handled", "pages", "watermark"} <= set(run["report"])
    assert run["workflow_id"].startswith("polar-credits-reconcile-now-")


async def test_reconcile_needs_the_operator_token(stack: Stack, http: httpx.AsyncClient) -> None:
    assert (await http.post(f"{stack.api_url}/reconcile")).status_code == 401
    unknown = await http.get(
        f"{stack.api_url}/reconcile/not-a-run-{uuid.uuid4().hex}", headers=AUTH
    )
    assert unknown.status_code == 404


async def test_workers_create_the_schedule_once_and_bring_it_up_to_date(stack: Stack) -> None:
    """What every worker does at start-up: the first creates the schedule, the next ones update
    its interval and input, and an operator's pause stays."""
    handle = stack.temporal.get_schedule_handle(SCHEDULE_ID)
    hourly = stack.settings.model_copy(update={"credits_reconcile_interval_seconds": 3600})
    daily = stack.settings.model_copy(
        update={
            "credits_reconcile_interval_seconds": 86400,
            "credits_reconcile_lookback_seconds": 60,
        }
    )
    try:
        await ensure_reconcile_schedule(stack.temporal, hourly)
        await ensure_reconcile_schedule(stack.temporal, hourly)  # a second worker: no error
        await handle.pause(note="operator pause")
        await ensure_reconcile_schedule(stack.temporal, daily)
        described = await handle.describe()
        [interval] = described.schedule.spec.intervals
        assert interval.every == timedelta(days=1)
        assert described.schedule.state.paused and described.schedule.state.note == "operator pause"
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == "ReconcileWorkflow"
        assert action.task_queue == stack.settings.credits_task_queue
        [input] = await stack.temporal.data_converter.decode(action.args, [ReconcileInput])
        assert (
            input.lookback_seconds == 60 and input.task_queue == stack.settings.credits_task_queue
        )
    finally:
        await handle.delete()


async def test_an_interval_of_0_turns_reconciliation_off_and_back_on(stack: Stack) -> None:
    """CREDITS_RECONCILE_INTERVAL_SECONDS=0: a worker creates no schedule and pauses the one
    there is; a worker started with an interval again lifts that pause (and only that one)."""
    handle = stack.temporal.get_schedule_handle(SCHEDULE_ID)
    off = stack.settings.model_copy(update={"credits_reconcile_interval_seconds": 0})
    hourly = stack.settings.model_copy(update={"credits_reconcile_interval_seconds": 3600})
    await ensure_reconcile_schedule(stack.temporal, off)
    with pytest.raises(RPCError) as missing:
        await handle.describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND
    try:
        await ensure_reconcile_schedule(stack.temporal, hourly)
        assert not (await handle.describe()).schedule.state.paused
        await ensure_reconcile_schedule(stack.temporal, off)
        assert (await handle.describe()).schedule.state.paused
        await ensure_reconcile_schedule(stack.temporal, hourly)
        assert not (await handle.describe()).schedule.state.paused
        await handle.pause(note="operator pause")
        await ensure_reconcile_schedule(stack.temporal, hourly)
        assert (await handle.describe()).schedule.state.paused
    finally:
        await handle.delete()
