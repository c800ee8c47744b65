"""SubscriptionAllowanceWorkflow on the time-skipping server: a year of allowances in seconds,
steered by the messages Polar's webhooks become. The activities are fakes under their real
names: the rules are decided by the real rules code from a test rules file, and grants go to a
fake Polar that dedupes by external id as Polar does, so "granted once" is Polar's view."""

from __future__ import annotations

import calendar
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import search_attributes as sa
from polar_credits.activities.allowance import within_max
from polar_credits.cadence import parse_cadence
from polar_credits.identity import allowance_external_id, allowance_workflow_id
from polar_credits.models.allowances import (
    AllowanceGrant,
    AllowanceGrantInput,
    AllowanceRule,
    AllowanceRulesInput,
    AllowanceState,
    SubscriptionFacts,
    SubscriptionObservation,
)
from polar_credits.models.grants import PolarErrorType
from polar_credits.rules import capped_units, decide_allowance_rules, parse_rules
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow

YEARLY = "product-yearly"
YEARLY_PRO = "product-yearly-pro"
TEAM = "product-team"
TOPUP = "product-topup"
ROLLOVER = "product-rollover"
TRIAL = "product-trial"
PLAIN = "product-without-allowance"
SEAT_HEAVY = "product-seat-heavy"

RULES = parse_rules(
    f"""
[meters.api_calls]
id = "meter-1"
event_name = "api_usage"

[[rules]]
id = "monthly"
meter = "api_calls"
units = 100
every = "1 month"
products = ["{YEARLY}"]

[[rules]]
id = "monthly-pro"
meter = "api_calls"
units = 500
every = "1 month"
products = ["{YEARLY_PRO}"]

[[rules]]
id = "per-seat"
meter = "api_calls"
units_per_seat = 10
every = "1 month"
products = ["{TEAM}"]

[[rules]]
id = "top-up"
meter = "api_calls"
top_up_to = 1000
every = "1 month"
products = ["{TOPUP}"]

[[rules]]
id = "rollover"
meter = "api_calls"
units = 100
rollover_cap = 50
every = "1 month"
products = ["{ROLLOVER}"]

[[rules]]
id = "weekly-paid-only"
meter = "api_calls"
units = 7
every = "1 week"
during_trial = false
products = ["{TRIAL}"]

[[rules]]
id = "seat-heavy"
meter = "api_calls"
units_per_seat = 2000
every = "1 month"
products = ["{SEAT_HEAVY}"]
"""
)


@dataclass
class FakePolar:
    """`allowance_rules` and `grant_allowance` under their real names. Keeps each customer's
    balance and, like Polar, one event per external id (the first amount stands)."""

    events: dict[str, int] = field(default_factory=dict)
    calls: list[AllowanceGrantInput] = field(default_factory=list)
    balance: float = 0.0
    reject: set[str] = field(default_factory=set)  # period starts Polar refuses (422)

    def activities(self) -> list:
        @activity.defn(name="allowance_rules")
        async def allowance_rules(input: AllowanceRulesInput) -> list[AllowanceRule]:
            return decide_allowance_rules(RULES, input.facts)

        @activity.defn(name="grant_allowance")
        async def grant_allowance(input: AllowanceGrantInput) -> AllowanceGrant:
            self.calls.append(input)
            if input.period_start in self.reject:
                raise ApplicationError(
                    "Polar rejected ingesting grant events (422): customer does not exist",
                    type=PolarErrorType.GRANT_REJECTED.value,
                    non_retryable=True,
                )
            rule = input.rule
            external_id = allowance_external_id(
                input.subscription_id, rule.rule_id, input.period_start
            )
            seen = None
            if rule.top_up_to is not None or rule.rollover_cap is not None:
                units, seen = capped_units(rule, self.balance, None, [])
            else:
                units = rule.units or 0
            within_max(units)  # the real activity's check: above the maximum, nothing is sent
            duplicate = external_id in self.events
            if not duplicate and units > 0:
                self.events[external_id] = units
                self.balance += units
            return AllowanceGrant(
                rule_id=rule.rule_id,
                period_start=input.period_start,
                units=units,
                external_id=external_id,
                already_granted=duplicate,
                stored_by=datetime.now(UTC).isoformat(),
                balance_seen=seen,
            )

        return [allowance_rules, grant_allowance]

    def customers(self) -> set[str]:
        """The customers Polar was asked to credit."""
        return {call.customer_id for call in self.calls}

    def periods(self) -> list[str]:
        """The period starts Polar holds a grant for, in order."""
        return sorted(key.rsplit(":period:", 1)[1] for key in self.events)


@dataclass
class Subscription:
    """Builds the messages of one subscription, each a newer version (Polar's modified_at)."""

    anchor: datetime
    product_id: str = YEARLY
    interval_months: int = 12
    id: str = field(default_factory=lambda: f"sub-{uuid.uuid4().hex[:10]}")
    customer_id: str = "customer-1"
    version: int = 0
    status: str = "active"
    seats: int | None = None
    period: int = 0  # which billing period the subscription is in
    cancel_at_period_end: bool = False
    ended_at: datetime | None = None

    def period_bounds(self, period: int | None = None) -> tuple[datetime, datetime]:
        cadence = parse_cadence(f"{self.interval_months} month")
        n = self.period if period is None else period
        return cadence.start(self.anchor, n), cadence.start(self.anchor, n + 1)

    def facts(self, modified: datetime | None = None) -> SubscriptionFacts:
        self.version += 1
        start, end = self.period_bounds()
        return SubscriptionFacts(
            subscription_id=self.id,
            customer_id=self.customer_id,
            product_id=self.product_id,
            status=self.status,
            modified_at=(
                modified or self.anchor + timedelta(microseconds=self.version)
            ).isoformat(),
            started_at=stamp(self.anchor),
            current_period_start=stamp(start),
            current_period_end=stamp(end),
            cancel_at_period_end=self.cancel_at_period_end,
            ends_at=stamp(end) if self.cancel_at_period_end else None,
            ended_at=stamp(self.ended_at) if self.ended_at else None,
            seats=self.seats,
        )

    def webhook(self, event: str, now: datetime) -> SubscriptionObservation:
        return SubscriptionObservation(facts=self.facts(now), event_type=event)

    def paid_order(self, now: datetime) -> SubscriptionObservation:
        return SubscriptionObservation(
            facts=self.facts(now),
            paid_order_id=f"order-{uuid.uuid4().hex[:8]}",
            event_type="order.paid",
        )


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@asynccontextmanager
async def worker(
    env: WorkflowEnvironment, fake: FakePolar, queue: str, cached: bool = True
) -> AsyncIterator[None]:
    """`cached=False`: every workflow task is replayed from history, as on a fresh worker."""
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[SubscriptionAllowanceWorkflow],
        activities=fake.activities(),
        max_cached_workflows=100 if cached else 0,
    ):
        yield


STARTED: list[WorkflowHandle] = []


@pytest.fixture(autouse=True)
async def _terminate_runs(skipping_env: WorkflowEnvironment) -> AsyncIterator[None]:
    """A run left waiting on a timer would hold the shared server's clock for later tests."""
    yield
    while STARTED:
        handle = STARTED.pop()
        with contextlib.suppress(Exception):
            await handle.terminate("test over")


async def signal_with_start(
    env: WorkflowEnvironment,
    queue: str,
    observation: SubscriptionObservation,
    history_limit: int | None = None,
) -> WorkflowHandle:
    """As the API does it (polar_credits/starters/allowances.py)."""
    facts = observation.facts
    handle = await env.client.start_workflow(
        SubscriptionAllowanceWorkflow.run,
        AllowanceState(subscription_id=facts.subscription_id, history_limit=history_limit),
        id=allowance_workflow_id(facts.subscription_id),
        task_queue=queue,
        start_signal="observe",
        start_signal_args=[observation],
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(sa.POLAR_SUBSCRIPTION_ID, facts.subscription_id)]
        ),
    )
    STARTED.append(handle)
    return handle


async def tell(
    env: WorkflowEnvironment, handle: WorkflowHandle, observation: SubscriptionObservation
) -> None:
    """Signal the run, then let a minute pass so it has taken the message."""
    await handle.signal(SubscriptionAllowanceWorkflow.observe, observation)
    await env.sleep(timedelta(minutes=1))


async def change(
    env: WorkflowEnvironment,
    handle: WorkflowHandle,
    sub: Subscription,
    event: str,
    **fields: Any,
) -> None:
    """The subscription changes now, and Polar's webhook `event` tells the run."""
    for name, value in fields.items():
        setattr(sub, name, value)
    await tell(env, handle, sub.webhook(event, await now(env)))


async def state(handle: WorkflowHandle) -> AllowanceState:
    return await handle.query(SubscriptionAllowanceWorkflow.state)


async def now(env: WorkflowEnvironment) -> datetime:
    return await env.get_current_time()


async def start_of_next_jan_31(env: WorkflowEnvironment) -> datetime:
    current = await now(env)
    return datetime(current.year + 1, 1, 31, 10, 0, tzinfo=UTC)


async def sleep_until(env: WorkflowEnvironment, moment: datetime) -> None:
    left = moment - await now(env)
    if left > timedelta(0):
        await env.sleep(left)


def month(anchor: datetime, n: int) -> datetime:
    return parse_cadence("1 month").start(anchor, n)


@asynccontextmanager
async def paid_subscription(
    env: WorkflowEnvironment,
    queue: str,
    fake: FakePolar,
    history_limit: int | None = None,
    **subscription: Any,
) -> AsyncIterator[tuple[Subscription, WorkflowHandle]]:
    """A subscription started next Jan 31 (a month end), its first order paid then, its
    allowance run started by that order, and a worker running it."""
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor, **subscription)
    async with worker(env, fake, queue):
        await sleep_until(env, anchor)
        handle = await signal_with_start(env, queue, sub.paid_order(anchor), history_limit)
        yield sub, handle


@pytest.fixture
def queue() -> str:
    return f"allowance-{uuid.uuid4().hex[:8]}"


async def test_a_year_of_monthly_grants_on_a_yearly_plan_each_once_month_end_safe(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 11) + timedelta(days=1))
        seen = await state(handle)
        # The yearly period is paid through next Jan 31: that month waits for the renewal.
        await sleep_until(env, month(anchor, 12) + timedelta(days=3))
        held = await state(handle)
    year = anchor.year
    assert fake.periods()[:4] == [
        f"{year}-01-31T10:00:00Z",
        f"{year}-02-29T10:00:00Z" if calendar.isleap(year) else f"{year}-02-28T10:00:00Z",
        f"{year}-03-31T10:00:00Z",
        f"{year}-04-30T10:00:00Z",
    ]
    assert len(fake.periods()) == 12 and len(fake.calls) == 12
    assert sum(fake.events.values()) == 1200
    assert seen.grants_total == 12 and seen.units_total == 1200 and seen.status == "active"
    assert seen.next_grant_at == f"{year + 1}-01-31T10:00:00Z"
    assert held.status == "held" and "not paid yet" in (held.held_because or "")


async def test_renewal_payment_releases_the_held_month_and_starts_the_next_year(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        renewal = month(anchor, 12) + timedelta(hours=2)  # Polar renews a little late
        await sleep_until(env, renewal)
        assert len(fake.periods()) == 12
        sub.period = 1
        await tell(env, handle, sub.paid_order(renewal))
        await sleep_until(env, month(anchor, 13) + timedelta(hours=1))
        after = await state(handle)
    assert len(fake.periods()) == 14
    assert fake.periods()[12] == stamp(month(anchor, 12))  # keyed on its period, not the hour
    assert after.status == "active" and after.held_because is None


async def test_cancel_at_period_end_stops_the_grants_at_the_period_end(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, interval_months=3) as (
        sub,
        handle,
    ):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 1) + timedelta(days=2))
        await change(env, handle, sub, "subscription.canceled", cancel_at_period_end=True)
        ending = await state(handle)
        await sleep_until(env, month(anchor, 2) + timedelta(days=2))
        last = await state(handle)
        await sleep_until(env, month(anchor, 6))
        result = await handle.result()
    # Periods of Jan, Feb and Mar: the last one before the quarter ends on Apr 30.
    assert len(fake.periods()) == 3
    assert ending.status == "ending" and ending.next_grant_at == stamp(month(anchor, 2))
    assert last.status == "ending" and last.next_grant_at is None
    assert result.status == "ended"


async def test_uncancel_continues_the_grants(skipping_env: WorkflowEnvironment, queue: str) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 2) + timedelta(days=1))
        await change(env, handle, sub, "subscription.canceled", cancel_at_period_end=True)
        await change(env, handle, sub, "subscription.uncanceled", cancel_at_period_end=False)
        await sleep_until(env, month(anchor, 5) + timedelta(days=1))
        after = await state(handle)
    assert len(fake.periods()) == 6 and after.status == "active"


async def test_pause_skips_the_paused_months_and_resume_does_not_make_them_up(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 2) + timedelta(days=10))  # 3 grants so far
        await change(env, handle, sub, "subscription.paused", status="paused")
        await sleep_until(env, month(anchor, 5) + timedelta(days=10))  # months 3, 4, 5 paused
        paused = await state(handle)
        await change(env, handle, sub, "subscription.resumed", status="active")
        resumed = await state(handle)
        await sleep_until(env, month(anchor, 11) + timedelta(days=1))
        done = await state(handle)
    assert paused.status == "paused" and paused.grants_total == 3
    assert len(paused.skipped) == 3 and all("paused" in s for s in paused.skipped)
    assert resumed.next_grant_at == stamp(month(anchor, 6))
    assert fake.periods() == [stamp(month(anchor, n)) for n in (0, 1, 2, 6, 7, 8, 9, 10, 11)]
    assert done.grants_total == 9


async def test_revoke_stops_at_once(skipping_env: WorkflowEnvironment, queue: str) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 3) + timedelta(days=3))
        revoked_at = await now(env)
        sub.status, sub.ended_at = "canceled", revoked_at
        await tell(env, handle, sub.webhook("subscription.revoked", revoked_at))
        result = await handle.result()
        closed = (await handle.describe()).close_time
    assert result.status == "ended" and len(fake.periods()) == 4
    assert closed is not None and closed - revoked_at < timedelta(minutes=2)  # not next month


async def test_duplicate_late_and_out_of_order_messages_change_nothing(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor)
    fake = FakePolar()
    async with worker(env, fake, queue):
        await sleep_until(env, anchor)
        first = sub.paid_order(anchor)
        handle = await signal_with_start(env, queue, first)
        await signal_with_start(env, queue, first)  # the same delivery, twice
        await sleep_until(env, month(anchor, 1) + timedelta(days=5))
        t = await now(env)
        sub.status = "paused"
        stale = sub.webhook("subscription.paused", t - timedelta(days=20))  # older than the order
        await tell(env, handle, stale)
        sub.status = "active"
        current = sub.webhook("subscription.updated", t)
        for _ in range(3):
            await tell(env, handle, current)
        await sleep_until(env, month(anchor, 3) + timedelta(days=1))
        before_end = await state(handle)
        # Revoked; then an older "active" arrives late: the subscription stays ended.
        sub.status, sub.ended_at = "canceled", await now(env)
        await tell(
            env,
            handle,
            sub.webhook("subscription.revoked", await now(env)),
        )
        result = await handle.result()
    assert before_end.status == "active" and before_end.skipped == []
    assert len(fake.periods()) == 4 and len(fake.calls) == 4
    assert result.status == "ended"

    # A delivery after the end does not start a second run (the API's reuse policy).
    late = Subscription(anchor=anchor, id=sub.id).webhook("subscription.updated", anchor)
    with pytest.raises(Exception):  # noqa: B017,PT011 - WorkflowAlreadyStartedError
        from temporalio.common import WorkflowIDReusePolicy

        await env.client.start_workflow(
            SubscriptionAllowanceWorkflow.run,
            AllowanceState(subscription_id=sub.id),
            id=allowance_workflow_id(sub.id),
            task_queue=queue,
            start_signal="observe",
            start_signal_args=[late],
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )


async def test_a_message_before_the_paid_order_waits_for_payment(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor)
    fake = FakePolar()
    async with worker(env, fake, queue):
        await sleep_until(env, anchor)
        handle = await signal_with_start(env, queue, sub.webhook("subscription.created", anchor))
        await sleep_until(env, anchor + timedelta(hours=1))
        waiting, calls_while_waiting = await state(handle), len(fake.calls)
        await signal_with_start(env, queue, sub.paid_order(await now(env)))
        await sleep_until(env, anchor + timedelta(hours=2))
        paid = await state(handle)
    assert waiting.status == "waiting_for_payment" and calls_while_waiting == 0
    assert paid.grants_total == 1 and fake.periods() == [stamp(anchor)]  # at once, once paid


async def test_past_due_holds_the_grant_until_paid_and_drops_it_if_its_period_passes(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 1) - timedelta(days=1))
        await change(env, handle, sub, "subscription.past_due", status="past_due")
        await sleep_until(env, month(anchor, 1) + timedelta(days=3))
        held = await state(handle)
        await change(env, handle, sub, "subscription.active", status="active")
        await sleep_until(env, month(anchor, 1) + timedelta(days=4))
        late = await state(handle)
        # Past due again over a whole period: that month is dropped, not granted late.
        await sleep_until(env, month(anchor, 2) - timedelta(days=1))
        await change(env, handle, sub, "subscription.past_due", status="past_due")
        await sleep_until(env, month(anchor, 3) + timedelta(days=2))
        await change(env, handle, sub, "subscription.active", status="active")
        await sleep_until(env, month(anchor, 3) + timedelta(days=3))
        after = await state(handle)
    assert held.status == "held" and "past_due" in (held.held_because or "")
    assert late.grants_total == 2  # February's, granted on payment
    assert any("passed" in s for s in after.skipped)  # March's
    assert fake.periods() == [stamp(month(anchor, n)) for n in (0, 1, 3)]


async def test_product_change_uses_the_new_products_rules_from_the_next_grant(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 1) + timedelta(days=5))
        await change(env, handle, sub, "subscription.updated", product_id=YEARLY_PRO)
        await sleep_until(env, month(anchor, 3) + timedelta(days=1))
        # A product without an allowance: no more grants.
        await change(env, handle, sub, "subscription.updated", product_id=PLAIN)
        await sleep_until(env, month(anchor, 6))
        after = await state(handle)
    units = [c.rule.units for c in fake.calls]
    assert [c.rule.rule_id for c in fake.calls] == ["monthly"] * 2 + ["monthly-pro"] * 2
    assert units == [100, 100, 500, 500]
    assert after.status == "active" and after.next_grant_at is None


async def test_seat_change_uses_the_new_seat_count_from_the_next_grant(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, product_id=TEAM, seats=3) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 1) + timedelta(days=5))
        await change(env, handle, sub, "subscription.updated", seats=5)
        await sleep_until(env, month(anchor, 2) + timedelta(days=1))
        await state(handle)
    assert [fake.events[k] for k in sorted(fake.events)] == [30, 30, 50]


async def test_top_up_grants_only_what_brings_the_balance_to_the_cap(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, product_id=TOPUP) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, anchor + timedelta(days=3))
        fake.balance -= 300  # the customer used 300 units
        await sleep_until(env, month(anchor, 1) + timedelta(days=3))
        fake.balance += 50  # Polar's balance is above what it was: no negative grant
        await sleep_until(env, month(anchor, 2) + timedelta(days=3))
        after = await state(handle)
    assert [g.units for g in after.grants] == [1000, 300, 0]
    # Never negative: a balance above the cap gets no grant, and nothing is taken away.
    assert fake.balance == 1050


async def test_rollover_cap_limits_what_unused_credit_carries_into_a_period(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, product_id=ROLLOVER) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, anchor + timedelta(days=3))
        fake.balance -= 20  # 80 unused: only 50 may carry, so the next grant is 70
        await sleep_until(env, month(anchor, 1) + timedelta(days=3))
        fake.balance -= 150  # all used: a full grant
        await sleep_until(env, month(anchor, 2) + timedelta(days=3))
        after = await state(handle)
    assert [g.units for g in after.grants] == [100, 70, 100]
    assert [g.balance_seen for g in after.grants] == [0, 80, 0]


async def test_trial_periods_grant_nothing_for_a_paid_only_rule_and_conversion_grants_at_once(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor, product_id=TRIAL, interval_months=1, status="trialing")
    fake = FakePolar()
    async with worker(env, fake, queue):
        await sleep_until(env, anchor)
        handle = await signal_with_start(env, queue, sub.paid_order(anchor))  # the $0 order
        await sleep_until(env, anchor + timedelta(days=15))
        trial, calls_in_trial = await state(handle), len(fake.calls)
        sub.status = "active"
        await tell(env, handle, sub.paid_order(await now(env)))
        await sleep_until(env, anchor + timedelta(days=22))
    assert trial.grants_total == 0 and calls_in_trial == 0
    # Converted on day 15: that week's period at once, then day 21's.
    assert fake.periods() == [
        stamp(anchor + timedelta(days=14)),
        stamp(anchor + timedelta(days=21)),
    ]


async def test_a_rejected_grant_loses_its_period_visibly_and_the_next_one_is_granted(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        fake.reject.add(stamp(month(anchor, 1)))
        await sleep_until(env, month(anchor, 2) + timedelta(days=1))
        after = await state(handle)
    assert fake.periods() == [stamp(month(anchor, 0)), stamp(month(anchor, 2))]
    assert len(after.skipped) == 1 and "rejected" in after.skipped[0]


async def test_continue_as_new_happens_and_loses_nothing(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, history_limit=40) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, month(anchor, 11) + timedelta(days=1))
        after = await state(handle)
        latest = env.client.get_workflow_handle(handle.id)
        description = await latest.describe()
    assert after.runs > 1 and description.run_id != handle.result_run_id
    assert len(fake.periods()) == 12 and len(fake.calls) == 12
    assert after.grants_total == 12 and after.units_total == 1200


async def test_a_worker_restart_mid_year_loses_and_doubles_nothing(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor)
    fake = FakePolar()
    # Without a cache (so the run never sticks to the stopped worker, and every task replays
    # the history, as a fresh worker does after a crash).
    async with worker(env, fake, queue, cached=False):
        await sleep_until(env, anchor)
        handle = await signal_with_start(env, queue, sub.paid_order(anchor))
        await sleep_until(env, month(anchor, 4) + timedelta(days=1))
    async with worker(env, fake, queue, cached=False):
        await sleep_until(env, month(anchor, 11) + timedelta(days=1))
        after = await state(handle)
    assert len(fake.periods()) == 12 and len(fake.calls) == 12
    assert after.grants_total == 12


async def test_the_run_is_found_by_its_subscription_and_shows_its_status(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake) as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, anchor + timedelta(days=1))
        described = await handle.describe()
    attributes = described.typed_search_attributes
    assert attributes.get(sa.POLAR_SUBSCRIPTION_ID) == sub.id
    assert attributes.get(sa.CREDIT_STATUS) == "active"
    assert attributes.get(sa.CREDIT_UNITS) == 100


async def test_a_second_run_for_the_subscription_grants_no_period_twice(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    env = skipping_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor)
    fake = FakePolar()
    async with worker(env, fake, queue):
        await sleep_until(env, anchor)
        first = await signal_with_start(env, queue, sub.paid_order(anchor))
        await sleep_until(env, month(anchor, 2) + timedelta(days=3))
        # An operator terminates the run (or it is reset); the next delivery starts a new one,
        # which begins with the month at hand: Polar already holds it.
        await first.terminate("operator")
        second = await signal_with_start(env, queue, sub.paid_order(await now(env)))
        await sleep_until(env, month(anchor, 4) + timedelta(days=1))
        after = await state(second)
    assert second.result_run_id != first.result_run_id
    assert fake.periods() == [stamp(month(anchor, n)) for n in range(5)]
    assert sum(fake.events.values()) == 500
    assert [g.already_granted for g in after.grants] == [True, False, False]
    assert after.units_total == 200  # the new run's own grants; March was the first run's


async def test_a_paid_order_of_another_customer_is_refused_and_the_period_stays_the_subscribers(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    """Issue 16, item 6: a signed order.paid from customer B naming A's subscription once
    switched the run to B. A subscription's customer never changes in Polar: the message is
    refused, flagged in the run, and every period stays A's."""
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, customer_id="customer-a") as (sub, handle):
        anchor = sub.anchor
        await sleep_until(env, anchor + timedelta(days=1))
        intruder = replace_customer(sub.paid_order(await now(env)), "customer-b")
        await tell(env, handle, intruder)
        # A subscription webhook naming B: refused the same way (and its newer facts unused).
        await tell(
            env,
            handle,
            replace_customer(sub.webhook("subscription.updated", await now(env)), "customer-b"),
        )
        refused = await state(handle)
        await sleep_until(env, month(anchor, 2) + timedelta(days=1))
        after = await state(handle)
        described = await handle.describe()
    assert refused.refused_total == 2
    assert refused.facts is not None and refused.facts.customer_id == "customer-a"
    assert "customer-b" in refused.refused[0] and "customer-a" in refused.refused[0]
    assert intruder.paid_order_id is not None and intruder.paid_order_id in refused.refused[0]
    assert (refused.status, refused.grants_total) == ("active", 1)
    # The months after it are granted, to A only.
    assert len(fake.periods()) == 3 and fake.customers() == {"customer-a"}
    assert (after.grants_total, after.units_total, after.refused_total) == (3, 300, 2)
    assert described.typed_search_attributes.get(sa.POLAR_CUSTOMER_ID) == "customer-a"


def replace_customer(
    observation: SubscriptionObservation, customer_id: str
) -> SubscriptionObservation:
    observation.facts.customer_id = customer_id
    return observation


@pytest.mark.parametrize("seats", [2**53, 10**9])
async def test_a_per_seat_amount_above_the_maximum_is_held_and_the_next_period_still_grants(
    skipping_env: WorkflowEnvironment, queue: str, seats: int
) -> None:
    """Issue 16, item 7: 2000 units a seat × 2^53 seats once reached Polar as -1.8e19 units,
    then the run failed its workflow task forever (CreditUnits overflowed). Now the period is
    held: recorded with its amount, shown as `held_over_max`, nothing sent; the run goes on,
    and once the seats are sane again the next period grants."""
    await held_over_max_then_granted(skipping_env, queue, seats)


async def held_over_max_then_granted(
    env: WorkflowEnvironment, queue: str, seats: int = 2**53
) -> None:
    """The test above (also a recorded history: tests/histories/record_allowance.py)."""
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, product_id=SEAT_HEAVY, seats=seats) as (
        sub,
        handle,
    ):
        anchor = sub.anchor
        await sleep_until(env, anchor + timedelta(days=1))
        held = await state(handle)
        held_attributes = (await handle.describe()).typed_search_attributes
        await change(env, handle, sub, "subscription.updated", seats=3)
        await sleep_until(env, month(anchor, 1) + timedelta(days=1))
        after = await state(handle)
        after_attributes = (await handle.describe()).typed_search_attributes
    assert list(fake.events.values()) == [3 * 2000]
    assert fake.periods() == [stamp(month(anchor, 1))]  # the held month never reached Polar
    assert (held.status, held.grants_total, held.units_total) == ("held_over_max", 0, 0)
    [record] = held.held
    assert (record.rule_id, record.units, record.period_start) == (
        "seat-heavy",
        2000 * seats,
        stamp(anchor),
    )
    assert "per-grant maximum" in record.reason and str(2000 * seats) in record.reason
    assert held.next_grant_at == stamp(month(anchor, 1))  # not stuck: the next period is due
    assert held_attributes.get(sa.CREDIT_STATUS) == "held_over_max"
    assert held_attributes.get(sa.CREDIT_UNITS) == 0
    assert (after.status, after.grants_total, after.units_total) == ("active", 1, 6000)
    assert after.held_total == 1 and after.holding == []
    assert after_attributes.get(sa.CREDIT_STATUS) == "active"


async def test_a_held_rule_that_no_longer_applies_holds_nothing(
    skipping_env: WorkflowEnvironment, queue: str
) -> None:
    """A product change away from the rule whose period was held: the run shows the new
    product's standing, not `held_over_max` for a rule that no longer applies."""
    env = skipping_env
    fake = FakePolar()
    async with paid_subscription(env, queue, fake, product_id=SEAT_HEAVY, seats=10**9) as (
        sub,
        handle,
    ):
        await sleep_until(env, sub.anchor + timedelta(days=1))
        held = await state(handle)
        await change(env, handle, sub, "subscription.updated", product_id=YEARLY)
        moved = await state(handle)
        await sleep_until(env, month(sub.anchor, 1) + timedelta(days=1))
        after = await state(handle)
    assert (held.status, held.holding) == ("held_over_max", ["seat-heavy"])
    assert (moved.status, moved.holding, moved.held_total) == ("active", [], 1)
    assert (after.status, after.grants_total, after.units_total) == ("active", 1, 100)
