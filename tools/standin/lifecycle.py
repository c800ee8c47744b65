"""HTTP surface of time and billing: the clock, subscriptions, renewals due, refunds.

Admin routes under /admin (the CLI drives them), Polar's /v1/subscriptions for the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from tools.standin import payloads
from tools.standin.billing import Billing, Impossible, Outcome
from tools.standin.clock import Clock, iso, parse_iso
from tools.standin.store import NotFound

log = logging.getLogger("polar_standin")
router = APIRouter()
ManyQ = Annotated[list[str] | None, Query()]
DUE_POLL_SECONDS = 1.0
SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
)


def _fail(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _billing(request: Request) -> Billing:
    return request.app.state.billing


async def _emit(app: FastAPI, out: Outcome) -> dict[str, Any]:
    """Delivers an operation's events in order and answers with what happened."""
    results = await app.state.dispatcher.emit_many(out.events)
    answer: dict[str, Any] = {"subscription": out.subscription}
    if out.order is not None:
        answer["order"] = out.order
    answer["events"] = [event_type for event_type, _ in out.events]
    answer["deliveries"] = [r for r in results if r is not None]
    return answer


async def _run(request: Request, operation: Callable[[], Outcome], status: int = 200) -> Response:
    # One lifecycle change at a time, renewals by the clock included: events stay in order.
    async with request.app.state.lifecycle_lock:
        try:
            out = operation()
        except NotFound as e:
            return _fail(404, "ResourceNotFound", str(e))
        except Impossible as e:
            return _fail(409, "Conflict", str(e))
        except ValueError as e:
            return _fail(400, "BadRequest", str(e))
        return JSONResponse(await _emit(request.app, out), status_code=status)


async def run_due(app: FastAPI, until: float | None = None) -> list[dict[str, Any]]:
    """Renews every active subscription due by `until` (default now), one cycle at a time,
    earliest first; a manual clock steps to each cycle's time, then to `until`.
    The caller holds the lifecycle lock."""
    clock: Clock = app.state.clock
    target = clock.now() if until is None else until
    renewals = []
    while (sub := app.state.store.next_due_subscription(target)) is not None:
        renewals.append(await _emit(app, app.state.billing.renew(sub["id"])))
    if clock.manual and clock.now() < target:
        clock.set(target)
    return renewals


def _clock_json(request: Request, renewals: list[dict[str, Any]] | None = None) -> dict:
    clock: Clock = request.app.state.clock
    answer: dict[str, Any] = {"now": iso(clock.now()), "mode": clock.mode}
    if renewals is not None:
        answer["renewals"] = renewals
    return answer


# -- clock ---------------------------------------------------------------------------------
@router.get("/admin/clock")
async def clock_get(request: Request) -> dict:
    return _clock_json(request)


@router.post("/admin/clock/advance")
async def clock_advance(request: Request) -> Response:
    body = await _body(request)
    try:
        seconds = float(body.get("seconds", 0)) + 86400 * float(body.get("days", 0))
    except (TypeError, ValueError):
        return _fail(400, "BadRequest", "seconds and days must be numbers")
    if seconds < 0:
        return _fail(400, "BadRequest", "the clock only moves forward; use /admin/clock/set")
    clock: Clock = request.app.state.clock
    async with request.app.state.lifecycle_lock:
        if clock.manual:
            renewals = await run_due(request.app, clock.now() + seconds)
        else:
            clock.advance(seconds)
            renewals = await run_due(request.app)
    return JSONResponse(_clock_json(request, renewals))


@router.post("/admin/clock/set")
async def clock_set(request: Request) -> Response:
    body = await _body(request)
    clock: Clock = request.app.state.clock
    if not clock.manual:
        return _fail(409, "Conflict", "the clock is real: start with --clock manual to set it")
    try:
        at = parse_iso(str(body.get("at")))
    except ValueError:
        return _fail(400, "BadRequest", "at must be an ISO 8601 time")
    async with request.app.state.lifecycle_lock:
        if at >= clock.now():
            renewals = await run_due(request.app, at)
        else:
            clock.set(at)  # backwards: nothing falls due
            renewals = []
    return JSONResponse(_clock_json(request, renewals))


# -- subscriptions ------------------------------------------------------------------------
@router.post("/admin/subscriptions")
async def subscriptions_create(request: Request) -> Response:
    body = await _body(request)
    seats = body.get("seats")
    metadata = body.get("metadata") or {}
    if (seats is not None and not isinstance(seats, int)) or not isinstance(metadata, dict):
        return _fail(400, "BadRequest", "seats must be an integer, metadata an object")
    return await _run(
        request,
        lambda: _billing(request).create(
            str(body.get("customer_id")), str(body.get("product_id")), seats, metadata
        ),
        status=201,
    )


_ACTIONS: dict[str, Callable[[Billing, str], Outcome]] = {
    "renew": lambda b, i: b.renew(i),
    "fail-renewal": lambda b, i: b.renew(i, paid=False),
    "retry-payment": Billing.retry_payment,
    "cancel": Billing.cancel,
    "uncancel": Billing.uncancel,
    "revoke": Billing.revoke,
    "pause": Billing.pause,
    "resume": Billing.resume,
}


@router.post("/admin/subscriptions/{subscription_id}/update")
async def subscriptions_update(request: Request, subscription_id: str) -> Response:
    """A product change and/or a new seat count: body {"product_id"?: str, "seats"?: int}."""
    body = await _body(request)
    product_id, seats = body.get("product_id"), body.get("seats")
    if product_id is not None and not isinstance(product_id, str):
        return _fail(400, "BadRequest", "product_id must be a string")
    if seats is not None and (isinstance(seats, bool) or not isinstance(seats, int) or seats < 1):
        return _fail(400, "BadRequest", "seats must be a whole number of at least 1")
    if product_id is None and seats is None:
        return _fail(400, "BadRequest", "give product_id, seats or both")
    return await _run(request, lambda: _billing(request).update(subscription_id, product_id, seats))


@router.post("/admin/subscriptions/{subscription_id}/{action}")
async def subscriptions_action(request: Request, subscription_id: str, action: str) -> Response:
    do = _ACTIONS.get(action)
    if do is None:
        return _fail(
            404, "ResourceNotFound", f"no action {action!r}; one of {sorted([*_ACTIONS, 'update'])}"
        )
    return await _run(request, lambda: do(_billing(request), subscription_id))


@router.post("/admin/orders/{order_id}/refund")
async def orders_refund(request: Request, order_id: str) -> Response:
    amount = (await _body(request)).get("amount")
    if amount is not None and not isinstance(amount, int):
        return _fail(400, "BadRequest", "amount must be an integer number of cents")
    return await _run(request, lambda: _billing(request).refund(order_id, amount))


@router.get("/v1/subscriptions/")
async def subscriptions_list(
    request: Request,
    customer_id: ManyQ = None,
    product_id: ManyQ = None,
    external_customer_id: ManyQ = None,
    active: bool | None = None,
    status: ManyQ = None,
    cancel_at_period_end: bool | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    sorting: ManyQ = None,
) -> dict:
    if active is not None:
        # Polar's active statuses are trialing and active; inactive is everything else.
        live = {"trialing", "active"}
        chosen = set(status or SUBSCRIPTION_STATUSES)
        status = sorted(chosen & live if active else chosen - live)
        if not status:
            return payloads.page([], 0, limit)
    billing = _billing(request)
    rows, total = request.app.state.store.list_subscriptions(
        page=page,
        limit=limit,
        customer_id=customer_id,
        product_id=product_id,
        status=status,
        external_customer_id=external_customer_id,
        cancel_at_period_end=cancel_at_period_end,
        descending=not sorting or sorting[0] != "started_at",
    )
    return payloads.page([billing.subscription_json(r) for r in rows], total, limit)


@router.get("/v1/subscriptions/{subscription_id}")
async def subscriptions_get(request: Request, subscription_id: str) -> Response:
    row = request.app.state.store.get_subscription(subscription_id)
    if row is None:
        return _fail(404, "ResourceNotFound", "Not found")
    return JSONResponse(_billing(request).subscription_json(row))


# -- wiring -------------------------------------------------------------------------------
async def _renew_by_real_clock(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(DUE_POLL_SECONDS)
        try:
            async with app.state.lifecycle_lock:
                await run_due(app)
        except Exception:  # keep renewing after one bad cycle; the log says what broke
            log.exception("renewing due subscriptions failed")


def install(app: FastAPI) -> None:
    """Adds the routes; with a real clock, renews due subscriptions every second."""
    app.state.billing = Billing(app.state.store, app.state.clock)
    app.state.lifecycle_lock = asyncio.Lock()
    app.include_router(router)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            task = None
            if not app.state.clock.manual:
                task = asyncio.create_task(_renew_by_real_clock(app))
            try:
                yield state
            finally:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.router.lifespan_context = lifespan
