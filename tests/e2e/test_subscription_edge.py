"""The webhook edge of subscriptions, one table over real HTTP: signed `subscription.*` and
`order.paid` deliveries with dates that overflow once converted to UTC and other hostile
values, what each is answered, and that nothing started, nothing was granted and nothing
personal was logged; then made-up event types, which must not grow the metrics.

docs/operator/bad-input.md lists every case of CASES with its answer; a test keeps them equal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.service import RPCError, RPCStatusCode

from polar_credits.identity import allowance_workflow_id, order_workflow_id
from tests.conftest import YEARLY_PRODUCT_ID, Stack
from tests.e2e.test_allowance_webhooks import subscription
from tests.e2e.test_decision import order_json
from tests.e2e.test_pipeline import assert_no_run, grant_events, post_signed
from tests.e2e.test_webhook_edge import assert_readme_lists, counter

LOW, HIGH = "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"
NAME = "Sub Scriber"


@dataclass
class Customer:
    """A fresh customer of the yearly plan (a cadence rule: subscription.* is acted on)."""

    id: str
    email: str

    def subscription(self, **changes: Any) -> dict[str, Any]:
        customer = {"id": self.id, "email": self.email, "name": NAME}
        return subscription(self.id, customer=customer) | changes


@dataclass
class Delivery:
    event: str
    data: dict[str, Any]

    @property
    def subscription_id(self) -> str | None:
        key = "id" if self.event.startswith("subscription.") else "subscription_id"
        return self.data.get(key)

    @property
    def order_id(self) -> str | None:
        return self.data.get("id") if self.event == "order.paid" else None

    def body(self) -> bytes:
        stamp = self.data.get("modified_at") or self.data.get("created_at")
        return json.dumps({"type": self.event, "timestamp": stamp, "data": self.data}).encode()


Build = Callable[[Stack, Customer], Awaitable[Delivery]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    status: int
    answer: str | None  # the body's status for a 2xx
    outcome: str  # the `outcome` label counted in polar_credits_webhooks_total
    says: str = ""  # in the answer's detail


def sub(event: str, **changes: Any) -> Build:
    async def build(stack: Stack, customer: Customer) -> Delivery:
        return Delivery(event, customer.subscription(**changes))

    return build


def paid(order_changes: dict[str, Any] | None = None, **subscription_changes: str) -> Build:
    """A paid order of the yearly plan as Polar serialises it, with its subscription's dates
    and the order's own fields changed."""

    async def build(stack: Stack, customer: Customer) -> Delivery:
        plan = customer.subscription()
        snapshot = {
            key: plan[key]
            for key in ("id", "status", "current_period_start", "current_period_end", "started_at")
        }
        placed = stack.standin.create_paid_order(
            customer.id,
            YEARLY_PRODUCT_ID,
            billing_reason="subscription_create",
            subscription=snapshot,
            deliver=False,
        )
        order = await order_json(stack, placed["order"]["id"])
        order["subscription"] = (order.get("subscription") or snapshot) | subscription_changes
        return Delivery("order.paid", order | (order_changes or {}))

    return build


UNREADABLE = "out of range once converted to UTC"
CASES = [
    # -- subscription.* dates that overflow once converted to UTC ------------------------
    Case("subscription.created, current_period_start 0001-01-01T00:00:00+01:00",
         sub("subscription.created", current_period_start=LOW), 200, "refused", "refused",
         UNREADABLE),
    Case("subscription.updated, current_period_end 9999-12-31T23:59:59-01:00",
         sub("subscription.updated", current_period_end=HIGH), 200, "refused", "refused",
         "current_period_end"),
    Case("subscription.active, started_at 0001-01-01T00:00:00+01:00",
         sub("subscription.active", started_at=LOW), 200, "refused", "refused", "started_at"),
    Case("subscription.updated, modified_at 0001-01-01T00:00:00+01:00",
         sub("subscription.updated", modified_at=LOW), 200, "refused", "refused",
         "modified_at"),
    Case("subscription.updated, current_meter_period_start 9999-12-31T23:59:59-01:00",
         sub("subscription.updated", current_meter_period_start=HIGH), 200, "refused",
         "refused", "current_meter_period_start"),
    Case("subscription.canceled, ends_at 9999-12-31T23:59:59-01:00",
         sub("subscription.canceled", cancel_at_period_end=True, ends_at=HIGH), 200,
         "refused", "refused", "ends_at"),
    Case("subscription.revoked, ended_at 0001-01-01T00:00:00+01:00",
         sub("subscription.revoked", status="canceled", ended_at=LOW), 200, "refused",
         "refused", "ended_at"),
    Case("subscription.updated, an offset of +23:59 on 0001-01-01",
         sub("subscription.updated", current_period_start="0001-01-01T00:00:00+23:59"), 200,
         "refused", "refused", UNREADABLE),
    # -- order.paid of a subscription, dates that overflow -------------------------------
    Case("order.paid, created_at 0001-01-01T00:00:00+01:00",
         paid({"created_at": LOW}), 200, "refused", "refused", "created_at"),
    Case("order.paid, the subscription's current_period_end 9999-12-31T23:59:59-01:00",
         paid(current_period_end=HIGH), 200, "refused", "refused", "current_period_end"),
    Case("order.paid, the subscription's modified_at 0001-01-01T00:00:00+01:00",
         paid(modified_at=LOW), 200, "refused", "refused", "modified_at"),
    # -- other hostile values --------------------------------------------------------------
    Case("subscription.updated, a date in the year 10000",
         sub("subscription.updated", current_period_end="10000-01-01T00:00:00Z"), 400, None,
         "bad_request", "current_period_end"),
    Case("subscription.updated, an offset of +25:00",
         sub("subscription.updated", modified_at="2026-01-01T00:00:00+25:00"), 400, None,
         "bad_request", "modified_at"),
    Case("subscription.updated, seats 10^30",
         sub("subscription.updated", seats=10**30), 400, None, "bad_request", "seats"),
    Case("subscription.updated, customer_id null",
         sub("subscription.updated", customer_id=None), 400, None, "bad_request",
         "customer_id"),
    Case("subscription.updated, a subscription id over 256 characters",
         sub("subscription.updated", id="s" * 300), 200, "refused", "refused", "longer than"),
    # -- what must stay clean --------------------------------------------------------------
    Case("subscription.updated, dates in +05:30 and -11:00",
         sub("subscription.updated", current_period_start="2026-03-01T05:30:00+05:30",
             current_period_end="2027-02-28T13:00:00-11:00",
             modified_at="2026-03-01T05:30:00.123456+05:30"),
         202, "signalled", "signalled"),
    Case("order.paid, the subscription's dates at the edges of the range, in range in UTC",
         paid(current_period_start="0001-01-01T00:00:00-01:00",
              modified_at="2026-01-01T00:00:00+14:00"),
         202, "started", "started"),
]  # fmt: skip


async def assert_no_allowance_run(stack: Stack, subscription_id: str) -> None:
    with pytest.raises(RPCError) as err:
        await stack.temporal.get_workflow_handle(allowance_workflow_id(subscription_id)).describe()
    assert err.value.status == RPCStatusCode.NOT_FOUND


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_subscription_edge(stack: Stack, http: httpx.AsyncClient, case: Case) -> None:
    assert stack.rules.has_cadence_rules(), "subscription.* is acted on"
    email = f"sub.{uuid.uuid4().hex[:8]}@example.com"
    customer = Customer(stack.standin.create_customer(email=email, name=NAME)["id"], email)
    delivery = await case.build(stack, customer)
    metrics_before = (await http.get(f"{stack.api_url}/metrics")).text
    log_before = len(stack.api.log())

    response = await post_signed(stack, http, delivery.body())

    assert response.status_code == case.status, response.text
    assert email not in response.text and NAME not in response.text
    metrics_after = (await http.get(f"{stack.api_url}/metrics")).text
    assert counter(metrics_after, case.outcome) == counter(metrics_before, case.outcome) + 1
    answer = response.json()
    if case.answer is None:
        assert case.says in answer["detail"], answer
    else:
        assert answer["status"] == case.answer, answer
        assert case.says in (answer["detail"] or ""), answer
    added = stack.api.log()[log_before:]
    assert email not in added and NAME not in added
    assert "Traceback" not in added
    if case.answer == "refused":
        assert "refused for good" in added, "an operator sees the refusal"

    if case.answer in ("signalled", "started"):
        run = answer.get("allowance_workflow_id")
        assert run == allowance_workflow_id(delivery.subscription_id), answer
        if case.answer == "started":
            assert answer["workflow_id"] == order_workflow_id(delivery.order_id)
        return
    # Nothing started, nothing granted.
    if delivery.subscription_id and len(delivery.subscription_id) <= 256:
        await assert_no_allowance_run(stack, delivery.subscription_id)
    if delivery.order_id:
        await assert_no_run(stack, delivery.order_id)
    assert grant_events(stack, customer.id) == []


async def test_made_up_event_types_add_no_metric_series(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """50 signed deliveries of event types Polar does not have: each is acknowledged and
    counted under `other`; none becomes a label of its own."""

    def series(text: str) -> set[tuple[str, tuple]]:
        return {
            (sample.name, tuple(sorted(sample.labels.items())))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.name.startswith("polar_credits_webhook_request_seconds")
        }

    def others(text: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "polar_credits_webhook_deliveries_total"
            and sample.labels == {"event_type": "other", "outcome": "ignored"}
        )

    # One first, so the `other` series itself exists before counting.
    # Shaped like Polar's (lower-case words and dots), so only the list tells them apart.
    made_up = [f"order.invented_{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(51)]
    first = await post_signed(stack, http, json.dumps({"type": made_up[0], "data": {}}).encode())
    assert first.status_code == 202 and first.json()["status"] == "ignored"
    before = (await http.get(f"{stack.api_url}/metrics")).text

    for event_type in made_up[1:]:
        body = json.dumps({"type": event_type, "data": {}}).encode()
        response = await post_signed(stack, http, body)
        assert response.status_code == 202 and response.json()["status"] == "ignored"

    after = (await http.get(f"{stack.api_url}/metrics")).text
    assert series(after) == series(before), series(after) - series(before)
    assert "invented" not in after
    assert others(after) == others(before) + 50


def test_readme_lists_every_case_with_its_answer() -> None:
    assert_readme_lists(CASES)
