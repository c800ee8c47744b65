"""A recovery on the time-skipping server: RecoverWorkflow with its page activities faked under
their real names (the window it lists, both listings paged, its report), and an allowance run
brought back by a recovery's message (the subscription as Polar shows it, with how far it is
paid): it grants the month holding now once, whatever the lost run had granted, goes on with
the next, and holds a past-due subscription until it is paid."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from polar_credits.identity import allowance_external_id
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.reconciliation import ReconcilePageInput, ReconcilePageResult
from polar_credits.recovery import (
    RecoverInput,
    RecoverResult,
    RecoverSubscriptionsInput,
    RecoverSubscriptionsResult,
)
from polar_credits.workflows.recover import RecoverWorkflow
from tests.workflows import test_subscription_allowance as allowance_tests
from tests.workflows.conftest import BIN, register_search_attributes
from tests.workflows.test_subscription_allowance import (
    FakePolar,
    Subscription,
    month,
    now,
    signal_with_start,
    sleep_until,
    stamp,
    start_of_next_jan_31,
    state,
    tell,
    worker,
)


class FakeRecover:
    """Pages of orders (started, already running) and of subscriptions (started, running)."""

    def __init__(self, orders: list[tuple[int, int]], subscriptions: list[tuple[int, int]]):
        self.orders, self.subscriptions = orders, subscriptions
        self.order_pages: list[ReconcilePageInput] = []
        self.subscription_pages: list[RecoverSubscriptionsInput] = []
        self.server_now: datetime | None = None
        self.listed: list[str] = []  # "orders" or "subscriptions", one per page, in order

    @activity.defn(name="reconcile_page")
    async def reconcile_page(self, input: ReconcilePageInput) -> ReconcilePageResult:
        self.listed.append("orders")
        self.server_now = self.server_now or activity.info().current_attempt_scheduled_time
        self.order_pages.append(input)
        started, running = self.orders[input.page - 1]
        return ReconcilePageResult(
            orders=started + running,
            started=[f"ord-{input.page}-{i}" for i in range(started)],
            already_handled=running,
            has_more=input.page < len(self.orders),
            allowances_told=1 if input.allowances and started else 0,
        )

    @activity.defn(name="recover_subscriptions_page")
    async def recover_subscriptions_page(
        self, input: RecoverSubscriptionsInput
    ) -> RecoverSubscriptionsResult:
        self.listed.append("subscriptions")
        self.server_now = self.server_now or activity.info().current_attempt_scheduled_time
        self.subscription_pages.append(input)
        started, running = self.subscriptions[input.page - 1]
        return RecoverSubscriptionsResult(
            subscriptions=started + running + 1,
            started=[f"sub-{input.page}-{i}" for i in range(started)],
            already_running=running,
            ignored=1,
            has_more=input.page < len(self.subscriptions),
        )


@pytest.fixture(scope="module")
async def own_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: its runs skip years, which must not move
    the clock of the session's server under other modules' calendar tests."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    try:
        await register_search_attributes(env)
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(autouse=True)
async def _terminate_runs() -> AsyncIterator[None]:
    """A run left waiting on a timer would hold the server's clock for later tests."""
    yield
    while allowance_tests.STARTED:
        with contextlib.suppress(Exception):
            await allowance_tests.STARTED.pop().terminate("test over")


@pytest.fixture
def queue() -> str:
    return f"recover-{uuid.uuid4().hex[:8]}"


async def recover(env: WorkflowEnvironment, fake: FakeRecover, **input: object) -> RecoverResult:
    queue = f"recover-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RecoverWorkflow],
        activities=[fake.reconcile_page, fake.recover_subscriptions_page],
    ):
        handle = await env.client.start_workflow(
            RecoverWorkflow.run,
            RecoverInput(task_queue=queue, **input),  # type: ignore[arg-type]
            id=f"polar-credits-recover-test-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await handle.result()
    # Deterministic: the history just written replays on this code.
    await Replayer(workflows=[RecoverWorkflow]).replay_workflow(await handle.fetch_history())
    return report


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_recovery_lists_subscriptions_then_orders_since_then_and_reports(
    own_env: WorkflowEnvironment,
) -> None:
    fake = FakeRecover(orders=[(3, 97), (1, 0)], subscriptions=[(2, 98), (0, 5)])
    report = await recover(own_env, fake, since_seconds=30 * 86400, page_size=100)
    # Live subscriptions first (their runs back), then the orders, which only tell those
    # runs: an old order of an ended subscription starts nothing.
    assert fake.listed == ["subscriptions", "subscriptions", "orders", "orders"]
    assert [p.page for p in fake.order_pages] == [1, 2]
    assert [p.page for p in fake.subscription_pages] == [1, 2]
    window = {p.created_after for p in fake.order_pages + fake.subscription_pages}
    assert len(window) == 1, "one window for both listings"
    assert fake.server_now is not None
    back = fake.server_now - at(window.pop())
    assert timedelta(days=30) <= back <= timedelta(days=30, minutes=1)
    # Paid subscription orders reach their allowance runs, as the webhook's do.
    assert all(p.allowances for p in fake.order_pages)
    assert (report.orders, report.orders_started, report.orders_already_running) == (101, 4, 97)
    assert (report.subscriptions, report.subscriptions_ignored) == (107, 2)
    assert (report.allowances_started, report.allowances_already_running) == (2, 103)
    assert report.allowances_told_paid == 2
    assert report.complete and report.phase == "done"


async def test_orders_only_lists_no_subscriptions(own_env: WorkflowEnvironment) -> None:
    fake = FakeRecover(orders=[(0, 4)], subscriptions=[(9, 9)])
    report = await recover(own_env, fake, since_seconds=3600, subscriptions=False)
    assert fake.subscription_pages == [] and not fake.order_pages[0].allowances
    assert (report.orders_already_running, report.subscriptions) == (4, 0)


async def test_a_listing_cut_at_its_page_limit_says_so(own_env: WorkflowEnvironment) -> None:
    fake = FakeRecover(orders=[(1, 0), (1, 0), (1, 0)], subscriptions=[(1, 0)])
    report = await recover(own_env, fake, since_seconds=3600, max_pages=2)
    assert len(fake.order_pages) == 2 and not report.complete
    assert report.subscription_pages == 1  # the subscriptions are still listed


# -- an allowance run brought back by a recovery --------------------------------------------


def recovered(sub: Subscription, moment: datetime, paid_through: str) -> SubscriptionObservation:
    """What a recovery sends (activities/recover.py): the subscription as Polar shows it."""
    return SubscriptionObservation(
        facts=sub.facts(moment), event_type="recovery", paid_through=paid_through
    )


async def test_a_recovered_run_grants_the_month_holding_now_once_and_goes_on(
    own_env: WorkflowEnvironment, queue: str
) -> None:
    env = own_env
    anchor = await start_of_next_jan_31(env)
    sub = Subscription(anchor=anchor)
    fake = FakePolar()
    # The lost run had granted months 0 to 3 (Polar holds their events).
    for n in range(4):
        key = allowance_external_id(sub.id, "monthly", stamp(month(anchor, n)))
        fake.events[key] = 100
    async with worker(env, fake, queue):
        await sleep_until(env, month(anchor, 3) + timedelta(days=10))
        _, end = sub.period_bounds()
        handle = await signal_with_start(env, queue, recovered(sub, await now(env), stamp(end)))
        await sleep_until(env, month(anchor, 4) + timedelta(days=1))
        after = await state(handle)
    # Month 3 again (Polar's duplicate), then month 4 on its timer; nothing before month 3.
    assert [g.period_start for g in after.grants] == [stamp(month(anchor, n)) for n in (3, 4)]
    assert [g.already_granted for g in after.grants] == [True, False]
    assert fake.periods() == [stamp(month(anchor, n)) for n in range(5)]
    assert sum(fake.events.values()) == 500
    assert after.status == "active" and after.next_grant_at == stamp(month(anchor, 5))


async def test_a_recovered_past_due_run_holds_until_the_renewal_is_paid(
    own_env: WorkflowEnvironment, queue: str
) -> None:
    env = own_env
    anchor = await start_of_next_jan_31(env)
    # In its second year, the renewal's payment failed: paid up to the new period's start.
    sub = Subscription(anchor=anchor, period=1, status="past_due")
    fake = FakePolar()
    async with worker(env, fake, queue):
        await sleep_until(env, month(anchor, 12) + timedelta(days=2))
        start, _ = sub.period_bounds()
        handle = await signal_with_start(env, queue, recovered(sub, await now(env), stamp(start)))
        await sleep_until(env, month(anchor, 12) + timedelta(days=5))
        held = await state(handle)
        sub.status = "active"
        await tell(env, handle, sub.paid_order(await now(env)))
        paid = await state(handle)
    assert held.status == "held" and held.grants_total == 0
    assert fake.periods() == [stamp(month(anchor, 12))]
    assert paid.status == "active" and paid.next_grant_at == stamp(month(anchor, 13))
