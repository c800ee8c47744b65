"""ReconcileWorkflow on the time-skipping server, its activities faked under their real names:
the window it lists (first run, or from the last watermark with an overlap), paging, the
report and watermark it leaves, and a run cut at its page limit."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from polar_credits.reconciliation import (
    REPAIRED_MEMO,
    WATERMARK_MEMO,
    ReconcileInput,
    ReconcilePageInput,
    ReconcilePageResult,
    ReconcileResult,
    Watermark,
    WatermarkInput,
)
from polar_credits.workflows.reconcile import ReconcileWorkflow


class FakeReconcile:
    """Pages of paid orders: page n holds `pages[n-1]` = (started, already handled, minutes
    from the window's start to the page's latest order, or None for an empty page)."""

    def __init__(self, watermark: str | None, pages: list[tuple[int, int, int | None]]) -> None:
        self.mark = watermark
        self.pages = pages
        self.asked: list[ReconcilePageInput] = []
        self.server_now: datetime | None = None  # the test server's clock skips ahead

    @activity.defn(name="reconcile_watermark")
    async def watermark(self, input: WatermarkInput) -> Watermark:
        self.server_now = activity.info().current_attempt_scheduled_time
        return Watermark(created_at=self.mark)

    def latest(self, page: int) -> str | None:
        minutes = self.pages[page - 1][2]
        if minutes is None:
            return None
        return (at(self.asked[0].created_after) + timedelta(minutes=minutes)).isoformat()

    @activity.defn(name="reconcile_page")
    async def reconcile_page(self, input: ReconcilePageInput) -> ReconcilePageResult:
        self.asked.append(input)
        started, handled, _ = self.pages[input.page - 1]
        latest = self.latest(input.page)
        return ReconcilePageResult(
            orders=started + handled,
            started=[f"ord-{input.page}-{i}" for i in range(started)],
            already_handled=handled,
            latest_created_at=latest,
            has_more=input.page < len(self.pages),
        )


async def reconcile(
    env: WorkflowEnvironment, fake: FakeReconcile, **input: float
) -> tuple[ReconcileResult, dict]:
    queue = f"reconcile-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReconcileWorkflow],
        activities=[fake.watermark, fake.reconcile_page],
    ):
        handle = await env.client.start_workflow(
            ReconcileWorkflow.run,
            ReconcileInput(task_queue=queue, **input),
            id=f"polar-credits-reconcile-test-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        report = await handle.result()
        memo = await (await handle.describe()).memo()
    # Deterministic: the history just written replays on this code.
    await Replayer(workflows=[ReconcileWorkflow]).replay_workflow(await handle.fetch_history())
    return report, memo


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_a_first_run_looks_back_and_reports_what_it_repaired(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakeReconcile(None, [(2, 98, 30), (1, 20, 50)])
    report, memo = await reconcile(skipping_env, fake, lookback_seconds=3600)
    assert [p.page for p in fake.asked] == [1, 2]
    assert len({p.created_after for p in fake.asked}) == 1, "one window, paged"
    assert fake.server_now is not None
    window = fake.server_now - at(fake.asked[0].created_after)
    assert timedelta(minutes=59) <= window <= timedelta(hours=1, minutes=1)
    assert (report.pages, report.orders, report.started, report.already_handled) == (2, 121, 3, 118)
    assert report.repaired_order_ids == ["ord-1-0", "ord-1-1", "ord-2-0"]
    assert report.complete and report.watermark == fake.latest(2)
    # Visible in the UI, and where the next run finds its watermark.
    assert memo == {WATERMARK_MEMO: report.watermark, REPAIRED_MEMO: 3}


async def test_a_later_run_starts_a_little_before_the_last_watermark(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakeReconcile("2026-11-30T11:00:00+00:00", [(0, 5, 15)])
    report, _ = await reconcile(skipping_env, fake, overlap_seconds=600)
    assert at(fake.asked[0].created_after) == at("2026-11-30T10:50:00+00:00")
    assert (report.started, report.already_handled) == (0, 5)
    assert at(report.watermark) == at("2026-11-30T11:05:00+00:00")


async def test_nothing_new_keeps_the_watermark(skipping_env: WorkflowEnvironment) -> None:
    fake = FakeReconcile("2026-11-30T11:00:00+00:00", [(0, 0, None)])
    report, memo = await reconcile(skipping_env, fake)
    assert report.orders == 0 and report.watermark == "2026-11-30T11:00:00+00:00"
    assert memo[REPAIRED_MEMO] == 0


async def test_a_run_stops_at_its_page_limit_and_the_next_goes_on(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakeReconcile(None, [(1, 0, minutes) for minutes in (10, 20, 30, 40, 50)])
    report, memo = await reconcile(skipping_env, fake, max_pages=2)
    assert report.pages == 2 and not report.complete
    assert report.watermark == fake.latest(2), "the next run goes on from page 2's last order"
    assert memo[WATERMARK_MEMO] == report.watermark
