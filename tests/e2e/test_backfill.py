"""Backfills over HTTP, end to end: the operator API starts the workflow, the worker lists
Polar's (the stand-in's) active subscriptions and grants through the gateway; the same key
grants nothing twice, another body under the same key is refused, no token no backfill.
The CLI drives the same API."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

import httpx
from typer.testing import CliRunner

from polar_credits.cli import app
from tests.conftest import OPERATOR_TOKEN, Stack

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
DONE_WITHIN_SECONDS = 60.0


async def finished(http: httpx.AsyncClient, stack: Stack, key: str) -> dict[str, Any]:
    """GET /backfills/{key} until the backfill is no longer running."""
    for _ in range(int(DONE_WITHIN_SECONDS / 0.2)):
        response = await http.get(f"{stack.api_url}/backfills/{key}", headers=AUTH)
        assert response.status_code == 200, response.text
        view = response.json()
        if view["status"] != "running":
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"backfill {key} still running: {view}")


def backfill_grants(stack: Stack, key: str, customer_id: str) -> list[dict[str, Any]]:
    prefix = f"polar-credits:backfill:{key}:"
    return [
        e for e in stack.standin.events(customer_id) if (e["external_id"] or "").startswith(prefix)
    ]


def subscribers(stack: Stack, n: int) -> tuple[str, list[str]]:
    """A fresh plan (no rule: its orders grant nothing) and n customers subscribed to it."""
    plan = stack.standin.create_plan(name=f"Backfill plan {uuid.uuid4().hex[:6]}")
    ids = []
    for _ in range(n):
        customer = stack.standin.create_customer()
        stack.standin.subscribe(customer["id"], plan["id"])
        ids.append(customer["id"])
    return plan["id"], ids


async def test_a_product_backfill_grants_each_subscriber_once_whatever_the_retries(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    product_id, customers = subscribers(stack, 3)
    key = f"spring-{uuid.uuid4().hex[:8]}"
    body = {
        "key": key,
        "product_id": product_id,
        "meter": "api_calls",
        "units": 30,
        "reason": "spring gift",
    }
    first = await http.post(f"{stack.api_url}/backfills", json=body, headers=AUTH)
    assert first.status_code == 202, first.text
    assert first.json()["workflow_id"] == f"backfill-{key}"
    report = await finished(http, stack, key)
    assert report["status"] == "completed"
    progress = report["progress"]
    assert progress["done"] and progress["pages"] == 1
    assert (progress["customers_seen"], progress["granted"], progress["rejected_total"]) == (
        3,
        3,
        0,
    )
    for customer_id in customers:
        [grant] = backfill_grants(stack, key, customer_id)
        assert grant["external_id"] == f"polar-credits:backfill:{key}:customer:{customer_id}"
        assert grant["metadata"]["units"] == -30 and grant["name"] == "api_usage"

    # Polar's listing holds the customers' emails and names: none reaches the history.
    history = await stack.temporal.get_workflow_handle(f"backfill-{key}").fetch_history()
    assert "@example.com" not in history.to_json() and "Test Buyer" not in history.to_json()

    # The same request again: the same backfill, nothing granted twice.
    again = await http.post(f"{stack.api_url}/backfills", json=body, headers=AUTH)
    assert again.status_code == 200, again.text
    assert again.json()["progress"]["granted"] == 3
    # Another body under the key: refused, nothing started.
    changed = await http.post(
        f"{stack.api_url}/backfills", json={**body, "units": 300}, headers=AUTH
    )
    assert changed.status_code == 409
    assert "already used" in changed.json()["detail"]
    for customer_id in customers:
        assert len(backfill_grants(stack, key, customer_id)) == 1


async def test_unknown_customers_are_reported_and_the_rest_granted(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    known = stack.standin.create_customer()["id"]
    gone = str(uuid.uuid4())
    key = f"list-{uuid.uuid4().hex[:8]}"
    body = {
        "key": key,
        "customer_ids": [gone, known],
        "meter": "api_calls",
        "units": 5,
        "reason": "apology",
    }
    assert (
        await http.post(f"{stack.api_url}/backfills", json=body, headers=AUTH)
    ).status_code == 202
    report = await finished(http, stack, key)
    progress = report["progress"]
    assert report["status"] == "completed"
    assert (progress["granted"], progress["rejected_total"]) == (1, 1)
    assert progress["rejected"][0]["customer_id"] == gone
    assert "422" in progress["rejected"][0]["reason"]
    assert len(backfill_grants(stack, key, known)) == 1


async def test_bad_requests_change_nothing(stack: Stack, http: httpx.AsyncClient) -> None:
    key = f"bad-{uuid.uuid4().hex[:8]}"
    body = {"key": key, "all_active": True, "meter": "api_calls", "units": 1, "reason": "x"}
    url = f"{stack.api_url}/backfills"
    assert (await http.post(url, json=body)).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await http.post(url, json=body, headers=wrong)).status_code == 401
    unknown_meter = await http.post(url, json={**body, "meter": "nope"}, headers=AUTH)
    assert unknown_meter.status_code == 422 and "api_calls" in unknown_meter.text
    two_targets = await http.post(url, json={**body, "product_id": "p"}, headers=AUTH)
    assert two_targets.status_code == 422
    bad_key = await http.post(url, json={**body, "key": "no spaces"}, headers=AUTH)
    assert bad_key.status_code == 422
    missing = await http.get(f"{url}/{key}", headers=AUTH)
    assert missing.status_code == 404, "none of these started a backfill"


def cli(stack: Stack, *args: str) -> Any:
    env = {"CREDITS_API_URL": stack.api_url, "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN}
    return CliRunner().invoke(app, list(args), env={**os.environ, **env})


async def test_the_cli_starts_waits_and_shows_a_backfill(stack: Stack) -> None:
    customer = stack.standin.create_customer()["id"]
    key = f"cli-{uuid.uuid4().hex[:8]}"
    args = ["backfill", "start", "--key", key, "--customer", customer, "--meter", "api_calls"]
    args += ["--units", "7", "--reason", "cli test", "--wait", "--json"]
    result = await asyncio.to_thread(cli, stack, *args)
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["status"] == "completed" and view["progress"]["granted"] == 1
    status = await asyncio.to_thread(cli, stack, "backfill", "status", key)
    assert status.exit_code == 0 and "completed" in status.output and key in status.output
    watched = await asyncio.to_thread(cli, stack, "backfill", "status", key, "--watch")
    assert watched.exit_code == 0 and f"backfill {key}" in watched.output  # the bar, at its end
    conflict = await asyncio.to_thread(
        cli, stack, *[a if a != "7" else "8" for a in args if a != "--wait"]
    )
    assert conflict.exit_code == 4, conflict.output  # ExitCode.CONFLICT
    assert len(backfill_grants(stack, key, customer)) == 1
