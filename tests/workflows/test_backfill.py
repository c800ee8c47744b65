"""BackfillWorkflow on the time-skipping server: the real page activity over a fake gateway
(Polar's listing, external-id dedupe and 422s in memory), so paging, continue-as-new, a page
repeated after a lost answer, rejected customers and a second start are each reached."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from polar_credits.activities.backfill import SKIP_REPEATED, BackfillActivities
from polar_credits.activities.gateway import IngestOutcome, polar_failure, rejected
from polar_credits.backfills import (
    BackfillInput,
    BackfillMeter,
    BackfillProgress,
    BackfillRequest,
    BackfillTarget,
)
from polar_credits.identity import backfill_external_id
from polar_credits.workflows.backfill import BackfillWorkflow

METER = BackfillMeter(name="api_calls", meter_id="m-1", event_name="api_usage")


class FakePolar:
    """Polar as a backfill sees it: active subscriptions to list, and an ingest endpoint that
    keeps the first event of each external id and refuses a batch naming an unknown customer."""

    def __init__(self, subscribers: list[str], known: set[str] | None = None) -> None:
        self.subscribers = subscribers  # one customer id per active subscription, oldest first
        self.known = known if known is not None else set(subscribers)
        self.stored: dict[str, dict[str, Any]] = {}
        self.ingest_calls = 0
        self.lose_answer_of_call: int | None = None  # store, then fail: a lost answer

    async def active_subscriptions(
        self, product_id: str | None, page: int, limit: int = 100
    ) -> dict[str, Any]:
        start = (page - 1) * limit
        items = [{"customer_id": c, "email": "x@example.com"} for c in self.subscribers]
        max_page = max(1, -(-len(items) // limit))
        return {
            "items": items[start : start + limit],
            "pagination": {"total_count": len(items), "max_page": max_page},
        }

    async def ingest(self, events: list[dict[str, Any]]) -> IngestOutcome:
        self.ingest_calls += 1
        unknown = [e["customer_id"] for e in events if e["customer_id"] not in self.known]
        if unknown:
            raise rejected("ingesting grant events", f"unknown customer {unknown[0]}")
        inserted = 0
        for event in events:
            if event["external_id"] not in self.stored:
                self.stored[event["external_id"]] = event
                inserted += 1
        if self.ingest_calls == self.lose_answer_of_call:
            raise ApplicationError("Polar unavailable while ingesting", type="PolarUnavailable")
        return IngestOutcome(
            inserted=inserted,
            duplicates=len(events) - inserted,
            confirmed=len(events),
            stored_by=datetime.now(UTC),
            batch_events=len(events),
        )


def request(key: str, target: BackfillTarget, **kw: Any) -> BackfillRequest:
    return BackfillRequest(
        key=key, target=target.value, meter=METER, units=25, reason="launch gift", **kw
    )


async def run(
    env: WorkflowEnvironment, polar: FakePolar, input: BackfillInput
) -> tuple[BackfillProgress, WorkflowHandle]:
    queue = f"backfill-{uuid.uuid4().hex[:8]}"
    activities = BackfillActivities(polar)  # type: ignore[arg-type]
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[BackfillWorkflow],
        activities=[activities.grant_page],
    ):
        handle = await env.client.start_workflow(
            BackfillWorkflow.run, input, id=f"backfill-{uuid.uuid4().hex}", task_queue=queue
        )
        result = await handle.result()
    # Deterministic: the history just written replays on this code.
    await Replayer(workflows=[BackfillWorkflow]).replay_workflow(await handle.fetch_history())
    return result, handle


def customers(n: int) -> list[str]:
    return [f"cus-{i:05d}" for i in range(n)]


def granted_once(polar: FakePolar, key: str, ids: list[str]) -> bool:
    wanted = {backfill_external_id(key, c) for c in ids}
    return set(polar.stored) == wanted


async def test_pages_through_the_subscribers_and_continues_as_new(
    skipping_env: WorkflowEnvironment,
) -> None:
    ids = customers(250)
    polar = FakePolar(ids)
    input = BackfillInput(
        request(f"k-{uuid.uuid4().hex[:6]}", BackfillTarget.PRODUCT, product_id="prod-1"),
        pages_per_run=1,
    )
    report, _ = await run(skipping_env, polar, input)
    assert report.done and report.pages == 3 and report.runs == 3
    assert report.customers_seen == 250 and report.total == 250
    assert (report.granted, report.already_granted, report.rejected_total) == (250, 0, 0)
    assert granted_once(polar, input.request.key, ids)
    event = polar.stored[backfill_external_id(input.request.key, ids[0])]
    assert event["metadata"]["units"] == -25 and event["name"] == "api_usage"
    assert "email" not in str(event), "only ids leave the listing"
    assert polar.ingest_calls == 3, "one ingest call per page"


async def test_a_second_start_grants_nothing_twice(skipping_env: WorkflowEnvironment) -> None:
    ids = customers(120)
    polar = FakePolar(ids)
    key = f"k-{uuid.uuid4().hex[:6]}"
    first, _ = await run(
        skipping_env, polar, BackfillInput(request(key, BackfillTarget.ALL_ACTIVE))
    )
    again, _ = await run(
        skipping_env, polar, BackfillInput(request(key, BackfillTarget.ALL_ACTIVE))
    )
    assert (first.granted, first.already_granted) == (120, 0)
    assert (again.granted, again.already_granted) == (0, 120)
    assert granted_once(polar, key, ids)


async def test_resumes_from_its_cursor_after_continue_as_new(
    skipping_env: WorkflowEnvironment,
) -> None:
    """A run handed on at page 3 (as continue-as-new or a restarted run would) lists from
    page 3 on and keeps the counts it was given."""
    ids = customers(300)
    polar = FakePolar(ids)
    key = f"k-{uuid.uuid4().hex[:6]}"
    carried = BackfillProgress(next_page=3, pages=2, customers_seen=200, granted=200, runs=2)
    report, _ = await run(
        skipping_env,
        polar,
        BackfillInput(request(key, BackfillTarget.ALL_ACTIVE), progress=carried),
    )
    assert report.done and report.pages == 3 and report.runs == 2
    assert (report.customers_seen, report.granted) == (300, 300)
    assert granted_once(polar, key, ids[200:]), "pages 1 and 2 are not listed again"


async def test_a_page_whose_answer_was_lost_is_retried_without_double_grants(
    skipping_env: WorkflowEnvironment,
) -> None:
    ids = customers(200)
    polar = FakePolar(ids)
    polar.lose_answer_of_call = 2  # page 2's events are stored, then the call "fails"
    key = f"k-{uuid.uuid4().hex[:6]}"
    report, _ = await run(
        skipping_env, polar, BackfillInput(request(key, BackfillTarget.ALL_ACTIVE))
    )
    assert report.done and report.pages == 2
    # The retried page finds its events already in Polar: counted, never granted twice.
    assert (report.granted, report.already_granted) == (100, 100)
    assert granted_once(polar, key, ids)


async def test_rejected_customers_are_reported_not_fatal(skipping_env: WorkflowEnvironment) -> None:
    good = customers(5)
    listed = [good[0], "cus-gone-1", *good[1:], "cus-gone-2"]
    polar = FakePolar([], known=set(good))
    key = f"k-{uuid.uuid4().hex[:6]}"
    report, _ = await run(
        skipping_env,
        polar,
        BackfillInput(request(key, BackfillTarget.CUSTOMERS, customer_ids=listed), page_size=3),
    )
    assert report.done and report.pages == 3 and report.total == 7
    assert report.granted == 5 and report.rejected_total == 2
    assert [r.customer_id for r in report.rejected] == ["cus-gone-1", "cus-gone-2"]
    assert all("422" in r.reason and "unknown customer" in r.reason for r in report.rejected)
    assert granted_once(polar, key, good)


async def test_a_customer_listed_twice_on_a_page_is_granted_once(
    skipping_env: WorkflowEnvironment,
) -> None:
    ids = customers(3)
    polar = FakePolar([ids[0], ids[1], ids[0], ids[2]])  # two subscriptions of one customer
    key = f"k-{uuid.uuid4().hex[:6]}"
    report, _ = await run(
        skipping_env, polar, BackfillInput(request(key, BackfillTarget.ALL_ACTIVE))
    )
    assert report.granted == 3 and report.skipped == {SKIP_REPEATED: 1}
    assert granted_once(polar, key, ids)


def test_polar_failures_keep_their_retry_semantics() -> None:
    # The page activity lets these through to Temporal's retry policy (not a rejection).
    from polar.base import PolarServerError

    failure = polar_failure(PolarServerError(503, "down"), "listing active subscriptions")
    assert failure.type == "PolarUnavailable" and not failure.non_retryable
