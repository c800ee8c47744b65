"""The operator's grants over HTTP, against the session's real API, worker, stand-in and
Temporal: auth, listing, showing, manual grants (idempotent by key), revokes (capped, once),
re-runs of failed orders, and the CLI on top."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from polar_credits.cli import app
from polar_credits.identity import manual_grant_external_id, order_workflow_id, revoke_external_id
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    METER_ID,
    OPERATOR_TOKEN,
    WEBHOOK_SECRET,
    Stack,
)
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.signing import polar_signed_headers

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
WAIT_SECONDS = 60.0

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Poll until `done` holds (visibility and verification are asynchronous)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.3)


def new_customer(stack: Stack, id: str | None = None) -> str:
    return stack.standin.create_customer(id=id)["id"]


def grant_events(stack: Stack, customer_id: str) -> list[dict]:
    return [e for e in stack.standin.events(customer_id=customer_id) if e["name"] == "api_usage"]


async def balance(stack: Stack, customer_id: str) -> float:
    meters = await stack.polar.customer_meters.list(customer_id=customer_id, meter_id=METER_ID)
    return float(meters.items[0].balance) if meters.items else 0.0


async def consume(stack: Stack, customer_id: str, units: int) -> None:
    """The merchant's own usage event: takes `units` from the balance."""
    await stack.polar.events.ingest(
        events=[{"name": "api_usage", "customer_id": customer_id, "metadata": {"units": units}}]
    )


def manual_body(customer_id: str, key: str, units: int = 10, **changes: Any) -> dict:
    body = {
        "customer_id": customer_id,
        "meter": "api_calls",
        "units": units,
        "reason": "support ticket 4711",
        "idempotency_key": key,
    }
    return body | changes


async def show(stack: Stack, http: httpx.AsyncClient, grant_id: str) -> dict:
    response = await http.get(f"{stack.api_url}/grants/{grant_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


async def settled(stack: Stack, http: httpx.AsyncClient, grant_id: str) -> dict:
    """The grant once its run has ended."""
    return await eventually(
        lambda: show(stack, http, grant_id), lambda d: d["execution_status"] != "running"
    )


async def manual_grant(
    stack: Stack, http: httpx.AsyncClient, customer_id: str, units: int = 10
) -> dict:
    key = f"grant-{uuid.uuid4().hex[:10]}"
    response = await http.post(
        f"{stack.api_url}/grants", json=manual_body(customer_id, key, units), headers=AUTH
    )
    assert response.status_code == 201, response.text
    detail = await settled(stack, http, response.json()["id"])
    assert detail["status"] == "verified", detail
    return detail


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/grants"),
        ("GET", "/grants/some-id"),
        ("POST", "/grants"),
        ("POST", "/grants/some-id/revoke"),
        ("POST", "/orders/some-order/rerun"),
    ],
)
async def test_every_grant_route_needs_the_operator_token(
    stack: Stack, http: httpx.AsyncClient, method: str, path: str
) -> None:
    url = f"{stack.api_url}{path}"
    missing = await http.request(method, url, json={})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await http.request(method, url, json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


async def test_without_a_token_the_operator_api_is_off_and_the_webhook_still_works(
    stack: Stack, http: httpx.AsyncClient, tmp_path
) -> None:
    port = free_port()
    rules_path = stack.settings.credits_rules_file
    assert rules_path is not None
    api = ServiceProcess(
        "api-without-operator-token",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TEMPORAL_ADDRESS": stack.settings.temporal_address,
            "CREDITS_TASK_QUEUE": stack.settings.credits_task_queue,
            "CREDITS_API_PORT": str(port),
            "CREDITS_RULES_FILE": str(rules_path),
            "CREDITS_OPERATOR_TOKEN": "",
        },
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=tmp_path / "api.log",
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        for headers in ({}, AUTH):
            off = await http.get(f"{base}/grants", headers=headers)
            assert off.status_code == 404 and "CREDITS_OPERATOR_TOKEN" in off.text
        customer_id = new_customer(stack)
        order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
        order_id = order["order"]["id"]
        body = await order_paid_body(stack, order_id)
        delivered = await http.post(
            f"{base}/webhooks/polar",
            content=body,
            headers=polar_signed_headers(WEBHOOK_SECRET, body),
        )
        assert delivered.status_code == 202, delivered.text
        assert delivered.json()["workflow_id"] == order_workflow_id(order_id)
    finally:
        api.stop()


async def order_paid_body(stack: Stack, order_id: str, **changes: Any) -> bytes:
    async with httpx.AsyncClient(
        base_url=stack.standin.base_url, headers={"Authorization": f"Bearer {stack.standin.token}"}
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


# -- manual grants ------------------------------------------------------------------------------


async def test_a_manual_grant_is_granted_once_per_key(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    key = f"ticket-{uuid.uuid4().hex[:8]}"
    url = f"{stack.api_url}/grants"
    first = await http.post(url, json=manual_body(customer_id, key), headers=AUTH)
    assert first.status_code == 201, first.text
    grant = first.json()
    assert grant["kind"] == "manual" and grant["external_id"] == manual_grant_external_id(key)

    again = await http.post(url, json=manual_body(customer_id, key), headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == grant["id"]

    detail = await settled(stack, http, grant["id"])
    assert detail["status"] == "verified" and detail["customer_id"] == customer_id
    assert detail["grants"] == [
        {"meter": "api_calls", "units": 10, "external_id": manual_grant_external_id(key)}
    ]
    assert detail["verifications"][0]["verified"] is True
    assert detail["ui_url"].endswith(f"/workflows/{grant['id']}")

    # After the run ended, the same request still answers with that grant.
    after = await http.post(url, json=manual_body(customer_id, key), headers=AUTH)
    assert after.status_code == 200
    assert (after.json()["id"], after.json()["status"]) == (grant["id"], "verified")
    other = await http.post(url, json=manual_body(customer_id, key, units=11), headers=AUTH)
    assert other.status_code == 409 and key in other.json()["detail"]

    events = grant_events(stack, customer_id)
    assert len(events) == 1
    assert events[0]["metadata"]["units"] == -10
    assert events[0]["metadata"]["reason"] == "support ticket 4711"
    assert await balance(stack, customer_id) == 10


async def test_long_or_odd_keys_are_hashed_into_ids(stack: Stack, http: httpx.AsyncClient) -> None:
    customer_id = new_customer(stack)
    key = "ticket 42 / Ünïcode\n" + "x" * 300
    response = await http.post(
        f"{stack.api_url}/grants", json=manual_body(customer_id, key, units=3), headers=AUTH
    )
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["id"].startswith("manual-grant-sha256-")
    assert grant["external_id"].startswith("polar-credits:manual:sha256-")
    detail = await settled(stack, http, grant["id"])
    assert detail["status"] == "verified"
    assert await balance(stack, customer_id) == 3


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"meter": "nope"}, "api_calls"),
        ({"units": 0}, "units"),
        ({"units": -5}, "units"),
        ({"reason": "x" * 201}, "reason"),
        ({"reason": ""}, "reason"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"customer_id": "a' OR 1=1"}, "customer_id"),
        ({"extra": True}, "extra"),
    ],
)
async def test_a_bad_manual_grant_is_refused_and_starts_nothing(
    stack: Stack, http: httpx.AsyncClient, change: dict, needle: str
) -> None:
    customer_id = new_customer(stack)
    key = f"bad-{uuid.uuid4().hex[:8]}"
    response = await http.post(
        f"{stack.api_url}/grants", json=manual_body(customer_id, key) | change, headers=AUTH
    )
    assert response.status_code == 422 and needle in response.text
    assert (
        await http.get(f"{stack.api_url}/grants/manual-grant-{key}", headers=AUTH)
    ).status_code == 404
    missing_key = {k: v for k, v in manual_body(customer_id, key).items() if k != "idempotency_key"}
    refused = await http.post(f"{stack.api_url}/grants", json=missing_key, headers=AUTH)
    assert refused.status_code == 422
    assert grant_events(stack, customer_id) == []


async def test_a_manual_grant_to_an_unknown_customer_fails_with_its_reason(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    ghost = str(uuid.uuid4())
    key = f"ghost-{uuid.uuid4().hex[:8]}"
    response = await http.post(
        f"{stack.api_url}/grants", json=manual_body(ghost, key), headers=AUTH
    )
    assert response.status_code == 201
    detail = await settled(stack, http, response.json()["id"])
    assert (detail["execution_status"], detail["status"]) == ("failed", "failed")
    assert "422" in detail["failure"]
    revoke = await http.post(f"{stack.api_url}/grants/{detail['id']}/revoke", json={}, headers=AUTH)
    assert revoke.status_code == 409, "nothing was granted, so nothing can be revoked"


# -- list and show ------------------------------------------------------------------------------


async def test_grants_are_listed_by_customer_kind_and_status_page_by_page(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    ids = {(await manual_grant(stack, http, customer_id, units=n))["id"] for n in (1, 2, 3)}
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    order_run = order["delivery"]["body"]["workflow_id"]
    await eventually(lambda: show(stack, http, order_run), lambda d: d["status"] == "verified")

    async def listing(**params: Any) -> dict:
        response = await http.get(f"{stack.api_url}/grants", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    everything = await eventually(
        lambda: listing(customer_id=customer_id),
        lambda page: (
            len(page["grants"]) == 4 and all(g["status"] == "verified" for g in page["grants"])
        ),
    )
    assert {g["id"] for g in everything["grants"]} == ids | {order_run}
    assert {g["kind"] for g in everything["grants"]} == {"manual", "order"}
    by_order = await listing(order_id=order["order"]["id"])
    assert [(g["id"], g["units"]) for g in by_order["grants"]] == [(order_run, 10)]

    first = await listing(customer_id=customer_id, kind="manual", status="verified", limit=2)
    assert len(first["grants"]) == 2 and first["next_page_token"]
    second = await listing(
        customer_id=customer_id, kind="manual", limit=2, page_token=first["next_page_token"]
    )
    seen = [g["id"] for g in first["grants"] + second["grants"]]
    assert sorted(seen) == sorted(ids)
    assert second["next_page_token"] is None
    none_failed = await listing(customer_id=customer_id, status="failed")
    assert none_failed["grants"] == []
    later = await listing(customer_id=customer_id, started_after="2999-01-01T00:00:00Z")
    assert later["grants"] == []
    since = await listing(customer_id=customer_id, started_after="2000-01-01T00:00:00+00:00")
    assert len(since["grants"]) == 4
    before = await listing(customer_id=customer_id, started_before="2000-01-01T00:00:00Z")
    assert before["grants"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"customer_id": "x' OR WorkflowType != ''"},
        {"order_id": "a b"},
        {"status": "Verified'"},
        {"kind": "everything"},
        {"limit": 101},
        {"limit": 0},
        {"started_after": "yesterday"},
        {"page_token": "%%%not-base64"},
    ],
)
async def test_bad_list_filters_are_refused(
    stack: Stack, http: httpx.AsyncClient, params: dict
) -> None:
    response = await http.get(f"{stack.api_url}/grants", params=params, headers=AUTH)
    assert response.status_code == 422, response.text


async def test_an_order_grant_shows_its_decision_events_and_verification(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    run = order["delivery"]["body"]["workflow_id"]
    detail = await eventually(
        lambda: show(stack, http, run), lambda d: d["execution_status"] == "completed"
    )
    assert (detail["kind"], detail["status"]) == ("order", "verified")
    assert detail["order_id"] == order["order"]["id"] and detail["customer_id"] == customer_id
    assert [(g["rule_id"], g["units"]) for g in detail["grants"]] == [("starter-bonus", 10)]
    assert detail["grants"][0]["external_id"]
    if detail["decision"] is not None:  # runs with the decision record
        assert detail["decision"]["rules_version"]
    assert detail["verifications"][0]["verified"] is True
    assert detail["ui_url"].startswith(stack.settings.temporal_ui_url)
    unknown = await http.get(f"{stack.api_url}/grants/no-such-run", headers=AUTH)
    assert unknown.status_code == 404


# -- revokes ------------------------------------------------------------------------------------


async def test_a_revoke_is_capped_at_the_balance_and_happens_once(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    grant = await manual_grant(stack, http, customer_id, units=50)
    await consume(stack, customer_id, 40)
    assert await eventually(lambda: balance(stack, customer_id), lambda b: b == 10) == 10

    url = f"{stack.api_url}/grants/{grant['id']}/revoke"
    first = await http.post(url, json={"reason": "refunded by hand"}, headers=AUTH)
    assert first.status_code == 201, first.text
    revoke = first.json()
    assert (revoke["status"], revoke["units_requested"], revoke["units_revoked"]) == (
        "revoked",
        50,
        10,
    )
    assert "balance" in revoke["capped"]
    assert await eventually(lambda: balance(stack, customer_id), lambda b: b == 0) == 0

    again = await http.post(url, json={"units": 5, "allow_negative": True}, headers=AUTH)
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["units_revoked"]) == (revoke["id"], 10)
    compensating = [
        e
        for e in grant_events(stack, customer_id)
        if e.get("external_id") == revoke_external_id(grant["grants"][0]["external_id"])
    ]
    assert len(compensating) == 1 and compensating[0]["metadata"]["units"] == 10
    assert await balance(stack, customer_id) == 0
    shown = await show(stack, http, revoke["id"])
    assert (shown["kind"], shown["units"], shown["customer_id"]) == ("revoke", -10, customer_id)


async def test_allow_negative_revokes_everything(stack: Stack, http: httpx.AsyncClient) -> None:
    customer_id = new_customer(stack)
    grant = await manual_grant(stack, http, customer_id, units=50)
    await consume(stack, customer_id, 40)
    await eventually(lambda: balance(stack, customer_id), lambda b: b == 10)
    response = await http.post(
        f"{stack.api_url}/grants/{grant['id']}/revoke",
        json={"allow_negative": True},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    assert (response.json()["units_revoked"], response.json()["capped"]) == (50, None)
    assert await eventually(lambda: balance(stack, customer_id), lambda b: b == -40) == -40


async def test_an_order_grant_can_be_revoked_in_part(stack: Stack, http: httpx.AsyncClient) -> None:
    customer_id = new_customer(stack)
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    run = order["delivery"]["body"]["workflow_id"]
    await eventually(lambda: show(stack, http, run), lambda d: d["status"] == "verified")
    response = await http.post(
        f"{stack.api_url}/grants/{run}/revoke", json={"units": 4}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    assert (response.json()["units_revoked"], response.json()["capped"]) == (4, None)
    assert await eventually(lambda: balance(stack, customer_id), lambda b: b == 6) == 6
    listed = await eventually(
        lambda: http.get(
            f"{stack.api_url}/grants",
            params={"order_id": order["order"]["id"], "kind": "revoke"},
            headers=AUTH,
        ),
        lambda r: len(r.json()["grants"]) == 1,
    )
    assert listed.json()["grants"][0]["status"] == "revoked"


async def test_a_revoke_fails_clearly_when_the_balance_cannot_be_read(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    grant = await manual_grant(stack, http, customer_id, units=5)
    stack.standin.add_fault("customer_meters.list", status=500, count=50)
    try:
        response = await http.post(
            f"{stack.api_url}/grants/{grant['id']}/revoke", json={}, headers=AUTH
        )
    finally:
        stack.standin.clear_faults()
    assert response.status_code == 502, response.text
    assert "balance could not be read" in response.json()["detail"]
    assert len(grant_events(stack, customer_id)) == 1, "nothing was taken back"
    # Asked again once Polar answers, the revoke happens.
    retried = await http.post(f"{stack.api_url}/grants/{grant['id']}/revoke", json={}, headers=AUTH)
    assert retried.status_code == 201 and retried.json()["units_revoked"] == 5


# -- re-runs ------------------------------------------------------------------------------------


async def test_a_failed_order_is_run_again_once_fixed_and_a_granted_one_is_not(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    granted = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    granted_id = granted["order"]["id"]
    run = granted["delivery"]["body"]["workflow_id"]
    await eventually(lambda: show(stack, http, run), lambda d: d["execution_status"] != "running")
    refused = await http.post(f"{stack.api_url}/orders/{granted_id}/rerun", headers=AUTH)
    assert refused.status_code == 409 and "completed" in refused.json()["detail"]

    # An order whose customer Polar does not know (yet): the run fails with Polar's 422.
    ghost = str(uuid.uuid4())
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    order_id = placed["order"]["id"]
    body = await order_paid_body(stack, order_id, customer_id=ghost)
    delivered = await http.post(
        f"{stack.api_url}/webhooks/polar",
        content=body,
        headers=polar_signed_headers(WEBHOOK_SECRET, body),
    )
    assert delivered.status_code == 202
    failed = await settled(stack, http, order_workflow_id(order_id))
    assert failed["status"] == "failed" and "422" in failed["failure"]

    new_customer(stack, id=ghost)  # fixed: the customer exists now
    rerun = await http.post(f"{stack.api_url}/orders/{order_id}/rerun", headers=AUTH)
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["previous_status"] == "failed"
    assert rerun.json()["run_id"] != failed["run_id"]
    detail = await settled(stack, http, order_workflow_id(order_id))
    assert detail["status"] == "verified" and detail["run_id"] == rerun.json()["run_id"]
    assert await balance(stack, ghost) == 10
    again = await http.post(f"{stack.api_url}/orders/{order_id}/rerun", headers=AUTH)
    assert again.status_code == 409
    missing = await http.post(f"{stack.api_url}/orders/{uuid.uuid4()}/rerun", headers=AUTH)
    assert missing.status_code == 404


# -- the CLI ------------------------------------------------------------------------------------


def cli(stack: Stack, *args: str) -> Any:
    env = {"CREDITS_API_URL": stack.api_url, "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN}
    return CliRunner().invoke(app, list(args), env={**os.environ, **env})


async def test_the_cli_creates_shows_lists_and_revokes_a_grant(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    key = f"cli-{uuid.uuid4().hex[:8]}"
    create = ["grants", "create", "--customer", customer_id, "--meter", "api_calls"]
    create += ["--units", "7", "--reason", "cli test", "--idempotency-key", key]
    made = await asyncio.to_thread(cli, stack, *create, "--json")
    assert made.exit_code == 0, made.output
    grant_id = json.loads(made.output)["id"]
    await settled(stack, http, grant_id)

    table = await asyncio.to_thread(cli, stack, *create)
    assert table.exit_code == 0 and grant_id in table.output and "verified" in table.output
    conflict = await asyncio.to_thread(cli, stack, *[a if a != "7" else "8" for a in create])
    assert conflict.exit_code == 4, conflict.output  # ExitCode.CONFLICT

    shown = await asyncio.to_thread(cli, stack, "grants", "show", grant_id)
    assert shown.exit_code == 0 and "verified" in shown.output and key in shown.output
    listed = await eventually(
        lambda: asyncio.to_thread(
            cli, stack, "grants", "list", "--customer", customer_id, "--json"
        ),
        lambda r: r.exit_code == 0 and len(json.loads(r.output)["grants"]) == 1,
    )
    assert json.loads(listed.output)["grants"][0]["id"] == grant_id
    table = await asyncio.to_thread(cli, stack, "grants", "list", "--customer", customer_id)
    assert table.exit_code == 0 and "manual" in table.output

    revoked = await asyncio.to_thread(cli, stack, "grants", "revoke", grant_id, "--units", "2")
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.output
    assert await eventually(lambda: balance(stack, customer_id), lambda b: b == 5) == 5


async def test_the_cli_exit_codes(stack: Stack, http: httpx.AsyncClient) -> None:
    missing = await asyncio.to_thread(cli, stack, "grants", "show", "no-such-run")
    assert missing.exit_code == 3, missing.output  # NOT_FOUND
    no_order = await asyncio.to_thread(cli, stack, "orders", "rerun", str(uuid.uuid4()))
    assert no_order.exit_code == 3
    customer_id = new_customer(stack)
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID)
    run = order["delivery"]["body"]["workflow_id"]
    await settled(stack, http, run)
    granted = await asyncio.to_thread(cli, stack, "orders", "rerun", order["order"]["id"])
    assert granted.exit_code == 4, granted.output  # CONFLICT: it granted
    bad = await asyncio.to_thread(
        cli, stack, "grants", "create", "--customer", customer_id, "--meter", "nope",
        "--units", "1", "--reason", "r", "--idempotency-key", "k-bad-meter",
    )  # fmt: skip
    assert bad.exit_code == 2, bad.output  # USAGE: the API refused the request (422)
    env = {"CREDITS_API_URL": stack.api_url, "CREDITS_OPERATOR_TOKEN": "wrong"}
    unauthorized = await asyncio.to_thread(
        CliRunner().invoke, app, ["grants", "list"], env={**os.environ, **env}
    )
    assert unauthorized.exit_code == 2
    down = {"CREDITS_API_URL": f"http://127.0.0.1:{free_port()}", "CREDITS_OPERATOR_TOKEN": "x"}
    unreachable = await asyncio.to_thread(
        CliRunner().invoke, app, ["grants", "list"], env={**os.environ, **down}
    )
    assert unreachable.exit_code == 5  # UNAVAILABLE
