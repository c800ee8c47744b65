"""The gateway's scheduler: it waits for a permit from the call budget, then sends what is
waiting; grants merged into batches, meter reads merged by meter, other calls one by one.

Polar is reached only through its sender (`BatchSender`) and the permits through its
budget (`CallBudget`), so both can be replaced in a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from polar.base import PolarRateLimitError

from polar_credits.activities.gateway.errors import (
    event_rejection_detail,
    is_rejection,
    polar_failure,
    rejected,
    rejected_events,
    retry_after,
)
from polar_credits.activities.gateway.results import IngestOutcome, IngestReceipt, MeterRow
from polar_credits.worker_metrics import GatewayMetrics

log = logging.getLogger("polar_credits.gateway")

# Polar refuses bodies over 10 MiB (413); stay well below, with room for JSON framing.
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_EVENTS = 5000
MAX_READ_CUSTOMERS = 100  # Polar's largest page
READ_TURN = 4  # under a stream of grants, one permit in four reads meters

INGEST_ACTION = "ingesting grant events"
READ_ACTION = "reading customer meters"

T = TypeVar("T")


class CallBudget(Protocol):
    """Paces calls to Polar for every worker together (workflows/polar_budget.py)."""

    async def acquire(self) -> None:
        """Return when one call may be sent."""

    async def throttled(self, retry_after_seconds: float) -> None:
        """Polar answered 429: everyone waits, and the pace slows for a while."""


class BatchSender(Protocol):
    """The two calls the scheduler batches. They raise polar-sdk's errors, which the
    scheduler translates (and isolates, for an ingest Polar rejects)."""

    async def ingest(self, events: list[dict[str, Any]]) -> IngestReceipt:
        """Send these events in one ingest call."""

    async def customer_meters(self, meter_id: str, customer_ids: list[str]) -> list[MeterRow]:
        """Read one meter of these customers (at most MAX_READ_CUSTOMERS) in one call."""


@dataclass
class _IngestRequest:
    events: list[dict[str, Any]]
    future: asyncio.Future[IngestOutcome]
    size: int


@dataclass
class _ReadRequest:
    customer_id: str
    meter_id: str
    future: asyncio.Future[MeterRow | None]


class CallScheduler:
    """One per gateway. Start-free: its dispatcher starts on first use, in the event loop of
    the caller. A caller that gives up (its activity cancelled) before its request is sent is
    left out; after, the call completes for the others in its batch."""

    def __init__(
        self, sender: BatchSender, budget: CallBudget, metrics: GatewayMetrics | None = None
    ) -> None:
        self._sender = sender
        self._budget = budget
        self._metrics = metrics or GatewayMetrics()  # no-op unless the worker exports metrics
        self._open: list[_IngestRequest] = []  # may be merged with anything
        self._sealed: deque[list[_IngestRequest]] = deque()  # halves of a rejected batch
        self._reads: dict[str, dict[str, list[_ReadRequest]]] = {}  # meter -> customer -> ...
        self._calls: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._permits = 0

    # -- what the gateway asks for -------------------------------------------------------

    async def ingest(self, events: list[dict[str, Any]]) -> IngestOutcome:
        """Ingest these events (one order's grants) in the next batch; raises the
        ApplicationError of Polar's answer when the call for them fails."""
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        size = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in events)
        self._open.append(_IngestRequest(events, future, size))
        self._wake()
        return await future

    async def customer_meter(self, customer_id: str, meter_id: str) -> MeterRow | None:
        """The customer's meter, read together with every other meter asked for meanwhile."""
        future: asyncio.Future[MeterRow | None] = asyncio.get_running_loop().create_future()
        waiting = self._reads.setdefault(meter_id, {}).setdefault(customer_id, [])
        waiting.append(_ReadRequest(customer_id, meter_id, future))
        self._wake()
        return await future

    async def call(self, send: Callable[[], Awaitable[T]], action: str) -> T:
        """Any other call, paced with the rest but not batched."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def run() -> T:
            try:
                answer = await send()
            except Exception as exc:
                self._metrics.call(action, exc)
                await self._note_rate_limit(exc)
                raise polar_failure(exc, action) from None
            self._metrics.call(action)
            return answer

        self._calls.append((run, future))
        self._wake()
        return await future

    async def close(self) -> None:
        for task in [self._dispatcher, *self._in_flight]:
            if task is not None:
                task.cancel()
        for task in [self._dispatcher, *self._in_flight]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- dispatching ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _has_work(self) -> bool:
        self._drop_abandoned()
        return bool(self._open or self._sealed or self._reads or self._calls)

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            self._wakeup.clear()
            has_work = self._has_work()
            self._report_waiting()
            if not has_work:
                await self._wakeup.wait()
                continue
            asked = time.monotonic()
            try:
                await self._budget.acquire()
            except Exception:  # never let the dispatcher die; callers would wait forever
                log.exception("could not get a permit to call Polar; trying again")
                await asyncio.sleep(1.0)
                continue
            self._metrics.permit(time.monotonic() - asked)
            # Take the batch only now: whatever arrived while waiting for the permit rides
            # along, which is what makes a burst cost a fraction of a call per grant.
            job = self._next_job()
            if job is None:
                continue  # everything waiting was abandoned meanwhile
            task = asyncio.get_running_loop().create_task(job)
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _report_waiting(self) -> None:
        self._metrics.waiting(
            ingest=len(self._open) + sum(len(batch) for batch in self._sealed),
            read=sum(len(customers) for customers in self._reads.values()),
            call=len(self._calls),
        )

    def _drop_abandoned(self) -> None:
        self._open = [r for r in self._open if not r.future.done()]
        for meter_id in list(self._reads):
            customers = self._reads[meter_id]
            for customer_id in list(customers):
                customers[customer_id] = [r for r in customers[customer_id] if not r.future.done()]
                if not customers[customer_id]:
                    del customers[customer_id]
            if not customers:
                del self._reads[meter_id]
        while self._calls and self._calls[0][1].done():
            self._calls.popleft()

    def _next_job(self) -> Coroutine[Any, Any, None] | None:
        """Grants first (a late grant is worse than a late check), then other calls, then
        reads; but while grants keep coming, every READ_TURN-th permit goes to the reads, so
        checks are late, never starved."""
        self._drop_abandoned()
        self._permits += 1
        if self._reads and self._permits % READ_TURN == 0:
            return self._send_read(*self._take_reads())
        if self._sealed:
            return self._send_ingest(self._sealed.popleft())
        if self._open:
            return self._send_ingest(self._take_open())
        if self._calls:
            run, future = self._calls.popleft()
            return self._send_call(run, future)
        if self._reads:
            return self._send_read(*self._take_reads())
        return None

    def _take_open(self) -> list[_IngestRequest]:
        batch: list[_IngestRequest] = []
        events = size = 0
        while self._open:
            request = self._open[0]
            fits = (
                events + len(request.events) <= MAX_BATCH_EVENTS
                and size + request.size <= MAX_BATCH_BYTES
            )
            if batch and not fits:
                break
            batch.append(self._open.pop(0))
            events += len(request.events)
            size += request.size
        return batch

    def _take_reads(self) -> tuple[str, list[str], dict[str, list[_ReadRequest]]]:
        meter_id = next(iter(self._reads))
        customers = self._reads[meter_id]
        taken = list(customers)[:MAX_READ_CUSTOMERS]
        waiting = {customer_id: customers.pop(customer_id) for customer_id in taken}
        if not customers:
            del self._reads[meter_id]
        return meter_id, taken, waiting

    async def _note_rate_limit(self, exc: Exception) -> None:
        if isinstance(exc, PolarRateLimitError):
            with contextlib.suppress(Exception):
                await self._budget.throttled(retry_after(exc).total_seconds())

    # -- the calls -------------------------------------------------------------------------

    async def _send_ingest(self, batch: list[_IngestRequest]) -> None:
        live = [r for r in batch if not r.future.done()]
        if not live:
            return
        events = [e for r in live for e in r.events]
        try:
            receipt = await self._sender.ingest(events)
        except Exception as exc:
            self._metrics.call(INGEST_ACTION, exc)
            if is_rejection(exc):
                self._isolate(live, exc)
                return
            await self._note_rate_limit(exc)
            failure = polar_failure(exc, INGEST_ACTION)
            for request in live:
                _resolve(request.future, error=failure)
            return
        self._metrics.call(INGEST_ACTION)
        log.info(
            "ingested %d event(s) for %d order(s) in one call: inserted=%d duplicates=%d",
            len(events),
            len(live),
            receipt.inserted,
            receipt.duplicates,
        )
        for request in live:
            inserted, duplicates = _attribute(request, live, receipt.inserted, receipt.duplicates)
            _resolve(
                request.future,
                result=IngestOutcome(
                    inserted=inserted,
                    duplicates=duplicates,
                    confirmed=len(request.events),
                    stored_by=receipt.stored_by,
                    batch_events=len(events),
                ),
            )

    def _isolate(self, batch: list[_IngestRequest], exc: Exception) -> None:
        """Polar validates a batch all or nothing: fail only the orders whose events it
        names, and send the others again. When it names none, split the batch in halves
        until the culprit is alone."""
        offending = rejected_events(exc)
        if len(batch) == 1 and not offending:
            _resolve(batch[0].future, error=polar_failure(exc, INGEST_ACTION))
            return
        if offending:
            innocent, start = [], 0
            for request in batch:
                own = {
                    i - start: offending[i]
                    for i in range(start, start + len(request.events))
                    if i in offending
                }
                start += len(request.events)
                if own:
                    detail = event_rejection_detail(own)
                    _resolve(request.future, error=rejected(INGEST_ACTION, detail))
                else:
                    innocent.append(request)
            if innocent:
                self._sealed.appendleft(innocent)
        else:
            half = len(batch) // 2
            self._sealed.appendleft(batch[half:])
            self._sealed.appendleft(batch[:half])
        self._wake()

    async def _send_read(
        self, meter_id: str, customer_ids: list[str], waiting: dict[str, list[_ReadRequest]]
    ) -> None:
        try:
            rows = await self._sender.customer_meters(meter_id, customer_ids)
        except Exception as exc:
            self._metrics.call(READ_ACTION, exc)
            await self._note_rate_limit(exc)
            failure = polar_failure(exc, READ_ACTION)
            for requests in waiting.values():
                for request in requests:
                    _resolve(request.future, error=failure)
            return
        self._metrics.call(READ_ACTION)
        by_customer = {row.customer_id: row for row in rows}
        for customer_id, requests in waiting.items():
            for request in requests:
                _resolve(request.future, result=by_customer.get(customer_id))

    async def _send_call(
        self, run: Callable[[], Awaitable[Any]], future: asyncio.Future[Any]
    ) -> None:
        try:
            result = await run()
        except Exception as exc:
            _resolve(future, error=exc)
        else:
            _resolve(future, result=result)


def _attribute(
    request: _IngestRequest, batch: list[_IngestRequest], inserted: int, duplicates: int
) -> tuple[int | None, int | None]:
    """Polar counts for the whole call; say what is certain about this order's events."""
    own = len(request.events)
    if len(batch) == 1:
        return inserted, duplicates
    if duplicates == 0:
        return own, 0
    if inserted == 0:
        return 0, own
    return None, None


def _resolve(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    """Hand a caller its answer, unless it gave up waiting (its activity was cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
