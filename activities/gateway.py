"""The one gateway to Polar: every call the worker makes goes through here.

It batches (the grants of many orders in one ingest call, the meters of many customers in
one read), paces every call under the service's share of the organization's rate limit
(shared by all workers through `CallBudget`), isolates an event Polar rejects from the rest
of its batch, and translates Polar's errors into Temporal's retry semantics.

Activities ask it for what they need and wait for their own part of the answer; no activity
calls polar-sdk directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import httpx
from polar.base import (
    PolarClientError,
    PolarDeserializationError,
    PolarNetworkError,
    PolarRateLimitError,
    PolarServerError,
    parse_response_json,
)
from polar.v2026_10 import PolarAsync
from polar.v2026_10.errors import HTTPValidationError
from temporalio.exceptions import ApplicationError

from polar_credits.models.grants import PolarErrorType
from polar_credits.polar_ids import path_segment
from polar_credits.worker_metrics import GatewayMetrics

log = logging.getLogger("polar_credits.gateway")

# Polar refuses bodies over 10 MiB (413); stay well below, with room for JSON framing.
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_EVENTS = 5000
MAX_READ_CUSTOMERS = 100  # Polar's largest page
READ_TURN = 4  # under a stream of grants, one permit in four reads meters
# Polar sends no retry-after on some 429s; a minute is one full window of its rate limit.
DEFAULT_RATE_LIMIT_WAIT = timedelta(seconds=60)
_MAX_ERROR_TEXT = 500

T = TypeVar("T")


class CallBudget(Protocol):
    """Paces calls to Polar for every worker together (workflows/polar_budget.py)."""

    async def acquire(self) -> None:
        """Return when one call may be sent."""

    async def throttled(self, retry_after_seconds: float) -> None:
        """Polar answered 429: everyone waits, and the pace slows for a while."""


# --- Polar's errors in Temporal's terms -------------------------------------------------


class PolarCallError(ApplicationError):
    """A failed call to Polar, as Temporal sees it: `status_code` is Polar's HTTP status
    (None when there was no answer). Its message never quotes Polar's answer: a response body
    can hold a customer's email or name, and the message reaches logs and histories."""

    def __init__(self, message: str, *, status_code: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code


def polar_failure(exc: Exception, action: str) -> ApplicationError:
    """Map a polar-sdk error to the ApplicationError that gives it the right retry behaviour.
    Only the status and a reason of the service's own words go in (Polar's validation
    errors keep their place and message); raise it `from None`, so no traceback quotes the
    SDK's error, whose text holds the whole response body."""
    status_code = getattr(exc, "status_code", None)
    if isinstance(exc, PolarRateLimitError):
        wait = retry_after(exc)
        return PolarCallError(
            f"Polar rate limit hit while {action}; retrying after {wait.total_seconds():.0f}s",
            status_code=429,
            type=PolarErrorType.RATE_LIMITED,
            next_retry_delay=wait,
        )
    if isinstance(exc, HTTPValidationError):
        return rejected(action, _validation_detail(exc))
    if isinstance(exc, PolarClientError) and exc.status_code in (401, 403):
        # Retry: the grant must survive until an operator fixes the token.
        return PolarCallError(
            f"Polar refused the access token while {action} ({exc.status_code}); "
            "check POLAR_ACCESS_TOKEN and its scopes (events:write, customer_meters:read)",
            status_code=exc.status_code,
            type=PolarErrorType.AUTH,
        )
    if isinstance(exc, PolarClientError) and exc.status_code == 422:
        return rejected(action, "Polar's answer named no field")
    if isinstance(exc, PolarServerError):
        return PolarCallError(
            f"Polar unavailable while {action}: it answered {exc.status_code}",
            status_code=status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarNetworkError):
        # httpx's words about the connection (a timeout, a refused connection): no answer.
        return PolarCallError(
            f"Polar unavailable while {action}: {_truncate(exc.message)}",
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarDeserializationError) and _is_client_error(_polar_status.get()):
        status_code = _polar_status.get()
        return PolarCallError(
            f"Polar answered {status_code} while {action}",
            status_code=status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarDeserializationError):
        return PolarCallError(
            f"Polar unavailable while {action}: its answer was not what its API documents",
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarClientError):
        return PolarCallError(
            f"Polar answered {exc.status_code} while {action}",
            status_code=exc.status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    return PolarCallError(f"Unexpected error while {action}: {type(exc).__name__}")


def _is_client_error(status_code: int | None) -> bool:
    return status_code is not None and 400 <= status_code < 500 and status_code != 429


def rejected(action: str, detail: str) -> ApplicationError:
    return PolarCallError(
        f"Polar rejected {action} (422): {detail}",
        status_code=422,
        type=PolarErrorType.GRANT_REJECTED,
        non_retryable=True,
    )


def retry_after(exc: PolarRateLimitError) -> timedelta:
    if exc.retry_after is None:
        return DEFAULT_RATE_LIMIT_WAIT
    return timedelta(seconds=exc.retry_after)


def _validation_items(exc: Exception) -> list[Any]:
    error = getattr(exc, "error", None)
    if isinstance(error, dict):
        return list(error.get("detail") or [])
    return list(getattr(error, "detail", None) or [])


def _item_field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _describe(item: Any, loc: list[Any] | None = None) -> str:
    """An item of Polar's 422 about an event the service built (no personal data in it):
    the place and Polar's message. An item may also echo the input; it is left out."""
    loc = loc if loc is not None else list(_item_field(item, "loc") or [])
    msg = _item_field(item, "msg") or "invalid"
    where = ".".join(str(p) for p in loc)
    return f"{where}: {msg}" if where else str(msg)


def _validation_detail(exc: Exception) -> str:
    """Any other 422: the places and error types only. Polar's message may quote what it
    holds (a customer's email, say), and this text reaches logs and histories."""
    parts = [
        f"{'.'.join(str(p) for p in _item_field(item, 'loc') or []) or 'body'}: "
        f"{_item_field(item, 'type') or 'invalid'}"
        for item in _validation_items(exc)
    ]
    return _truncate("; ".join(parts) or "Polar's answer named no field")


def _offending_events(exc: Exception) -> dict[int, list[Any]]:
    """Polar's 422 names each bad event by its place in the batch: {index: [detail items]}."""
    found: dict[int, list[Any]] = {}
    for item in _validation_items(exc):
        loc = list(_item_field(item, "loc") or [])
        if len(loc) >= 3 and loc[:2] == ["body", "events"] and isinstance(loc[2], int):
            found.setdefault(loc[2], []).append(item)
    return found


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"


# --- Polar's clock ------------------------------------------------------------------------

_polar_date: contextvars.ContextVar[str | None] = contextvars.ContextVar("polar_date", default=None)
# The status of the last answer: polar-sdk says an error body it cannot read is a
# deserialization error, without the status (a 404 from a path Polar does not route).
_polar_status: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "polar_status", default=None
)


async def _remember_date(response: httpx.Response) -> None:
    # httpx awaits response hooks in the task that sent the request, so the caller reads
    # its own response's Date (and status) right after the call returns.
    _polar_date.set(response.headers.get("date"))
    _polar_status.set(response.status_code)


def watch_polar_clock(polar: PolarAsync) -> None:
    """Read the `Date` of Polar's answers, so verification compares Polar's times only."""
    # polar-sdk 1.0.2 keeps its httpx client here; without it, the local clock stands in.
    http = getattr(getattr(polar, "_client", None), "_client", None)
    if isinstance(http, httpx.AsyncClient) and _remember_date not in http.event_hooks.get(
        "response", []
    ):
        http.event_hooks = {
            **http.event_hooks,
            "response": [*http.event_hooks.get("response", []), _remember_date],
        }


def polar_time_after_call() -> datetime:
    """A time on Polar's clock no earlier than anything the last call stored.

    HTTP dates have whole seconds and are truncated, so the next second is the first that
    is surely after the call was handled.
    """
    date = _polar_date.get()
    with contextlib.suppress(TypeError, ValueError, IndexError):
        if date:
            return parsedate_to_datetime(date).astimezone(UTC) + timedelta(seconds=1)
    return datetime.now(UTC) + timedelta(seconds=1)


# --- What callers get back -----------------------------------------------------------------


@dataclass
class IngestOutcome:
    """One caller's part of an ingest call (see models.IngestResult)."""

    inserted: int | None
    duplicates: int | None
    confirmed: int
    stored_by: datetime
    batch_events: int


@dataclass
class MeterRow:
    """A customer meter as Polar shows it: numbers only, never the customer's details."""

    customer_id: str
    meter_id: str
    balance: float
    consumed_units: float
    credited_units: float
    modified_at: datetime | None


@dataclass
class OrderStamp:
    """An order's id and creation time: all the first-order condition reads of it."""

    id: str
    created_at: datetime


# --- The gateway ---------------------------------------------------------------------------


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


class PolarGateway:
    """One per worker process; activities share it. Start-free: its dispatcher starts on
    first use, in the event loop of the caller."""

    def __init__(
        self, polar: PolarAsync, budget: CallBudget, metrics: GatewayMetrics | None = None
    ) -> None:
        self._polar = polar
        self._budget = budget
        self._metrics = metrics or GatewayMetrics()  # no-op unless the worker exports metrics
        watch_polar_clock(polar)
        self._open: list[_IngestRequest] = []  # may be merged with anything
        self._sealed: deque[list[_IngestRequest]] = deque()  # halves of a rejected batch
        self._reads: dict[str, dict[str, list[_ReadRequest]]] = {}  # meter -> customer -> ...
        self._calls: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._permits = 0

    # -- what activities ask for ---------------------------------------------------------

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

    async def order_events(self, customer_id: str, event_name: str, order_id: str) -> list[Any]:
        """The customer's events of one order (the first release's check), paced, unbatched."""
        page = await self._call(
            lambda: self._polar.events.list(
                customer_id=customer_id,
                name=event_name,
                metadata={"order_id": order_id},
                limit=100,
            ),
            "reading the grant's events",
        )
        return list(page.items)

    async def paid_orders(
        self, customer_id: str, product_id: str, *, page: int = 1, limit: int = 10
    ) -> list[OrderStamp]:
        """The customer's paid (or since refunded) orders of one product, oldest first: ids
        and times only (the first-order condition), paced, unbatched."""
        answer = await self._call(
            lambda: self._polar.orders.list(
                customer_id=customer_id,
                product_id=product_id,
                status=["paid", "partially_refunded", "refunded"],
                sorting=["created_at"],
                page=page,
                limit=limit,
            ),
            "listing the customer's paid orders",
        )
        return [OrderStamp(order.id, _moment(order.created_at)) for order in answer.items]

    async def order(self, order_id: str) -> dict[str, Any]:
        """One order as Polar's JSON (it holds the customer's details: callers keep only the
        facts they need), paced, unbatched."""
        # Encoded: polar-sdk puts a path parameter into the URL as it is.
        segment = path_segment(order_id)
        answer = await self._call(lambda: self._polar.orders.get(segment), "reading the order")
        return dataclasses.asdict(answer)  # polar-sdk's models are dataclasses

    async def active_subscriptions(
        self, product_id: str | None, page: int, limit: int = MAX_READ_CUSTOMERS
    ) -> dict[str, Any]:
        """One page of active subscriptions (of one product, or all), oldest first, as
        Polar's JSON (a backfill's listing), paced, unbatched."""
        query: dict[str, Any] = {"active": True, "page": page, "limit": limit}
        query["sorting"] = ["started_at"]
        if product_id is not None:
            query["product_id"] = product_id
        return await self._call(
            lambda: self._list_json("/v1/subscriptions/", query), "listing active subscriptions"
        )

    async def subscriptions(
        self,
        statuses: list[str],
        product_ids: list[str] | None,
        page: int,
        limit: int = MAX_READ_CUSTOMERS,
    ) -> dict[str, Any]:
        """One page of the subscriptions in these statuses (of these products, or all), oldest
        first, as Polar's JSON (a recovery's listing), paced, unbatched."""
        query: dict[str, Any] = {"status": statuses, "page": page, "limit": limit}
        query["sorting"] = ["started_at"]
        if product_ids is not None:
            query["product_id"] = product_ids
        return await self._call(
            lambda: self._list_json("/v1/subscriptions/", query), "listing subscriptions"
        )

    async def paid_orders_since(
        self, created_after: str, page: int, limit: int = MAX_READ_CUSTOMERS
    ) -> dict[str, Any]:
        """One page of the organization's paid orders created after `created_after`, oldest
        first, as Polar's JSON (reconciliation), paced, unbatched."""
        query: dict[str, Any] = {"status": "paid", "created_after": created_after}
        query |= {"page": page, "limit": limit, "sorting": ["created_at"]}
        return await self._call(
            lambda: self._list_json("/v1/orders/", query), "listing paid orders"
        )

    async def _list_json(self, url: str, query: dict[str, Any]) -> dict[str, Any]:
        # polar-sdk's own client, but read as JSON: its typed models refuse a value Polar adds
        # later (a new billing reason), which would stop a listing for good; callers read
        # each item leniently instead.
        client = self._polar.orders.client
        request = client.build_request(method="GET", url=url, query_params=query)
        response = await client.send_request(request)
        return parse_response_json(response, None, {422: HTTPValidationError})

    async def _call(self, send: Callable[[], Awaitable[T]], action: str) -> T:
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

    def _next_job(self) -> Awaitable[None] | None:
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
            response = await self._polar.events.ingest(events=events)
        except Exception as exc:
            self._metrics.call("ingesting grant events", exc)
            if _is_rejection(exc):
                self._isolate(live, exc)
                return
            await self._note_rate_limit(exc)
            failure = polar_failure(exc, "ingesting grant events")
            for request in live:
                _settle(request.future, error=failure)
            return
        stored_by = polar_time_after_call()
        self._metrics.call("ingesting grant events")
        log.info(
            "ingested %d event(s) for %d order(s) in one call: inserted=%d duplicates=%d",
            len(events),
            len(live),
            response.inserted,
            response.duplicates,
        )
        for request in live:
            inserted, duplicates = _attribute(request, live, response.inserted, response.duplicates)
            _settle(
                request.future,
                result=IngestOutcome(
                    inserted=inserted,
                    duplicates=duplicates,
                    confirmed=len(request.events),
                    stored_by=stored_by,
                    batch_events=len(events),
                ),
            )

    def _isolate(self, batch: list[_IngestRequest], exc: Exception) -> None:
        """Polar validates a batch all or nothing: fail only the orders whose events it
        names, and send the others again. When it names none, split the batch in halves
        until the culprit is alone."""
        offending = _offending_events(exc)
        if len(batch) == 1 and not offending:
            _settle(batch[0].future, error=polar_failure(exc, "ingesting grant events"))
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
                    detail = "; ".join(
                        _describe(item, ["events", index, *list(_item_field(item, "loc"))[3:]])
                        for index, items in sorted(own.items())
                        for item in items
                    )
                    _settle(request.future, error=rejected("ingesting grant events", detail))
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
            page = await self._polar.customer_meters.list(
                customer_id=customer_ids, meter_id=meter_id, limit=MAX_READ_CUSTOMERS
            )
        except Exception as exc:
            self._metrics.call("reading customer meters", exc)
            await self._note_rate_limit(exc)
            failure = polar_failure(exc, "reading customer meters")
            for requests in waiting.values():
                for request in requests:
                    _settle(request.future, error=failure)
            return
        self._metrics.call("reading customer meters")
        rows = {item.customer_id: _meter_row(item) for item in page.items}
        for customer_id, requests in waiting.items():
            for request in requests:
                _settle(request.future, result=rows.get(customer_id))

    async def _send_call(
        self, run: Callable[[], Awaitable[Any]], future: asyncio.Future[Any]
    ) -> None:
        try:
            result = await run()
        except Exception as exc:
            _settle(future, error=exc)
        else:
            _settle(future, result=result)


def _moment(value: datetime | str) -> datetime:
    """polar-sdk gives some timestamps as ISO strings; always a UTC-aware datetime."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _is_rejection(exc: Exception) -> bool:
    return isinstance(exc, HTTPValidationError) or (
        isinstance(exc, PolarClientError)
        and not isinstance(exc, PolarRateLimitError)
        and exc.status_code == 422
    )


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


def _meter_row(item: Any) -> MeterRow:
    return MeterRow(
        customer_id=item.customer_id,
        meter_id=item.meter_id,
        balance=float(item.balance),
        consumed_units=float(item.consumed_units),
        credited_units=float(item.credited_units),
        modified_at=datetime.fromisoformat(item.modified_at) if item.modified_at else None,
    )


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # the caller gave up (cancelled activity)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
