"""The gateway's scheduler on its own, against a fake Polar and a budget that hands out
permits when the test says: batching, read turns, isolating an event Polar rejects, and
callers that give up. What is asserted is what Polar received and what each caller got."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from polar.base import PolarClientError, PolarRateLimitError, PolarServerError
from polar.v2026_10.errors import HTTPValidationError
from polar.v2026_10.outputs import HTTPValidationError as ValidationAnswer
from polar.v2026_10.outputs import ValidationError
from temporalio.exceptions import ApplicationError

from polar_credits.activities.gateway import (
    MAX_BATCH_EVENTS,
    CallScheduler,
    IngestOutcome,
    IngestReceipt,
    MeterRow,
)
from polar_credits.models.grants import PolarErrorType

STORED_BY = datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)
METER = "meter-1"


class Permits:
    """The call budget: a permit only when the test gives one (or always, if unlimited)."""

    def __init__(self, *, unlimited: bool = False) -> None:
        self._unlimited = unlimited
        self._given = asyncio.Semaphore(0)
        self.throttled_for: list[float] = []

    def give(self, count: int = 1) -> None:
        for _ in range(count):
            self._given.release()

    async def acquire(self) -> None:
        if not self._unlimited:
            await self._given.acquire()

    async def throttled(self, retry_after_seconds: float) -> None:
        self.throttled_for.append(retry_after_seconds)


class FakePolar:
    """Polar as the scheduler sends to it: ingest dedupes by external id and refuses a whole
    batch holding an event of an unknown customer; meters are read by page."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []  # ("ingest", external ids) / ("read", ...)
        self.stored: list[str] = []
        self.unknown_customers: set[str] = set()
        self.names_rejected_events = True  # Polar's 422 says which event; or names none
        self.failure: Exception | None = None  # the next call fails so
        self.answer_held: asyncio.Event | None = None  # the answer waits for this
        self.balances: dict[str, float] = {}

    def ingested(self) -> list[list[str]]:
        return [ids for kind, ids in self.calls if kind == "ingest"]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    async def ingest(self, events: list[dict[str, Any]]) -> IngestReceipt:
        self.calls.append(("ingest", [e["external_id"] for e in events]))
        if self.answer_held is not None:
            await self.answer_held.wait()
        self._fail_if_asked()
        unknown = [i for i, e in enumerate(events) if e["customer_id"] in self.unknown_customers]
        if unknown and self.names_rejected_events:
            items = [
                ValidationError(
                    loc=["body", "events", i, "customer_id"],
                    msg="Customer does not exist.",
                    type="value_error",
                )
                for i in unknown
            ]
            raise HTTPValidationError(422, ValidationAnswer(detail=items))
        if unknown:
            raise PolarClientError(422, "refused")
        new = [e["external_id"] for e in events if e["external_id"] not in self.stored]
        self.stored.extend(new)
        return IngestReceipt(len(new), len(events) - len(new), STORED_BY)

    async def customer_meters(self, meter_id: str, customer_ids: list[str]) -> list[MeterRow]:
        self.calls.append(("read", list(customer_ids)))
        self._fail_if_asked()
        return [
            MeterRow(c, meter_id, self.balances[c], 0.0, self.balances[c], None)
            for c in customer_ids
            if c in self.balances
        ]

    def _fail_if_asked(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure


def grant(order_id: str, customer_id: str = "cus-1", **metadata: Any) -> dict[str, Any]:
    return {
        "name": "api_usage",
        "customer_id": customer_id,
        "external_id": f"grant:{order_id}",
        "metadata": {"units": -10, "order_id": order_id, **metadata},
    }


@contextlib.asynccontextmanager
async def scheduling(polar: FakePolar, permits: Permits) -> AsyncIterator[CallScheduler]:
    scheduler = CallScheduler(polar, permits)
    try:
        # A caller the scheduler never answers fails the test instead of hanging it.
        async with asyncio.timeout(5):
            yield scheduler
    finally:
        await scheduler.close()


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until `condition` holds (the dispatcher and callers are all
    on this loop, so a few hundred turns are plenty)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def settle() -> None:
    """Let every caller started so far queue its request."""
    for _ in range(20):
        await asyncio.sleep(0)


# --- batching ---------------------------------------------------------------------------


async def test_grants_waiting_for_a_permit_travel_in_one_call() -> None:
    polar, permits = FakePolar(), Permits()
    async with scheduling(polar, permits) as scheduler:
        orders = [f"o{n}" for n in range(30)]
        callers = [asyncio.create_task(scheduler.ingest([grant(o)])) for o in orders]
        await settle()
        assert polar.calls == [], "nothing is sent before a permit"
        permits.give()
        outcomes = await asyncio.gather(*callers)

    assert polar.ingested() == [[f"grant:{o}" for o in orders]]
    each = IngestOutcome(
        inserted=1, duplicates=0, confirmed=1, stored_by=STORED_BY, batch_events=30
    )
    assert outcomes == [each] * 30


async def test_each_caller_is_told_what_is_certain_about_its_own_events() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.stored = ["grant:old"]
    async with scheduling(polar, permits) as scheduler:
        [alone] = await asyncio.gather(scheduler.ingest([grant("old"), grant("new")]))
        all_duplicates = await asyncio.gather(
            scheduler.ingest([grant("old")]), scheduler.ingest([grant("new")])
        )
        mixed = await asyncio.gather(
            scheduler.ingest([grant("old")]), scheduler.ingest([grant("newer")])
        )

    # Alone in its call, a caller gets Polar's counts as they are.
    assert (alone.inserted, alone.duplicates, alone.confirmed) == (1, 1, 2)
    # Polar counts for the whole call: all stored before, or all new, is certain ...
    assert [(o.inserted, o.duplicates) for o in all_duplicates] == [(0, 1), (0, 1)]
    # ... a mix is not: which order's event was the duplicate is unknown.
    assert [(o.inserted, o.duplicates, o.confirmed) for o in mixed] == [(None, None, 1)] * 2


async def test_a_batch_stops_at_polars_event_limit() -> None:
    polar, permits = FakePolar(), Permits()
    per_order = MAX_BATCH_EVENTS * 2 // 5  # two orders fit in one call, three do not
    async with scheduling(polar, permits) as scheduler:
        callers = [
            asyncio.create_task(scheduler.ingest([grant(f"o{n}-{i}") for i in range(per_order)]))
            for n in range(3)
        ]
        await settle()
        permits.give(2)
        outcomes = await asyncio.gather(*callers)

    assert [len(ids) for ids in polar.ingested()] == [2 * per_order, per_order]
    assert [o.batch_events for o in outcomes] == [2 * per_order, 2 * per_order, per_order]
    assert len(polar.stored) == 3 * per_order


async def test_a_batch_stops_below_polars_body_limit() -> None:
    polar, permits = FakePolar(), Permits()
    bulky = "x" * (5 * 1024 * 1024)  # two such events are over 8 MiB together
    async with scheduling(polar, permits) as scheduler:
        callers = [
            asyncio.create_task(scheduler.ingest([grant(o, note=bulky)])) for o in ("a", "b")
        ]
        await settle()
        permits.give(2)
        await asyncio.gather(*callers)

    assert polar.ingested() == [["grant:a"], ["grant:b"]]


async def test_meter_reads_are_one_call_per_page_of_customers() -> None:
    polar, permits = FakePolar(), Permits()
    customers = [f"cus-{n}" for n in range(150)]
    polar.balances = {c: 10.0 for c in customers[:-1]}  # Polar has no meter for the last
    async with scheduling(polar, permits) as scheduler:
        callers = [asyncio.create_task(scheduler.customer_meter(c, METER)) for c in customers]
        await settle()
        permits.give(2)
        rows = await asyncio.gather(*callers)

    assert polar.calls == [("read", customers[:100]), ("read", customers[100:])]
    assert [r.customer_id for r in rows if r is not None] == customers[:-1]
    assert rows[-1] is None


# --- whose turn -------------------------------------------------------------------------


async def test_grants_go_first_then_other_calls_then_reads() -> None:
    polar, permits = FakePolar(), Permits()
    polar.balances = {"cus-1": 10.0}

    async def other_call() -> str:
        polar.calls.append(("call", []))
        return "answer"

    async with scheduling(polar, permits) as scheduler:
        read = asyncio.create_task(scheduler.customer_meter("cus-1", METER))
        call = asyncio.create_task(scheduler.call(other_call, "reading something"))
        ingest = asyncio.create_task(scheduler.ingest([grant("o1")]))
        await settle()
        permits.give(3)
        row, answer, outcome = await asyncio.gather(read, call, ingest)

    assert polar.kinds() == ["ingest", "call", "read"]
    assert row is not None and row.balance == 10.0
    assert answer == "answer" and outcome.confirmed == 1


async def test_reads_get_every_fourth_permit_while_grants_keep_coming() -> None:
    polar, permits = FakePolar(), Permits()
    polar.balances = {"cus-1": 10.0}
    async with scheduling(polar, permits) as scheduler:
        read = asyncio.create_task(scheduler.customer_meter("cus-1", METER))
        grants = []
        for n in range(5):
            grants.append(asyncio.create_task(scheduler.ingest([grant(f"o{n}")])))
            await settle()
            permits.give()
            await until(lambda sent=n + 1: len(polar.calls) == sent)
        await asyncio.gather(read, *grants)

    assert polar.kinds() == ["ingest", "ingest", "ingest", "read", "ingest"]
    assert read.result() == MeterRow("cus-1", METER, 10.0, 0.0, 10.0, None)


# --- an event Polar rejects -------------------------------------------------------------


async def test_a_rejected_event_fails_only_its_own_order() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.unknown_customers = {"ghost"}
    orders = [("a", "cus-1"), ("b", "cus-2"), ("c", "ghost"), ("d", "cus-3")]
    async with scheduling(polar, permits) as scheduler:
        outcomes = await asyncio.gather(
            *(scheduler.ingest([grant(o, c)]) for o, c in orders), return_exceptions=True
        )

    poisoned = outcomes.pop(2)
    assert isinstance(poisoned, ApplicationError)
    assert poisoned.type == PolarErrorType.GRANT_REJECTED and poisoned.non_retryable
    assert poisoned.message == (
        "Polar rejected ingesting grant events (422): "
        "events.0.customer_id: Customer does not exist."
    )
    assert all(isinstance(o, IngestOutcome) and o.batch_events == 3 for o in outcomes)
    # Refused whole, then the three others at once.
    assert polar.ingested() == [
        ["grant:a", "grant:b", "grant:c", "grant:d"],
        ["grant:a", "grant:b", "grant:d"],
    ]
    assert polar.stored == ["grant:a", "grant:b", "grant:d"]


async def test_a_rejection_naming_no_event_is_halved_down_to_the_culprit() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.unknown_customers = {"ghost"}
    polar.names_rejected_events = False
    orders = [("a", "cus-1"), ("b", "cus-2"), ("c", "cus-3"), ("d", "ghost")]
    async with scheduling(polar, permits) as scheduler:
        outcomes = await asyncio.gather(
            *(scheduler.ingest([grant(o, c)]) for o, c in orders), return_exceptions=True
        )

    poisoned = outcomes.pop()
    assert isinstance(poisoned, ApplicationError)
    assert poisoned.type == PolarErrorType.GRANT_REJECTED and poisoned.non_retryable
    assert all(isinstance(o, IngestOutcome) and o.confirmed == 1 for o in outcomes)
    assert sorted(polar.ingested()) == sorted(
        [
            ["grant:a", "grant:b", "grant:c", "grant:d"],  # refused whole
            ["grant:a", "grant:b"],  # the innocent half
            ["grant:c", "grant:d"],  # refused
            ["grant:c"],
            ["grant:d"],  # refused alone: only its caller fails
        ]
    )
    assert sorted(polar.stored) == ["grant:a", "grant:b", "grant:c"]


# --- Polar's other failures -------------------------------------------------------------


async def test_an_unavailable_polar_fails_every_caller_of_the_batch_for_a_retry() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.failure = PolarServerError(503, "down")
    async with scheduling(polar, permits) as scheduler:
        outcomes = await asyncio.gather(
            scheduler.ingest([grant("a")]), scheduler.ingest([grant("b")]), return_exceptions=True
        )

    assert polar.ingested() == [["grant:a", "grant:b"]]
    for failure in outcomes:
        assert isinstance(failure, ApplicationError)
        assert failure.type == PolarErrorType.UNAVAILABLE and not failure.non_retryable
        assert failure.message == "Polar unavailable while ingesting grant events: it answered 503"


async def test_a_429_slows_the_budget_and_is_retried_after_polars_wait() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.failure = PolarRateLimitError(429, retry_after=3)
    async with scheduling(polar, permits) as scheduler:
        with pytest.raises(ApplicationError) as limited:
            await scheduler.customer_meter("cus-1", METER)

    assert permits.throttled_for == [3.0]
    assert limited.value.type == PolarErrorType.RATE_LIMITED
    assert limited.value.next_retry_delay is not None
    assert limited.value.next_retry_delay.total_seconds() == 3


# --- callers that give up ---------------------------------------------------------------


async def test_a_caller_that_gives_up_before_its_batch_is_sent_is_left_out() -> None:
    polar, permits = FakePolar(), Permits()
    polar.balances = {"cus-1": 10.0}
    async with scheduling(polar, permits) as scheduler:
        gave_up = asyncio.create_task(scheduler.ingest([grant("a")]))
        waits = asyncio.create_task(scheduler.ingest([grant("b")]))
        read_gave_up = asyncio.create_task(scheduler.customer_meter("cus-1", METER))
        await settle()
        gave_up.cancel()
        read_gave_up.cancel()
        permits.give(2)
        outcome = await waits
        await settle()

    assert polar.calls == [("ingest", ["grant:b"])], "no read, and a's grant was not sent"
    assert outcome.batch_events == 1 and outcome.inserted == 1
    assert gave_up.cancelled() and read_gave_up.cancelled()


async def test_a_caller_that_gives_up_after_the_send_leaves_the_others_answered() -> None:
    polar, permits = FakePolar(), Permits(unlimited=True)
    polar.answer_held = asyncio.Event()
    async with scheduling(polar, permits) as scheduler:
        gave_up = asyncio.create_task(scheduler.ingest([grant("a")]))
        waits = asyncio.create_task(scheduler.ingest([grant("b")]))
        await until(lambda: polar.calls != [])
        gave_up.cancel()
        polar.answer_held.set()
        outcome = await waits
        polar.answer_held = None
        later = await scheduler.ingest([grant("c")])  # the scheduler goes on

    assert polar.ingested() == [["grant:a", "grant:b"], ["grant:c"]]
    assert polar.stored == ["grant:a", "grant:b", "grant:c"], "a's grant reached Polar"
    assert (outcome.inserted, outcome.duplicates, outcome.batch_events) == (1, 0, 2)
    assert gave_up.cancelled()
    assert later.batch_events == 1
