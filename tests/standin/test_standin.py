"""The local Polar stand-in keeps Polar's real semantics, seen through polar-sdk over HTTP."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import standardwebhooks
from polar.base import (
    PolarClientError,
    PolarRateLimitError,
    PolarServerError,
)
from polar.v2026_10 import PolarAsync
from polar.v2026_10.errors import HTTPValidationError, ResourceNotFound
from polar.v2026_10.outputs import (
    CustomerIndividual,
    CustomerMeter,
    EventsIngestResponse,
    ListResourceEvent,
    Meter,
    Order,
    Product,
    UserEvent,
)
from polar.v2026_10.webhooks import (
    PolarWebhookVerificationError,
    WebhookOrderPaidPayload,
    validate_event,
)

from tests.standin.conftest import WEBHOOK_SECRET, WebhookReceiver
from tests.support.standin import StandinProcess
from tools.standin.seed import DEMO_METER_ID, DEMO_PRODUCT_ID


def _uid() -> str:
    return uuid.uuid4().hex


def grant(customer_id: str, units: float | str, external_id: str | None = None, **extra) -> dict:
    event = {"name": "api_usage", "customer_id": customer_id, "metadata": {"units": units}}
    if external_id is not None:
        event["external_id"] = external_id
    return {**event, **extra}


async def meter_of(polar: PolarAsync, customer_id: str, meter_id: str = DEMO_METER_ID):
    page = await polar.customer_meters.list(customer_id=customer_id, meter_id=meter_id)
    assert len(page.items) == 1
    return page.items[0]


# -- auth and health ---------------------------------------------------------------------
async def test_health_is_open_but_the_api_needs_the_bearer_token(standin: StandinProcess):
    async with httpx.AsyncClient(base_url=standin.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        bare = await http.get("/v1/meters/")
        assert bare.status_code == 401
        assert bare.json()["error"] == "Unauthorized"
        assert (await http.get("/admin/faults")).status_code == 401
    async with PolarAsync("wrong_token", base_url=standin.base_url) as wrong:
        with pytest.raises(PolarClientError) as caught:
            await wrong.meters.get(id=DEMO_METER_ID)
    assert caught.value.status_code == 401


# -- ingest: dedupe and validation -------------------------------------------------------
async def test_external_id_dedupes_within_a_batch_across_calls_and_payloads(
    polar: PolarAsync, standin: StandinProcess
):
    customer = standin.create_customer()
    other = standin.create_customer()
    first, second, third = f"grant-{_uid()}", f"grant-{_uid()}", f"grant-{_uid()}"

    result = await polar.events.ingest(
        events=[
            grant(customer["id"], -10, first),
            grant(customer["id"], -10, first),  # repeat inside the same batch
            grant(customer["id"], -5, second),
        ]
    )
    assert (result.inserted, result.duplicates) == (2, 1)

    # Same external_id, different payload, name and customer: still skipped, forever.
    again = await polar.events.ingest(
        events=[
            {
                "name": "other_event",
                "customer_id": other["id"],
                "external_id": first,
                "metadata": {"units": -999},
            },
            grant(customer["id"], -1, third),
        ]
    )
    assert (again.inserted, again.duplicates) == (1, 1)

    stored = standin.events(customer["id"])
    assert sorted(e["external_id"] for e in stored) == sorted([first, second, third])
    kept = next(e for e in stored if e["external_id"] == first)
    assert kept["metadata"] == {"units": -10}
    assert standin.events(other["id"]) == []


async def test_events_without_external_id_are_never_deduplicated(
    polar: PolarAsync, standin: StandinProcess
):
    customer = standin.create_customer()
    result = await polar.events.ingest(events=[grant(customer["id"], 1), grant(customer["id"], 1)])
    assert (result.inserted, result.duplicates) == (2, 0)


async def test_unknown_customer_rejects_the_whole_batch(polar: PolarAsync, standin: StandinProcess):
    customer = standin.create_customer()
    with pytest.raises(HTTPValidationError) as caught:
        await polar.events.ingest(
            events=[
                grant(customer["id"], -10, f"ok-{_uid()}"),
                grant(str(uuid.uuid4()), -10, f"bad-{_uid()}"),
            ]
        )
    assert caught.value.status_code == 422
    assert caught.value.error.detail[0].loc == ["body", "events", 1, "customer_id"]
    assert standin.events(customer["id"]) == []


async def test_external_customer_id_is_not_validated(polar: PolarAsync, standin: StandinProcess):
    result = await polar.events.ingest(
        events=[
            {
                "name": "api_usage",
                "external_customer_id": f"typo-{_uid()}",
                "metadata": {"units": 1},
            }
        ]
    )
    assert result.inserted == 1


FUTURE = object()  # resolved when the test runs: a value made at collection time goes stale


def _future() -> str:
    return (datetime.now(UTC) + timedelta(minutes=5)).isoformat()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"timestamp": FUTURE}, id="future-timestamp"),
        pytest.param({"metadata": {"units": -10, "nested": {"a": 1}}}, id="nested-metadata"),
        pytest.param({"metadata": {"units": [1, 2]}}, id="list-metadata"),
        pytest.param({"metadata": {"units": None}}, id="null-metadata"),
        pytest.param({"metadata": {"k" * 41: 1}}, id="long-key"),
        pytest.param({"metadata": {"note": "x" * 501}}, id="long-string"),
        pytest.param({"metadata": {f"k{i}": i for i in range(51)}}, id="too-many-pairs"),
        pytest.param(
            {"organization_id": "0b1f5e6a-0000-4000-8000-000000000001"},
            id="organization-id-with-org-token",
        ),
        pytest.param({"external_customer_id": "also-set"}, id="both-customer-ids"),
    ],
)
async def test_invalid_event_is_refused_and_nothing_is_stored(
    polar: PolarAsync, standin: StandinProcess, change: dict
):
    customer = standin.create_customer()
    good = grant(customer["id"], -1, f"good-{_uid()}")
    change = {k: _future() if v is FUTURE else v for k, v in change.items()}
    bad = {**grant(customer["id"], -10, f"bad-{_uid()}"), **change}
    with pytest.raises(HTTPValidationError):
        await polar.events.ingest(events=[good, bad])
    assert standin.events(customer["id"]) == []


def test_body_over_10_mib_is_refused(standin: StandinProcess):
    response = httpx.post(
        f"{standin.base_url}/v1/events/ingest",
        content=b"x" * (10 * 1024 * 1024 + 1),
        headers={"Authorization": f"Bearer {standin.token}", "content-type": "application/json"},
    )
    assert response.status_code == 413


# -- balances ----------------------------------------------------------------------------
async def test_negative_event_raises_the_balance(polar: PolarAsync, standin: StandinProcess):
    customer = standin.create_customer()
    before = await meter_of(polar, customer["id"])
    assert (before.consumed_units, before.credited_units, before.balance) == (0, 0, 0)

    await polar.events.ingest(events=[grant(customer["id"], -10, f"g-{_uid()}")])
    after = await meter_of(polar, customer["id"])
    assert (after.consumed_units, after.credited_units, after.balance) == (-10, 0, 10)


async def test_only_json_numbers_and_matching_events_count(
    polar: PolarAsync, standin: StandinProcess
):
    customer = standin.create_customer()
    await polar.events.ingest(
        events=[
            grant(customer["id"], -10),
            grant(customer["id"], "-10"),  # a string: Polar's Sum meter ignores it
            {"name": "other_event", "customer_id": customer["id"], "metadata": {"units": -50}},
            grant(customer["id"], 2.5),
        ]
    )
    cm = await meter_of(polar, customer["id"])
    assert (cm.consumed_units, cm.balance) == (-7.5, 7.5)


async def test_credits_and_resets_follow_polar(polar: PolarAsync, standin: StandinProcess):
    customer = standin.create_customer()
    await polar.events.ingest(events=[grant(customer["id"], 3)])
    standin.credit_meter(customer["id"], DEMO_METER_ID, 5)
    cm = await meter_of(polar, customer["id"])
    assert (cm.consumed_units, cm.credited_units, cm.balance) == (3, 5, 2)

    standin.reset_meter(customer["id"], DEMO_METER_ID)
    cm = await meter_of(polar, customer["id"])
    assert (cm.consumed_units, cm.credited_units, cm.balance) == (0, 0, 0)

    await polar.events.ingest(events=[grant(customer["id"], -4)])
    assert (await meter_of(polar, customer["id"])).balance == 4


async def test_a_meter_row_exists_for_every_customer_and_meter(
    polar: PolarAsync, standin: StandinProcess
):
    meter = standin.create_meter(name="Tokens", event_name=f"tokens_{_uid()}")
    customer = standin.create_customer()
    page = await polar.customer_meters.list(customer_id=customer["id"])
    assert {DEMO_METER_ID, meter["id"]} <= {cm.meter_id for cm in page.items}
    await polar.events.ingest(
        events=[
            {
                "name": meter["filter"]["clauses"][0]["value"],
                "customer_id": customer["id"],
                "metadata": {"units": -3},
            }
        ]
    )
    assert (await meter_of(polar, customer["id"], meter["id"])).balance == 3
    assert (await meter_of(polar, customer["id"])).balance == 0


async def test_balance_lags_and_is_debounced(fresh_standin):
    standin = fresh_standin(balance_lag=1.0)
    customer = standin.create_customer()
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        await polar.events.ingest(events=[grant(customer["id"], -10, f"g-{_uid()}")])
        stale = await meter_of(polar, customer["id"])
        assert stale.balance == 0 and stale.modified_at is None

        await asyncio.sleep(0.6)
        await polar.events.ingest(events=[grant(customer["id"], -5, f"g-{_uid()}")])
        await asyncio.sleep(0.6)  # 1.2 s after the first event, 0.6 s after the last
        assert (await meter_of(polar, customer["id"])).balance == 0

        await asyncio.sleep(0.7)
        fresh = await meter_of(polar, customer["id"])
        assert fresh.balance == 15
        events = await polar.events.list(customer_id=customer["id"], limit=100)
        latest = max(e.timestamp for e in events.items)
        assert fresh.modified_at >= latest
        assert datetime.fromisoformat(fresh.modified_at) >= datetime.fromisoformat(latest)


# -- every endpoint the service uses loads with polar-sdk models --------------------------
async def test_every_endpoint_deserializes_with_sdk_models(
    polar: PolarAsync, standin: StandinProcess
):
    customer = standin.create_customer(external_id=f"ext-{_uid()}")
    order_id = standin.create_paid_order(
        customer["id"], DEMO_PRODUCT_ID, deliver=False, metadata={"campaign": "spring"}
    )["order"]["id"]
    marker = _uid()

    ingest = await polar.events.ingest(
        events=[
            grant(customer["id"], -10, f"g-{marker}", timestamp=datetime.now(UTC).isoformat()),
        ]
    )
    assert isinstance(ingest, EventsIngestResponse)

    listed = await polar.events.list(
        customer_id=customer["id"], name="api_usage", metadata={"units": "-10"}
    )
    assert isinstance(listed, ListResourceEvent)
    assert [type(e) for e in listed.items] == [UserEvent]
    event = listed.items[0]
    assert (event.source, event.customer.id, event.metadata["units"]) == (
        "user",
        customer["id"],
        -10,
    )
    assert (
        await polar.events.list(customer_id=customer["id"], metadata={"units": "7"})
    ).items == []

    cm = await meter_of(polar, customer["id"])
    assert isinstance(cm, CustomerMeter)
    assert (await polar.customer_meters.get(id=cm.id)).balance == 10
    assert isinstance(await polar.meters.get(id=DEMO_METER_ID), Meter)
    assert any(m.id == DEMO_METER_ID for m in (await polar.meters.list()).items)
    fetched = await polar.customers.get(id=customer["id"])
    assert isinstance(fetched, CustomerIndividual)
    assert fetched.external_id == customer["external_id"]
    assert fetched.first_user_event_at is not None
    product = await polar.products.get(id=DEMO_PRODUCT_ID)
    assert isinstance(product, Product)
    assert product.prices[0].price_amount == 1900

    order = await polar.orders.get(id=order_id)
    assert isinstance(order, Order)
    assert (order.status, order.paid, order.billing_reason) == ("paid", True, "purchase")
    assert (order.total_amount, order.customer.external_id) == (1900, customer["external_id"])
    assert order.metadata == {"campaign": "spring"}
    orders = await polar.orders.list(customer_id=customer["id"], product_id=DEMO_PRODUCT_ID)
    assert [o.id for o in orders.items] == [order_id]

    created = await polar.customers.create(email=f"new-{marker}@example.com", name="New")
    assert isinstance(created, CustomerIndividual)

    with pytest.raises(ResourceNotFound):
        await polar.orders.get(id=str(uuid.uuid4()))


async def test_subscription_orders_carry_their_subscription(
    polar: PolarAsync, standin: StandinProcess
):
    customer = standin.create_customer()
    product = standin.create_product(name="Monthly", recurring_interval="month", price_amount=900)
    made = standin.create_paid_order(
        customer["id"],
        product["id"],
        deliver=False,
        billing_reason="subscription_cycle",
        seats=3,
        subscription={"status": "canceled"},
    )
    order = await polar.orders.get(id=made["order"]["id"])
    assert order.billing_reason == "subscription_cycle"
    assert (order.subscription.status, order.subscription_id) == ("canceled", order.subscription.id)
    assert (order.seats, order.total_amount) == (3, 900)


# -- faults ------------------------------------------------------------------------------
async def test_injected_5xx_then_success(polar: PolarAsync, standin: StandinProcess):
    customer = standin.create_customer()
    already = len(standin.requests("events.ingest"))
    standin.add_fault("events.ingest", 503, count=2)
    for _ in range(2):
        with pytest.raises(PolarServerError) as caught:
            await polar.events.ingest(events=[grant(customer["id"], -1, f"g-{_uid()}")])
        assert caught.value.status_code == 503
    result = await polar.events.ingest(events=[grant(customer["id"], -1, f"g-{_uid()}")])
    assert result.inserted == 1
    seen = standin.requests("events.ingest")[already:]
    assert [r["status"] for r in seen] == [503, 503, 200]
    assert len(standin.events(customer["id"])) == 1


async def test_rate_limit_has_empty_body_and_retry_after(
    polar: PolarAsync, standin: StandinProcess
):
    standin.add_fault("customer_meters.list", 429, count=2, retry_after=2)
    with pytest.raises(PolarRateLimitError) as caught:
        await polar.customer_meters.list(customer_id=str(uuid.uuid4()))
    assert caught.value.retry_after == 2

    async with httpx.AsyncClient(base_url=standin.base_url) as http:
        raw = await http.get(
            "/v1/customer-meters/", headers={"Authorization": f"Bearer {standin.token}"}
        )
    assert (raw.status_code, raw.content, raw.headers["retry-after"]) == (429, b"", "2")
    assert (await polar.customer_meters.list(customer_id=str(uuid.uuid4()))).items == []
    statuses = [r["status"] for r in standin.requests("customer_meters.list")[-3:]]
    assert statuses == [429, 429, 200]


async def test_latency_fault_delays_the_answer(polar: PolarAsync, standin: StandinProcess):
    standin.add_fault("meters.get", None, count=1, latency_ms=400)
    started = time.monotonic()
    await polar.meters.get(id=DEMO_METER_ID)
    assert time.monotonic() - started >= 0.4


# -- restarts ----------------------------------------------------------------------------
async def test_restart_keeps_customers_events_balances_and_dedupe(fresh_standin):
    standin = fresh_standin()
    customer = standin.create_customer()
    external_id = f"g-{_uid()}"
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        await polar.events.ingest(events=[grant(customer["id"], -10, external_id)])
        assert (await meter_of(polar, customer["id"])).balance == 10
    old_pid = standin.pid

    standin.restart()
    assert standin.pid != old_pid
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        assert (await polar.customers.get(id=customer["id"])).email == customer["email"]
        assert (await meter_of(polar, customer["id"])).balance == 10
        again = await polar.events.ingest(events=[grant(customer["id"], -10, external_id)])
        assert (again.inserted, again.duplicates) == (0, 1)
    assert len(standin.events(customer["id"])) == 1


# -- webhooks ----------------------------------------------------------------------------
def _verify_both_ways(delivery: dict) -> WebhookOrderPaidPayload:
    headers, body = delivery["headers"], delivery["body"]
    payload = validate_event(body, headers, WEBHOOK_SECRET)
    verifier = standardwebhooks.Webhook(base64.b64encode(WEBHOOK_SECRET.encode()).decode())
    verifier.verify(body, {k.lower(): v for k, v in headers.items()})
    assert isinstance(payload, WebhookOrderPaidPayload)
    return payload


async def test_signed_order_paid_webhook_verifies_and_keeps_its_id_on_redelivery(
    standin: StandinProcess, receiver: WebhookReceiver
):
    standin.set_webhook_target(receiver.url, WEBHOOK_SECRET)
    try:
        customer = standin.create_customer()
        made = standin.create_paid_order(customer["id"], DEMO_PRODUCT_ID)
        order_id = made["order"]["id"]
        assert made["delivery"]["status_code"] == 200
        assert made["delivery"]["body"] == {"received": True}

        first = _verify_both_ways(receiver.deliveries[0])
        assert (first.type, first.api_version, first.data.id) == ("order.paid", "2026-10", order_id)
        assert isinstance(first.data, Order)

        replay = standin.send_webhook(order_id, webhook_id=made["delivery"]["webhook_id"])
        assert replay["webhook_id"] == made["delivery"]["webhook_id"]
        _verify_both_ways(receiver.deliveries[1])
        assert receiver.deliveries[1]["headers"]["webhook-id"] == made["delivery"]["webhook_id"]

        fresh = standin.send_webhook(order_id)
        assert fresh["webhook_id"] != made["delivery"]["webhook_id"]

        standin.send_webhook(order_id, timestamp_offset_seconds=-600)
        with pytest.raises(PolarWebhookVerificationError):
            validate_event(
                receiver.deliveries[3]["body"], receiver.deliveries[3]["headers"], WEBHOOK_SECRET
            )
        with pytest.raises(PolarWebhookVerificationError):
            validate_event(
                receiver.deliveries[0]["body"],
                receiver.deliveries[0]["headers"],
                "whsec_some_other_secret",
            )
        log = standin.stderr_tail(lines=100_000)
        assert "POST /admin/orders 201" in log
        for private in (WEBHOOK_SECRET, standin.token, customer["email"], customer["name"]):
            assert private not in log
    finally:
        standin.admin("POST", "/admin/webhook-target", {"url": None, "secret": None})


async def test_no_delivery_when_deliver_is_false(
    standin: StandinProcess, receiver: WebhookReceiver
):
    standin.set_webhook_target(receiver.url, WEBHOOK_SECRET)
    try:
        customer = standin.create_customer()
        made = standin.create_paid_order(customer["id"], DEMO_PRODUCT_ID, deliver=False)
        assert made["delivery"] is None and receiver.deliveries == []
    finally:
        standin.admin("POST", "/admin/webhook-target", {"url": None, "secret": None})
