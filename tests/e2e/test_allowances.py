"""Monthly allowances on a yearly plan, end to end: the stand-in's webhooks reach the
subscription's allowance run through the API, on the real Temporal dev server.

The monthly-on-yearly rule grants 100 units a month to every subscription of the "Pro yearly"
plan; the team-monthly rule grants 40 units a seat a month on "Team yearly", which a
subscription reaches by a product change. Each step here is a webhook the stand-in delivers
(synchronously, to the API) and the API signals to the run (asynchronously), so every check
polls the run's `state` query briefly. The months themselves pass only on the time-skipping
server (tests/workflows/test_subscription_allowance.py): no test here waits for a timer.

Clocks: the run takes "now" from Temporal's clock and counts its periods from the
subscription's `started_at`, which the stand-in writes with its own clock. Both must be real
time, as Polar's and Temporal's are in production, or the first month is not granted at once
(a stand-in ahead of Temporal puts the start in the future). The session's stand-in runs its
real clock and nothing moves it; `standin_on_real_time` checks that before each test.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from polar_credits.identity import allowance_workflow_id
from polar_credits.models.allowances import AllowanceState
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow
from tests.conftest import TEAM_YEARLY_PRODUCT_ID, YEARLY_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import balance, grant_events, new_customer
from tests.e2e.test_subscriptions import credited, order_paid

MONTHLY = 100  # the monthly-on-yearly rule
RULE_ID = "monthly-on-yearly"
TEAM_PER_SEAT = 40  # the team-monthly rule, on "Team yearly"
TEAM_RULE_ID = "team-monthly"
SETTLE_SECONDS = 20.0  # a signal, a local activity and one ingest: well under a second here
CLOCK_TOLERANCE_SECONDS = 5.0


@pytest.fixture(autouse=True)
def standin_on_real_time(stack: Stack) -> None:
    clock = stack.standin.clock()
    assert clock["mode"] == "real", "the allowance run needs the stand-in on real time"
    skew = datetime.fromisoformat(clock["now"]).timestamp() - time.time()
    assert abs(skew) < CLOCK_TOLERANCE_SECONDS, (
        f"the stand-in's clock is {skew:+.0f} s off real time (was it advanced?): subscriptions "
        "would start where Temporal's clock is not, and no first month would be granted at once"
    )


# -- helpers ------------------------------------------------------------------------------


def one_month_after(stamp: str) -> str:
    """`started_at` + 1 month, to the second, clamped at the month's end (Jan 31 → Feb 28)."""
    at = datetime.fromisoformat(stamp).astimezone(UTC).replace(microsecond=0)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_of(stack: Stack, subscription_id: str) -> WorkflowHandle:
    return stack.temporal.get_workflow_handle(
        allowance_workflow_id(subscription_id), result_type=AllowanceState
    )


async def run_state(
    handle: WorkflowHandle, until: Callable[[AllowanceState], bool], what: str
) -> AllowanceState:
    """The run's state once `until` holds (the API's signal reaches the run a moment after
    the stand-in's delivery was answered)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        state = await handle.query(SubscriptionAllowanceWorkflow.state)
        if until(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: after {SETTLE_SECONDS:.0f} s the run shows {state}")
        await asyncio.sleep(0.1)


def allowance_events(stack: Stack, customer_id: str) -> list[dict]:
    return [
        e for e in grant_events(stack, customer_id) if e["metadata"].get("reason") == "allowance"
    ]


def signalled(answer: dict, workflow_id: str, *, ending: bool = False) -> None:
    """Every webhook of a stand-in operation was answered, the subscription ones by steering
    the run. `ending`: the operation ends the subscription, so the run may be over before
    the operation's last webhooks arrive; those are answered ignored, saying so."""
    assert answer["deliveries"], answer
    for delivery in answer["deliveries"]:
        assert delivery["status_code"] in (200, 202), delivery
        if not delivery["type"].startswith("subscription."):
            continue
        body = delivery["body"]
        assert body["workflow_id"] == workflow_id, delivery
        if ending and body["status"] == "ignored":
            assert "ended" in body["detail"], delivery
        else:
            assert body["status"] == "signalled", delivery


async def redeliver(stack: Stack, delivery: dict, subscription_id: str) -> dict:
    """Polar's manual redelivery of one webhook event (same webhook-id, same payload as first
    sent), waited for (the stand-in schedules it and answers at once); the API's answer."""
    event_id = delivery["event_id"]
    assert stack.standin.redeliver(event_id) == 202
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        rows = stack.standin.deliveries(query=subscription_id, limit=100)["items"]
        attempts = [r for r in rows if r["webhook_event"]["id"] == event_id]
        if len(attempts) >= 2:
            assert attempts[0]["succeeded"], attempts[0]
            return json.loads(attempts[0]["response"])
        assert time.monotonic() < deadline, f"redelivery of {delivery['type']} never arrived"
        await asyncio.sleep(0.05)


async def subscribed_and_granted(stack: Stack) -> tuple[str, dict, WorkflowHandle, AllowanceState]:
    """A new customer on the yearly plan, once the run granted the current month."""
    customer_id = new_customer(stack)
    made = stack.standin.subscribe(customer_id, YEARLY_PRODUCT_ID)
    handle = run_of(stack, made["subscription"]["id"])
    state = await run_state(
        handle, lambda s: s.grants_total == 1 and s.status == "active", "first month"
    )
    return customer_id, made, handle, state


# -- tests --------------------------------------------------------------------------------


async def test_the_first_paid_order_grants_the_current_month_at_once(stack: Stack) -> None:
    customer_id = new_customer(stack)
    made = stack.standin.subscribe(customer_id, YEARLY_PRODUCT_ID)
    subscription = made["subscription"]
    workflow_id = allowance_workflow_id(subscription["id"])

    # The subscription's webhooks steer its run; the paid order says it is paid for.
    signalled(made, workflow_id)
    paid = order_paid(made)
    assert paid["body"]["allowance_workflow_id"] == workflow_id
    # The order's own run grants nothing: a cadence rule grants on its timer, not on orders.
    assert (await credited(stack, paid)).status == "no_rule"

    handle = run_of(stack, subscription["id"])
    state = await run_state(handle, lambda s: s.grants_total == 1, "the first month's grant")
    assert state.status == "active"
    assert (state.grants_total, state.units_total) == (1, MONTHLY)
    period_start = one_month_after(subscription["started_at"])
    assert state.next_grant_at == period_start, (state.next_grant_at, subscription["started_at"])

    assert await balance(stack, customer_id) == MONTHLY
    [event] = allowance_events(stack, customer_id)
    assert event["metadata"]["units"] == -MONTHLY
    assert event["metadata"]["rule_id"] == RULE_ID
    started = datetime.fromisoformat(subscription["started_at"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert event["metadata"]["period_start"] == started
    # Keyed on (subscription, rule, period): no retry, second run or reset grants it twice.
    assert event["external_id"] == (
        f"polar-credits:subscription:{subscription['id']}:allowance:{RULE_ID}:period:{started}"
    )
    assert grant_events(stack, customer_id) == [event]  # nothing else was granted


async def test_redelivered_webhooks_and_orders_grant_nothing_more(stack: Stack) -> None:
    customer_id, made, handle, granted = await subscribed_and_granted(stack)
    subscription_id = made["subscription"]["id"]

    # The same order.paid again (a new webhook id, as a manual resend from the dashboard).
    resent = stack.standin.send_webhook(made["order"]["id"])
    assert resent["body"]["status"] == "duplicate", resent
    assert resent["body"]["allowance_workflow_id"] == handle.id
    # Polar's redelivery of the subscription's webhooks (same webhook id, same payload).
    for delivery in made["deliveries"]:
        if delivery["type"].startswith("subscription."):
            await redeliver(stack, delivery, subscription_id)

    # A query sees every signal delivered before it, handled. No grant was started for them
    # (none pending), and none completed in between (the count is still one).
    state = await handle.query(SubscriptionAllowanceWorkflow.state)
    assert (state.status, state.next_grant_at) == ("active", granted.next_grant_at)
    assert (state.grants_total, state.units_total) == (1, MONTHLY)
    assert not (await handle.describe()).raw_description.pending_activities
    assert (await handle.query(SubscriptionAllowanceWorkflow.state)).grants_total == 1
    assert len(allowance_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == MONTHLY


async def test_cancel_uncancel_pause_resume_and_revoke_steer_the_run(stack: Stack) -> None:
    customer_id, made, handle, granted = await subscribed_and_granted(stack)
    subscription_id = made["subscription"]["id"]
    next_month = granted.next_grant_at
    assert next_month == one_month_after(made["subscription"]["started_at"])

    def act(action: str) -> dict:
        answer = stack.standin.subscription_action(subscription_id, action)
        signalled(answer, handle.id, ending=action == "revoke")
        return answer

    # Canceled at the end of the yearly period: the months before that end still come.
    canceled = act("cancel")
    state = await run_state(handle, lambda s: s.status == "ending", "after cancel")
    assert state.next_grant_at == next_month

    act("uncancel")
    state = await run_state(handle, lambda s: s.status == "active", "after uncancel")
    assert state.next_grant_at == next_month

    # A late redelivery of the older cancel changes nothing: the run keeps the newest state.
    await redeliver(stack, canceled["deliveries"][-1], subscription_id)
    state = await handle.query(SubscriptionAllowanceWorkflow.state)
    assert (state.status, state.next_grant_at) == ("active", next_month)

    act("pause")
    state = await run_state(handle, lambda s: s.status == "paused", "after pause")
    act("resume")
    state = await run_state(handle, lambda s: s.status == "active", "after resume")
    assert state.next_grant_at == next_month

    # Revoked: the run ends at once, with the one month it granted.
    revoked = act("revoke")
    ended = await asyncio.wait_for(handle.result(), timeout=SETTLE_SECONDS)
    assert ended.status == "ended"
    assert ended.next_grant_at is None
    assert (ended.grants_total, ended.units_total) == (1, MONTHLY)
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED

    # A webhook after the end (a redelivery) reaches no new run: the ended one stays.
    late_answer = await redeliver(stack, revoked["deliveries"][-1], subscription_id)
    assert late_answer["status"] == "ignored", late_answer
    assert late_answer["detail"] == "the subscription's allowance run has ended", late_answer
    late = await handle.describe()
    assert (late.run_id, late.status) == (described.run_id, WorkflowExecutionStatus.COMPLETED)

    assert len(allowance_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == MONTHLY


async def test_a_product_change_and_a_seat_change_steer_the_next_grant(stack: Stack) -> None:
    customer_id, made, handle, granted = await subscribed_and_granted(stack)
    subscription_id = made["subscription"]["id"]
    next_month = one_month_after(made["subscription"]["started_at"])
    assert granted.next_grant_at == next_month

    def team_units(units: int) -> Callable[[AllowanceState], bool]:
        return lambda s: [(r.rule_id, r.units) for r in s.rules] == [(TEAM_RULE_ID, units)]

    # Upgraded to the per-seat yearly plan, 3 seats: Polar sends subscription.updated with
    # the new product and seats. The team rule applies from the next month (40 × 3); the
    # month at hand was granted by the old rule, and nothing is granted now.
    upgraded = stack.standin.update_subscription(
        subscription_id, product_id=TEAM_YEARLY_PRODUCT_ID, seats=3
    )
    assert upgraded["events"] == ["subscription.updated"]
    assert (upgraded["subscription"]["product_id"], upgraded["subscription"]["seats"]) == (
        TEAM_YEARLY_PRODUCT_ID,
        3,
    )
    signalled(upgraded, handle.id)
    state = await run_state(handle, team_units(3 * TEAM_PER_SEAT), "after the product change")
    assert (state.facts.product_id, state.facts.seats) == (TEAM_YEARLY_PRODUCT_ID, 3)
    assert (state.status, state.next_grant_at) == ("active", next_month)
    assert (state.grants_total, state.units_total) == (1, MONTHLY)

    # Two more seats: the next grant counts 5 of them, still from the same month.
    more = stack.standin.update_subscription(subscription_id, seats=5)
    signalled(more, handle.id)
    state = await run_state(handle, team_units(5 * TEAM_PER_SEAT), "after the seat change")
    assert (state.status, state.next_grant_at) == ("active", next_month)
    assert (state.grants_total, state.units_total) == (1, MONTHLY)

    assert not (await handle.describe()).raw_description.pending_activities
    assert len(allowance_events(stack, customer_id)) == 1
    assert await balance(stack, customer_id) == MONTHLY
