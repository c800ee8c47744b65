"""Polar-like webhook delivery: stored events, background retries on Polar's schedule, endpoint
disabling, duplicate/reordered delivery on request, and the /v1/webhooks and admin routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from tools.standin import endpoints, payloads
from tools.standin.clock import iso, now, wall
from tools.standin.deliverylog import ENDPOINT_ID, DeliveryLog
from tools.standin.seed import ORGANIZATION_ID
from tools.standin.webhooks import Dispatcher, deliver, new_webhook_id

log = logging.getLogger("polar_standin.delivery")

# Polar: 10 attempts in all, exponential backoff from ~2 s, capped at 20 min, jittered.
MAX_ATTEMPTS = 10
FIRST_WAIT_SECONDS = 2.0
MAX_WAIT_SECONDS = 1200.0
API_VERSION = "2026-10"


def retry_wait(failed_attempt: int, rng: random.Random | None = None) -> float:
    """Unscaled seconds to wait after failed attempt n (1-based): 2^n s times a jitter in [1, 2).

    The nine waits add up to 1022 s before jitter, so the whole span is about 17-34 min."""
    jitter = (rng or random).uniform(1.0, 2.0)
    return min(FIRST_WAIT_SECONDS * 2 ** (failed_attempt - 1) * jitter, MAX_WAIT_SECONDS)


@dataclass
class WebhookMode:
    duplicate: int = 0  # extra copies of every delivery, same webhook-id
    reorder: bool = False  # the events of one emit_many are delivered last first
    delay_ms: int = 0  # wait before every delivery


def _disabled(event_type: str) -> dict[str, Any]:
    return {
        "status": "endpoint_disabled",
        "webhook_id": None,
        "type": event_type,
        "status_code": None,
        "body": None,
        "event_id": None,
        "attempt": 0,
    }


class DeliveryEngine:
    def __init__(
        self,
        log_: DeliveryLog,
        dispatcher: Dispatcher,
        *,
        timeout: float = 10.0,
        retry_scale: float = 1.0,
    ) -> None:
        self.log = log_
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.retry_scale = retry_scale
        self.mode = WebhookMode()
        self._tasks: set[asyncio.Task] = set()
        # One client for all deliveries: a new one per attempt costs a TLS context each time.
        self._client: httpx.AsyncClient | None = None

    # -- emitting ----------------------------------------------------------------------
    def _create(
        self,
        event_type: str,
        data: dict[str, Any],
        webhook_id: str | None,
        offset: int,
        sent_at: float | None,
    ) -> dict[str, Any]:
        payload = payloads.webhook_body(event_type, data, now() if sent_at is None else sent_at)
        return self.log.create_event(webhook_id or new_webhook_id(), event_type, payload, offset)

    async def emit(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        webhook_id: str | None = None,
        timestamp_offset: int = 0,
        sent_at: float | None = None,
    ) -> dict[str, Any] | None:
        if not self.dispatcher.target.configured:
            return None
        if not self.log.endpoint()["enabled"]:
            return _disabled(event_type)  # no event is created: lost, as with Polar
        event = self._create(event_type, data, webhook_id, timestamp_offset, sent_at)
        return await self._attempt(event, 1)

    async def emit_many(
        self, events: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        if not self.dispatcher.target.configured:
            return [None] * len(events)
        # Events are created in order (their timestamps too), then delivered in the mode's order.
        created: list[dict[str, Any] | None] = []
        results: list[dict[str, Any] | None] = [None] * len(events)
        for i, (event_type, data) in enumerate(events):
            if self.log.endpoint()["enabled"]:
                created.append(self._create(event_type, data, None, 0, None))
            else:
                created.append(None)
                results[i] = _disabled(event_type)
        order = range(len(events))
        for i in reversed(order) if self.mode.reorder else order:
            if created[i] is not None:
                results[i] = await self._attempt(created[i], 1)
        return results

    # -- attempts and retries ----------------------------------------------------------
    async def _send(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.mode.delay_ms:
            await asyncio.sleep(self.mode.delay_ms / 1000)
        # Signed afresh each attempt, against the receiver's real clock.
        timestamp = int(wall()) + event["timestamp_offset"]
        return await deliver(
            self.dispatcher.target,
            event["webhook_id"],
            event["type"],
            event["payload"],
            timestamp,
            timeout_seconds=self.timeout,
            client=self._http(),
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def _attempt(
        self, event: dict[str, Any], attempt: int, *, retry: bool = True
    ) -> dict[str, Any]:
        result = await self._send(event)
        ok = self.log.record_delivery(event["id"], attempt, result, outcome=True)
        for _ in range(self.mode.duplicate):
            copy = await self._send(event)
            self.log.record_delivery(event["id"], attempt, copy, outcome=False)
        if not ok and not self.log.disable_if_failing() and retry and attempt < MAX_ATTEMPTS:
            wait = retry_wait(attempt) * self.retry_scale
            self.log.set_retry(event["id"], time.time() + wait)
            self._spawn(self._retry_later(event["id"], wait))
        return {**result, "event_id": event["id"], "attempt": attempt}

    async def _retry_later(self, event_id: str, wait: float) -> None:
        await asyncio.sleep(wait)
        event = self.log.get_event(event_id)
        # Gone stale: succeeded meanwhile, or retries dropped because the endpoint was disabled.
        if event is None or event["retry_at"] is None or event["succeeded"]:
            return
        if not self.dispatcher.target.configured or not self.log.endpoint()["enabled"]:
            self.log.set_retry(event_id, None)
            return
        await self._attempt(event, event["attempts"] + 1)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference, or the loop may drop it mid-flight
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook retry failed", exc_info=task.exception())

    def resume(self) -> int:
        """Reschedules the retries that were pending when the stand-in stopped."""
        pending = self.log.pending_retries()
        for event in pending:
            self._spawn(self._retry_later(event["id"], max(0.0, event["retry_at"] - time.time())))
        return len(pending)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # retry_at stays stored: resumed on the next start
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def redeliver(self, event: dict[str, Any]) -> None:
        """One more attempt now, same webhook-id, as its own delivery (no new retry series)."""
        await self._attempt(event, event["attempts"] + 1, retry=False)

    def redeliver_later(self, event: dict[str, Any]) -> None:
        self._spawn(self.redeliver(event))

    def target_json(self) -> dict[str, Any]:
        endpoint = self.log.endpoint()
        return {
            "id": ENDPOINT_ID,
            "url": self.dispatcher.target.url,
            "configured": self.dispatcher.target.configured,
            "enabled": endpoint["enabled"],
            "consecutive_failed_events": self.log.consecutive_failed_events(),
        }


# -- JSON shapes -------------------------------------------------------------------------
def event_json(event: dict[str, Any]) -> dict[str, Any]:
    succeeded = event["succeeded"]
    return {
        "created_at": iso(event["created_at"]),
        "modified_at": iso(event["modified_at"]) if event["modified_at"] else None,
        "id": event["id"],
        "last_http_code": event["last_http_code"],
        "succeeded": None if succeeded is None else bool(succeeded),
        "skipped": False,
        "api_version": API_VERSION,
        "payload": payloads_json(event["payload"]),
        "type": event["type"],
        "is_archived": False,
    }


def payloads_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def delivery_json(row: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    return {
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "id": row["id"],
        "succeeded": bool(row["succeeded"]),
        "http_code": row["http_code"],
        "response": row["response"],
        "webhook_event": event_json(event),
    }


def endpoint_json(engine: DeliveryEngine) -> dict[str, Any]:
    endpoint = engine.log.endpoint()
    target = engine.dispatcher.target
    return {
        "created_at": iso(endpoint["created_at"]),
        "modified_at": iso(endpoint["modified_at"]) if endpoint["modified_at"] else None,
        "id": ENDPOINT_ID,
        "url": target.url or "",
        "name": "stand-in target",
        "api_version": API_VERSION,
        "format": "raw",
        "secret": target.secret or "",
        "organization_id": ORGANIZATION_ID,
        "events": [],
        "enabled": endpoint["enabled"],
        # Polar's original scheme: HMAC keyed with the UTF-8 bytes of the whole secret.
        "uses_standard_webhook_signature": False,
    }


# -- routes ------------------------------------------------------------------------------
api = APIRouter(prefix="/v1/webhooks")
admin = APIRouter(prefix="/admin")
ManyQ = Annotated[list[str] | None, Query()]


def _engine(request: Request) -> DeliveryEngine:
    return request.app.state.delivery


@api.get("/deliveries")
async def deliveries_list(
    request: Request,
    endpoint_id: ManyQ = None,
    start_timestamp: str | None = None,
    end_timestamp: str | None = None,
    succeeded: bool | None = None,
    query: str | None = None,
    http_code_class: str | None = Query(None, pattern="^[2-5]xx$"),
    event_type: ManyQ = None,
    page: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    if endpoint_id and ENDPOINT_ID not in endpoint_id:
        return payloads.page([], 0, limit)
    rows, total = _engine(request).log.list_deliveries(
        page=page,
        limit=limit,
        succeeded=succeeded,
        start=start_timestamp,
        end=end_timestamp,
        http_code_class=http_code_class,
        event_types=event_type,
        query=query,
    )
    return payloads.page([delivery_json(d, e) for d, e in rows], total, limit)


@api.post("/events/{event_id}/redeliver")
async def events_redeliver(request: Request, event_id: str) -> Response:
    engine = _engine(request)
    event = engine.log.get_event(event_id)
    if event is None:
        return JSONResponse({"error": "ResourceNotFound", "detail": "Not found"}, status_code=404)
    if not engine.dispatcher.target.configured:
        return JSONResponse({"error": "BadRequest", "detail": "no webhook target"}, status_code=409)
    engine.redeliver_later(event)  # Polar schedules it: the answer does not wait for it
    return JSONResponse({}, status_code=202)


@api.get("/endpoints")
@api.get("/endpoints/")
async def endpoints_list(
    request: Request,
    page: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    """The configured target first (as ever), then the endpoints registered through the API."""
    engine = _engine(request)
    items = [endpoint_json(engine)] if engine.dispatcher.target.url else []
    items += [endpoints.endpoint_json(row) for row in request.app.state.endpoints.list()]
    return payloads.page(items[(page - 1) * limit : page * limit], len(items), limit)


@api.get("/endpoints/{endpoint_id}")
async def endpoints_get(request: Request, endpoint_id: str) -> Response:
    engine = _engine(request)
    if endpoint_id == ENDPOINT_ID and engine.dispatcher.target.url:
        return JSONResponse(endpoint_json(engine))
    registered = request.app.state.endpoints.get(endpoint_id)
    if registered is None:
        return JSONResponse({"error": "ResourceNotFound", "detail": "Not found"}, status_code=404)
    return JSONResponse(endpoints.endpoint_json(registered))


@admin.get("/webhook-target")
async def admin_webhook_target_get(request: Request) -> dict:
    return _engine(request).target_json()


@admin.get("/webhook-mode")
async def admin_webhook_mode_get(request: Request) -> dict:
    return asdict(_engine(request).mode)


@admin.post("/webhook-mode")
async def admin_webhook_mode_set(request: Request) -> Response:
    try:
        body = await request.json()
        mode = WebhookMode(
            duplicate=int(body.get("duplicate", 0)),
            reorder=bool(body.get("reorder", False)),
            delay_ms=int(body.get("delay_ms", 0)),
        )
    except (ValueError, TypeError, AttributeError):
        return JSONResponse(
            {
                "error": "BadRequest",
                "detail": "expected {duplicate: int, reorder: bool, delay_ms: int}",
            },
            status_code=400,
        )
    if mode.duplicate < 0 or mode.delay_ms < 0:
        return JSONResponse(
            {"error": "BadRequest", "detail": "duplicate and delay_ms must be >= 0"},
            status_code=400,
        )
    _engine(request).mode = mode
    return JSONResponse(asdict(mode))


@admin.post("/webhooks/emit")
async def admin_webhooks_emit(request: Request) -> Response:
    """Emits raw events as one batch, as a multi-event operation does (honours reorder)."""
    try:
        body = await request.json()
        events = [(str(e["type"]), dict(e["data"])) for e in body["events"]]
    except (ValueError, TypeError, KeyError):
        return JSONResponse(
            {"error": "BadRequest", "detail": "expected {events: [{type, data}, ...]}"},
            status_code=400,
        )
    if not _engine(request).dispatcher.target.configured:
        return JSONResponse({"error": "BadRequest", "detail": "no webhook target"}, status_code=409)
    return JSONResponse({"results": await request.app.state.dispatcher.emit_many(events)})


def install(app: FastAPI, *, timeout: float, retry_scale: float) -> DeliveryEngine:
    """Attaches the engine to the app's dispatcher, adds the routes, resumes retries on start."""
    dispatcher: Dispatcher = app.state.dispatcher
    engine = DeliveryEngine(
        DeliveryLog(app.state.store), dispatcher, timeout=timeout, retry_scale=retry_scale
    )
    dispatcher.engine = engine
    app.state.delivery = engine
    app.include_router(api)
    app.include_router(admin)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            if resumed := engine.resume():
                log.info("resumed %d pending webhook retries", resumed)
            try:
                yield state
            finally:
                await engine.stop()

    app.router.lifespan_context = lifespan
    return engine
