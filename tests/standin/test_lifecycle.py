"""The stand-in over time: injectable clock, meter resets, subscription lifecycle, refunds,
listing and persistence, seen through polar-sdk and the webhooks it sends."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable, Iterator

import pytest
import standardwebhooks
from polar.base import deserialize
from polar.v2026_10 import PolarAsync
from polar.v2026_10.outputs import Order, Product, Subscription
from polar.v2026_10.webhooks import validate_event

from tests.standin.conftest import WEBHOOK_SECRET, WebhookReceiver
from tests.support.standin import StandinProcess

START = "2026-01-01T00:00:00Z"
CREATE = [
    "subscription.created",
    "subscription.active",
    "order.created",
    "order.updated",
    "order.paid",
]
RENEW = [
    "subscription.cycled",
    "subscription.updated",
    "order.created",
    "order.updated",
    "order.paid",
]


class Hooks:
    """What the receiver got since the last look: types in arrival order, all verified."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self.seen = 0
        self.verifier = standardwebhooks.Webhook(base64.b64encode(WEBHOOK_SECRET.encode()).decode())

    def new(self) -> list:
        fresh = self.receiver.deliveries[self.seen :]
        self.seen += len(fresh)
        payloads = []
        for delivery in fresh:
            headers, body = delivery["headers"], delivery["body"]
            self.verifier.verify(body, {k.lower(): v for k, v in headers.items()})
            payloads.append(validate_event(body, headers, WEBHOOK_SECRET))
        return payloads

    def types(self) -> list[str]:
        return [p.type for p in self.new()]


@pytest.fixture
def manual(
    fresh_standin: Callable[..., StandinProcess], receiver: WebhookReceiver
) -> Iterator[tuple[StandinProcess, Hooks]]:
    """A stand-in of its own on a manual clock at 2026-01-01, delivering to a receiver."""
    process = fresh_standin(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        extra_args=["--clock", "manual", "--clock-start", START],
    )
    yield process, Hooks(receiver)


def _buyer_and_plan(standin: StandinProcess, **plan: object) -> tuple[dict, dict, dict]:
    meter = standin.create_meter(name=f"credits {uuid.uuid4().hex[:6]}", event_name="api_usage")
    product = standin.create_plan(metered_meter_ids=[meter["id"]], **plan)
    return standin.create_customer(), product, meter


async def _balance(standin: StandinProcess, customer_id: str, meter_id: str) -> float:
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        page = await polar.customer_meters.list(customer_id=customer_id, meter_id=meter_id)
        return page.items[0].balance


async def _grant(standin: StandinProcess, customer_id: str, units: int) -> None:
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        event = {"name": "api_usage", "customer_id": customer_id, "metadata": {"units": -units}}
        await polar.events.ingest(events=[event])


# -- clock ----------------------------------------------------------------------------------
def test_the_clock_is_manual_when_asked_and_real_otherwise(manual, standin: StandinProcess):
    process, _ = manual
    assert process.clock() == {"now": "2026-01-01T00:00:00.000000Z", "mode": "manual"}
    assert process.clock_advance(days=1, seconds=30)["now"] == "2026-01-02T00:00:30.000000Z"
    assert process.clock_set("2026-03-01T12:00:00Z")["now"] == "2026-03-01T12:00:00.000000Z"
    customer = process.create_customer()
    assert customer["created_at"] == "2026-03-01T12:00:00.000000Z"

    assert standin.clock()["mode"] == "real"
    with pytest.raises(RuntimeError, match="409"):
        standin.clock_set(START)


async def test_a_real_clock_renews_due_subscriptions_by_itself(fresh_standin):
    standin = fresh_standin()
    customer, product, _ = _buyer_and_plan(standin, recurring_interval="day")
    sub_id = standin.subscribe(customer["id"], product["id"])["subscription"]["id"]
    # Skew the real clock to one second before the period end, then let real time pass:
    # the background task, not a request, renews the subscription.
    assert standin.clock_advance(seconds=86400 - 1)["renewals"] == []
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        for _ in range(50):
            orders = await polar.orders.list(subscription_id=sub_id)
            if orders.pagination.total_count == 2:
                break
            await asyncio.sleep(0.2)
        assert [o.billing_reason for o in orders.items] == [
            "subscription_cycle",
            "subscription_create",
        ]


# -- subscriptions ----------------------------------------------------------------------
async def test_subscribing_emits_polar_sequence_and_sdk_shapes(manual):
    standin, hooks = manual
    customer, product, meter = _buyer_and_plan(standin, recurring_interval_count=3)
    assert isinstance(deserialize(product, Product), Product)
    assert [p["amount_type"] for p in product["prices"]] == ["fixed", "metered_unit"]
    assert product["prices"][1]["meter_id"] == meter["id"]

    made = standin.subscribe(customer["id"], product["id"], seats=2, metadata={"plan": "pro"})
    payloads = hooks.new()
    assert [p.type for p in payloads] == CREATE == made["events"]
    assert [d["type"] for d in made["deliveries"]] == CREATE
    sub = deserialize(made["subscription"], Subscription)
    assert (sub.status, sub.seats, sub.metadata) == ("active", 2, {"plan": "pro"})
    assert (sub.current_period_start, sub.current_period_end) == (
        "2026-01-01T00:00:00.000000Z",
        "2026-04-01T00:00:00.000000Z",
    )
    assert isinstance(payloads[0].data, Subscription)
    assert payloads[-1].data.billing_reason == "subscription_create"
    assert payloads[2].data.status == "pending" and payloads[-1].data.paid

    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        got = await polar.subscriptions.get(id=sub.id)
        assert (got.id, got.recurring_interval_count, got.customer.id) == (
            sub.id,
            3,
            customer["id"],
        )
        order = await polar.orders.get(id=made["order"]["id"])
        assert (order.status, order.subscription_id, order.total_amount) == ("paid", sub.id, 1000)


async def test_renewal_resets_metered_meters_before_the_renewal_order(manual):
    standin, hooks = manual
    customer, product, meter = _buyer_and_plan(standin)
    sub = standin.subscribe(customer["id"], product["id"])["subscription"]
    hooks.new()
    await _grant(standin, customer["id"], 10)
    assert await _balance(standin, customer["id"], meter["id"]) == 10

    renewed = standin.renew(sub["id"])
    assert hooks.types() == RENEW
    # The clock moved to the period end, and the negative-event grant did not roll over.
    assert standin.clock()["now"] == "2026-02-01T00:00:00.000000Z"
    assert await _balance(standin, customer["id"], meter["id"]) == 0
    cycle = deserialize(renewed["order"], Order)
    assert (cycle.billing_reason, cycle.subscription.current_period_start) == (
        "subscription_cycle",
        "2026-02-01T00:00:00.000000Z",
    )
    # A grant made on the renewal's order.paid comes after the reset and survives it.
    await _grant(standin, customer["id"], 7)
    assert await _balance(standin, customer["id"], meter["id"]) == 7
    resets = [e for e in standin.events(customer["id"]) if e["name"] == "meter.reset"]
    assert len(resets) == 2  # at creation and at the renewal


async def test_a_year_of_clock_gives_twelve_monthly_renewals_in_order(manual):
    standin, hooks = manual
    customer, product, _ = _buyer_and_plan(standin)
    sub = standin.subscribe(customer["id"], product["id"])["subscription"]
    hooks.new()

    advanced = standin.clock_advance(days=365)
    assert len(advanced["renewals"]) == 12
    assert advanced["now"] == "2027-01-01T00:00:00.000000Z"
    assert hooks.types() == RENEW * 12

    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        page = await polar.orders.list(subscription_id=sub["id"], limit=100, sorting=["created_at"])
    reasons = [o.billing_reason for o in page.items]
    assert reasons == ["subscription_create"] + ["subscription_cycle"] * 12
    starts = [o.subscription.current_period_start[:10] for o in page.items[1:]]
    assert starts == [f"2026-{m:02d}-01" for m in range(2, 13)] + ["2027-01-01"]
    assert standin.clock_advance(days=1)["renewals"] == []


async def test_cancel_at_period_end_ends_with_a_canceled_final_invoice(manual):
    standin, hooks = manual
    customer, product, _ = _buyer_and_plan(standin, recurring_interval="year")
    sub = standin.subscribe(customer["id"], product["id"])["subscription"]
    hooks.new()

    canceled = standin.subscription_action(sub["id"], "cancel")
    assert hooks.types() == ["subscription.updated", "subscription.canceled"]
    assert canceled["subscription"]["cancel_at_period_end"] is True
    assert canceled["subscription"]["status"] == "active"
    assert canceled["subscription"]["ends_at"] == "2027-01-01T00:00:00.000000Z"

    ended = standin.renew(sub["id"])
    payloads = hooks.new()
    assert [p.type for p in payloads] == [
        "subscription.updated",
        "subscription.revoked",
        "order.created",
        "order.updated",
        "order.paid",
    ]
    final = payloads[-1].data
    assert (final.billing_reason, final.subscription.status) == ("subscription_cycle", "canceled")
    assert ended["subscription"]["ended_at"] == "2027-01-01T00:00:00.000000Z"

    assert standin.clock_advance(days=800)["renewals"] == []
    assert hooks.types() == []
    with pytest.raises(RuntimeError, match="409"):
        standin.renew(sub["id"])


async def test_uncancel_revoke_pause_resume_and_impossible_moves(manual):
    standin, hooks = manual
    customer, product, meter = _buyer_and_plan(standin)
    sub_id = standin.subscribe(customer["id"], product["id"])["subscription"]["id"]
    hooks.new()
    act = standin.subscription_action

    act(sub_id, "cancel")
    hooks.new()
    assert act(sub_id, "uncancel")["subscription"]["cancel_at_period_end"] is False
    assert hooks.types() == ["subscription.updated", "subscription.uncanceled"]
    with pytest.raises(RuntimeError, match="409"):
        act(sub_id, "uncancel")

    assert act(sub_id, "pause")["subscription"]["status"] == "paused"
    assert hooks.types() == ["subscription.updated", "subscription.paused"]
    with pytest.raises(RuntimeError, match="409"):
        standin.renew(sub_id)
    assert standin.clock_advance(days=40)["renewals"] == []  # paused: no renewal
    await _grant(standin, customer["id"], 5)
    assert act(sub_id, "resume")["subscription"]["status"] == "active"
    assert hooks.types() == ["subscription.updated", "subscription.resumed"]
    assert await _balance(standin, customer["id"], meter["id"]) == 0  # resume resets

    revoked = act(sub_id, "revoke")["subscription"]
    assert hooks.types() == [
        "subscription.updated",
        "subscription.canceled",
        "subscription.revoked",
    ]
    assert revoked["status"] == "canceled" and revoked["ended_at"] is not None
    for action in ("renew", "cancel", "pause", "resume", "revoke", "retry-payment"):
        with pytest.raises(RuntimeError, match="409"):
            act(sub_id, action)
    with pytest.raises(RuntimeError, match="404"):
        act(str(uuid.uuid4()), "renew")


async def test_failed_renewal_is_past_due_and_paid_only_after_retry(manual):
    standin, hooks = manual
    customer, product, _ = _buyer_and_plan(standin)
    sub_id = standin.subscribe(customer["id"], product["id"])["subscription"]["id"]
    hooks.new()

    failed = standin.subscription_action(sub_id, "fail-renewal")
    assert hooks.types() == [
        "subscription.cycled",
        "subscription.updated",
        "subscription.past_due",
        "order.created",
    ]
    assert failed["subscription"]["status"] == "past_due"
    order_id = failed["order"]["id"]
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        pending = await polar.orders.get(id=order_id)
        assert (pending.status, pending.paid, pending.due_amount) == ("pending", False, 1000)
        paid = await polar.orders.list(subscription_id=sub_id, status="paid")
        assert [o.billing_reason for o in paid.items] == ["subscription_create"]

    assert standin.clock_advance(days=60)["renewals"] == []  # past_due is not renewed
    retried = standin.subscription_action(sub_id, "retry-payment")
    payloads = hooks.new()
    assert [p.type for p in payloads] == [
        "order.updated",
        "order.paid",
        "subscription.updated",
        "subscription.active",
    ]
    assert payloads[1].data.id == order_id and payloads[1].data.paid
    assert retried["subscription"]["status"] == "active"
    with pytest.raises(RuntimeError, match="409"):
        standin.subscription_action(sub_id, "retry-payment")


# -- product and seat changes --------------------------------------------------------------
async def test_update_changes_product_and_seats_and_sends_subscription_updated(manual):
    standin, hooks = manual
    customer, product, meter = _buyer_and_plan(standin)
    team = standin.create_plan(name="Team monthly", price_amount=4900, metered_meter_ids=[])
    made = standin.subscribe(customer["id"], product["id"], seats=2)
    sub_id, before = made["subscription"]["id"], made["subscription"]
    hooks.new()
    standin.clock_advance(days=3)

    # Upgrade and more seats at once: one subscription.updated, carrying both, newer.
    updated = standin.update_subscription(sub_id, product_id=team["id"], seats=3)
    payloads = hooks.new()
    assert [p.type for p in payloads] == ["subscription.updated"] == updated["events"]
    sent = payloads[0].data
    assert isinstance(sent, Subscription)
    assert (sent.id, sent.product_id, sent.product.id, sent.seats) == (
        sub_id,
        team["id"],
        team["id"],
        3,
    )
    assert sent.amount == 4900 and sent.status == "active"
    assert sent.modified_at == "2026-01-04T00:00:00.000000Z" > before["modified_at"]
    # The period stays: the new product is billed from the next renewal.
    assert (sent.current_period_start, sent.current_period_end) == (
        before["current_period_start"],
        before["current_period_end"],
    )
    sub = updated["subscription"]
    assert (sub["product_id"], sub["seats"], sub["amount"]) == (team["id"], 3, 4900)

    # Seats only: the product stays.
    standin.clock_advance(days=1)
    fewer = standin.update_subscription(sub_id, seats=1)["subscription"]
    (payload,) = hooks.new()
    assert payload.type == "subscription.updated"
    assert (payload.data.product_id, payload.data.seats) == (team["id"], 1)
    assert payload.data.modified_at == "2026-01-05T00:00:00.000000Z"
    assert (fewer["product_id"], fewer["seats"]) == (team["id"], 1)

    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        got = await polar.subscriptions.get(id=sub_id)
        assert (got.product_id, got.seats, got.amount) == (team["id"], 1, 4900)
        listed = await polar.subscriptions.list(product_id=team["id"])
        assert [s.id for s in listed.items] == [sub_id]
        # No proration order: the update billed nothing.
        orders = await polar.orders.list(subscription_id=sub_id)
        assert [o.billing_reason for o in orders.items] == ["subscription_create"]

    # The next renewal bills the new product and seats; the new product has no metered
    # price, so the old meter is not reset.
    renewed = standin.renew(sub_id)["order"]
    assert (renewed["product_id"], renewed["seats"], renewed["total_amount"]) == (
        team["id"],
        1,
        4900,
    )
    assert hooks.types() == RENEW
    resets = [e for e in standin.events(customer["id"]) if e["name"] == "meter.reset"]
    assert [r["metadata"]["meter_id"] for r in resets] == [meter["id"]]  # at creation only


async def test_update_refuses_ended_canceled_unknown_and_malformed_changes(manual):
    standin, hooks = manual
    customer, product, _ = _buyer_and_plan(standin)
    other = standin.create_plan(name="Other monthly", price_amount=1500)
    yearly = standin.create_plan(name="Yearly", recurring_interval="year")
    pack = standin.create_product(name="One-off pack")
    sub_id = standin.subscribe(customer["id"], product["id"])["subscription"]["id"]
    hooks.new()
    update = standin.update_subscription

    with pytest.raises(RuntimeError, match="404"):
        update(sub_id, product_id=str(uuid.uuid4()))  # no such product
    with pytest.raises(RuntimeError, match="404"):
        update(str(uuid.uuid4()), seats=2)  # no such subscription
    with pytest.raises(RuntimeError, match="409.*not recurring"):
        update(sub_id, product_id=pack["id"])
    with pytest.raises(RuntimeError, match="409.*bills every 1 year"):
        update(sub_id, product_id=yearly["id"])
    for body in ({}, {"seats": 0}, {"seats": "3"}, {"seats": True}, {"product_id": 7}):
        with pytest.raises(RuntimeError, match="400"):
            standin.admin("POST", f"/admin/subscriptions/{sub_id}/update", body)
    with pytest.raises(RuntimeError, match="400.*already has"):
        update(sub_id, product_id=product["id"])  # nothing would change
    assert hooks.types() == []

    # Set to cancel at period end: refused until uncanceled, as Polar does.
    standin.subscription_action(sub_id, "cancel")
    hooks.new()
    with pytest.raises(RuntimeError, match="409.*uncancel"):
        update(sub_id, product_id=other["id"])
    standin.subscription_action(sub_id, "uncancel")
    hooks.new()
    assert update(sub_id, product_id=other["id"])["subscription"]["product_id"] == other["id"]
    assert hooks.types() == ["subscription.updated"]

    # Ended: refused, and nothing is sent.
    standin.subscription_action(sub_id, "revoke")
    hooks.new()
    with pytest.raises(RuntimeError, match="409.*ended"):
        update(sub_id, seats=4)
    with pytest.raises(RuntimeError, match="409"):
        update(sub_id, product_id=product["id"])
    assert hooks.types() == []
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        got = await polar.subscriptions.get(id=sub_id)
        assert (got.status, got.product_id, got.seats) == ("canceled", other["id"], None)


# -- refunds ------------------------------------------------------------------------------
async def test_partial_then_full_refund(manual):
    standin, hooks = manual
    customer, product, _ = _buyer_and_plan(standin)
    order_id = standin.subscribe(customer["id"], product["id"])["order"]["id"]
    hooks.new()

    partial = standin.refund(order_id, 300)["order"]
    payloads = hooks.new()
    assert [p.type for p in payloads] == ["order.updated", "order.refunded"]
    assert payloads[1].data.refunded_amount == 300
    assert (partial["status"], partial["refunded_amount"], partial["refundable_amount"]) == (
        "partially_refunded",
        300,
        700,
    )
    with pytest.raises(RuntimeError, match="409"):
        standin.refund(order_id, 701)

    full = standin.refund(order_id)["order"]
    assert hooks.types() == ["order.updated", "order.refunded"]
    assert (full["status"], full["refunded_amount"], full["refundable_amount"]) == (
        "refunded",
        1000,
        0,
    )
    with pytest.raises(RuntimeError, match="409"):
        standin.refund(order_id, 1)
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        assert (await polar.orders.get(id=order_id)).status == "refunded"


# -- listing -------------------------------------------------------------------------------
async def test_listing_filters_orders_subscriptions_and_events(manual):
    standin, _ = manual
    customer, plan, _ = _buyer_and_plan(standin)
    other = standin.create_customer()
    pack = standin.create_product(name="One-off pack")
    sub_id = standin.subscribe(customer["id"], plan["id"])["subscription"]["id"]
    standin.create_paid_order(customer["id"], pack["id"], deliver=False)
    standin.clock_advance(days=31)  # one renewal on 2026-02-01
    gone = standin.subscribe(other["id"], plan["id"])["subscription"]["id"]
    standin.subscription_action(gone, "revoke")
    await _grant(standin, customer["id"], 1)

    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        mine = await polar.orders.list(customer_id=customer["id"])
        assert mine.pagination.total_count == 3
        recurring = await polar.orders.list(
            customer_id=customer["id"], product_billing_type="recurring"
        )
        assert {o.billing_reason for o in recurring.items} == {
            "subscription_create",
            "subscription_cycle",
        }
        one_time = await polar.orders.list(customer_id=customer["id"], product_id=pack["id"])
        assert [o.billing_reason for o in one_time.items] == ["purchase"]
        later = await polar.orders.list(
            customer_id=customer["id"], created_after="2026-01-15T00:00:00Z"
        )
        assert [o.billing_reason for o in later.items] == ["subscription_cycle"]
        paged = await polar.orders.list(customer_id=customer["id"], limit=2, page=2)
        assert (len(paged.items), paged.pagination.max_page) == (1, 2)

        subs = await polar.subscriptions.list(product_id=plan["id"])
        assert {s.id for s in subs.items} == {sub_id, gone}
        active = await polar.subscriptions.list(product_id=plan["id"], active=True)
        assert [s.id for s in active.items] == [sub_id]
        ended = await polar.subscriptions.list(customer_id=other["id"], active=False)
        assert [s.status for s in ended.items] == ["canceled"]

        events = await polar.events.list(
            customer_id=customer["id"], name="api_usage", start_timestamp="2026-01-15T00:00:00Z"
        )
        assert [e.name for e in events.items] == ["api_usage"]
        early = await polar.events.list(
            customer_id=customer["id"], end_timestamp="2026-01-15T00:00:00Z"
        )
        assert [e.name for e in early.items] == ["meter.reset"]
        by_metadata = await polar.events.list(customer_id=customer["id"], metadata={"units": -1})
        assert by_metadata.pagination.total_count == 1


# -- persistence ---------------------------------------------------------------------------
async def test_restart_keeps_subscriptions_periods_orders_and_refunds(manual):
    standin, _ = manual
    customer, product, _ = _buyer_and_plan(standin)
    made = standin.subscribe(customer["id"], product["id"])
    sub_id, first_order = made["subscription"]["id"], made["order"]["id"]
    standin.renew(sub_id)
    standin.subscription_action(sub_id, "cancel")
    standin.refund(first_order, 250)

    standin.restart()
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        sub = await polar.subscriptions.get(id=sub_id)
        assert (sub.status, sub.cancel_at_period_end) == ("active", True)
        assert (sub.current_period_start, sub.current_period_end) == (
            "2026-02-01T00:00:00.000000Z",
            "2026-03-01T00:00:00.000000Z",
        )
        orders = await polar.orders.list(subscription_id=sub_id, sorting=["created_at"])
        assert [o.billing_reason for o in orders.items] == [
            "subscription_create",
            "subscription_cycle",
        ]
        refunded = await polar.orders.get(id=first_order)
        assert (refunded.status, refunded.refunded_amount) == ("partially_refunded", 250)
    # The stored schedule still drives the lifecycle after the restart.
    (ending,) = standin.clock_advance(days=60)["renewals"]
    assert ending["subscription"]["status"] == "canceled"
    assert ending["order"]["subscription"]["status"] == "canceled"
