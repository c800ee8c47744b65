"""The stand-in's HTTP surface: Polar's /v1 API subset, /healthz, and the /admin test surface."""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from tools.standin import (
    delivery,
    endpoints,
    lifecycle,
    metering,
    payloads,
    ratelimit,
    scopes,
)
from tools.standin.clock import Clock, install, iso, now, parse_iso
from tools.standin.faults import (
    Fault,
    FaultBoard,
    apply_fault,
    endpoint_name,
    fault_from_json,
)
from tools.standin.ingest import MAX_BODY_BYTES, error, validate_batch
from tools.standin.seed import seed, sum_filter
from tools.standin.store import Conflict, Store, UnknownCustomers, new_id
from tools.standin.webhooks import Dispatcher, WebhookTarget

log = logging.getLogger("polar_standin")


@dataclass
class StandinConfig:
    db_path: str
    token: str = "polar_standin_dev_token"
    webhook_url: str | None = None
    webhook_secret: str | None = None
    balance_lag: float = 15.0
    clock: str = "real"  # or "manual": time moves only through /admin/clock
    clock_start: str | None = None  # ISO start of a manual clock (default: now)
    webhook_timeout: float = 10.0
    webhook_retry_scale: float = 1.0  # multiplies Polar's retry waits (tests: 0.001)
    rate_limit: int = ratelimit.DEFAULT_PER_MINUTE
    faults: list[Fault] = field(default_factory=list)  # armed at start-up
    # More organization tokens, each with its own scopes (STANDIN_SCOPED_TOKENS; scopes.py).
    scoped_tokens: dict[str, frozenset[str]] = field(default_factory=dict)


def not_found() -> JSONResponse:
    return JSONResponse({"error": "ResourceNotFound", "detail": "Not found"}, status_code=404)


def unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": errors}, status_code=422)


def bad_request(detail: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": "BadRequest", "detail": detail}, status_code=status)


def _store(request: Request) -> Store:
    return request.app.state.store


def _customer_json(store: Store, customer_id: str | None) -> dict[str, Any] | None:
    row = store.get_customer(customer_id) if customer_id else None
    return payloads.customer(row, store.first_event_at(row)) if row else None


def _order_json(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    return payloads.order(
        row, store.get_customer(row["customer_id"]), store.get_product(row["product_id"])
    )


def _event_json(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    customer = None
    if row["customer_id"]:
        customer = store.get_customer(row["customer_id"])
    elif row["external_customer_id"]:
        customer = store.customer_by_external_id(row["external_customer_id"])
    return payloads.event(row, payloads.customer(customer) if customer else None)


def _customer_meter_json(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    return payloads.customer_meter(
        row,
        _customer_json(store, row["customer_id"]),
        payloads.meter(store.get_meter(row["meter_id"])),
    )


# -- Polar API ---------------------------------------------------------------------------
api = APIRouter(prefix="/v1")
PageQ = Annotated[int, Query(ge=1)]
LimitQ = Annotated[int, Query(ge=1, le=100)]
# Several values allowed: ?customer_id=a&customer_id=b, as polar-sdk sends lists.
ManyQ = Annotated[list[str] | None, Query()]


@api.post("/events/ingest")
async def events_ingest(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return bad_request("Request body too large", 413)
    try:
        payload = json.loads(body)
    except ValueError:
        return unprocessable([error(["body"], "JSON decode error", "json_invalid")])
    events, errors = validate_batch(payload)
    if errors:
        return unprocessable(errors)
    try:
        inserted, duplicates = _store(request).ingest(events)
    except UnknownCustomers as e:
        return unprocessable(
            [
                error(
                    ["body", "events", i, "customer_id"],
                    "Customer does not exist.",
                    "customer_id",
                    events[i]["customer_id"],
                )
                for i in e.indexes
            ]
        )
    return JSONResponse({"inserted": inserted, "duplicates": duplicates})


@api.get("/events/")
async def events_list(
    request: Request,
    customer_id: str | None = None,
    name: ManyQ = None,
    source: ManyQ = None,
    page: PageQ = 1,
    limit: LimitQ = 10,
    sorting: ManyQ = None,
    start_timestamp: str | None = None,
    end_timestamp: str | None = None,
) -> dict:
    store = _store(request)
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    rows, total = store.list_events(
        page=page,
        limit=limit,
        customer_id=customer_id,
        name=name,
        source=source,
        metadata=metadata,
        descending=not sorting or sorting[0] != "timestamp",
        start=parse_iso(start_timestamp) if start_timestamp else None,
        end=parse_iso(end_timestamp) if end_timestamp else None,
    )
    return payloads.page([_event_json(store, r) for r in rows], total, limit)


@api.get("/customer-meters/")
async def customer_meters_list(
    request: Request,
    customer_id: ManyQ = None,
    meter_id: ManyQ = None,
    page: PageQ = 1,
    limit: LimitQ = 10,
    sorting: ManyQ = None,
) -> dict:
    store = _store(request)
    rows, total = store.list_customer_meters(
        page=page, limit=limit, customer_id=customer_id, meter_id=meter_id
    )
    return payloads.page([_customer_meter_json(store, r) for r in rows], total, limit)


@api.get("/customer-meters/{customer_meter_id}")
async def customer_meters_get(request: Request, customer_meter_id: str) -> Response:
    store = _store(request)
    row = store.get_customer_meter(customer_meter_id)
    return JSONResponse(_customer_meter_json(store, row)) if row else not_found()


@api.get("/meters/")
async def meters_list(request: Request, page: PageQ = 1, limit: LimitQ = 10) -> dict:
    rows, total = _store(request).list_meters(page=page, limit=limit)
    return payloads.page([payloads.meter(r) for r in rows], total, limit)


@api.post("/meters/")
async def meters_create(request: Request) -> Response:
    """Polar's POST /v1/meters/ (scope meters:write): 201 with the meter, 422 on a bad body."""
    body = await _json(request)
    name = body.get("name")
    if not isinstance(name, str) or len(name) < 3:
        message = "String should have at least 3 characters"
        return unprocessable([error(["body", "name"], message, "string_too_short")])
    if problem := metering.validate_filter(body.get("filter")):
        return unprocessable([error(["body", "filter"], problem, "value_error")])
    aggregation = body.get("aggregation")
    if problem := _aggregation_problem(aggregation):
        return unprocessable([error(["body", "aggregation"], problem, "value_error")])
    if body.get("organization_id") is not None:
        # An organization token implies its organization (POLAR_FACTS.md, ingest: the same).
        return unprocessable(
            [error(["body", "organization_id"], "Setting organization_id is disallowed when "
                   "using an organization token.", "organization_token")]
        )  # fmt: skip
    row = _store(request).create_meter(name=name, filter=body["filter"], aggregation=aggregation)
    return JSONResponse(payloads.meter(row), status_code=201)


def _aggregation_problem(aggregation: Any) -> str | None:
    if not isinstance(aggregation, dict):
        return "aggregation is required"
    func = aggregation.get("func")
    if func == "count":
        return None
    if func not in ("sum", "max", "min", "avg", "unique"):
        return f"unknown aggregation function {func!r}"
    if not isinstance(aggregation.get("property"), str) or not aggregation["property"]:
        return f"a {func} aggregation needs a property"
    return None


@api.get("/meters/{meter_id}")
async def meters_get(request: Request, meter_id: str) -> Response:
    row = _store(request).get_meter(meter_id)
    return JSONResponse(payloads.meter(row)) if row else not_found()


@api.get("/customers/")
async def customers_list(
    request: Request,
    email: str | None = None,
    external_id: str | None = None,
    page: PageQ = 1,
    limit: LimitQ = 10,
) -> dict:
    store = _store(request)
    rows, total = store.list_customers(page=page, limit=limit, email=email, external_id=external_id)
    return payloads.page([_customer_json(store, r["id"]) for r in rows], total, limit)


@api.get("/customers/{customer_id}")
async def customers_get(request: Request, customer_id: str) -> Response:
    found = _customer_json(_store(request), customer_id)
    return JSONResponse(found) if found else not_found()


async def _create_customer(request: Request, body: dict[str, Any], *, allow_id: bool) -> Response:
    if not isinstance(body.get("email"), str) or "@" not in body["email"]:
        return unprocessable(
            [error(["body", "email"], "value is not a valid email address", "value_error")]
        )
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        return unprocessable(
            [error(["body", "metadata"], "Input should be a valid dictionary", "dict_type")]
        )
    store = _store(request)
    try:
        row = store.create_customer(
            email=body["email"],
            name=body.get("name"),
            external_id=body.get("external_id"),
            metadata=metadata,
            id=body.get("id") if allow_id else None,
        )
    except Conflict as e:
        return unprocessable([error(["body", "email"], str(e), "value_error")])
    return JSONResponse(_customer_json(store, row["id"]), status_code=201)


@api.post("/customers/")
async def customers_create(request: Request) -> Response:
    return await _create_customer(request, await _json(request), allow_id=False)


@api.get("/products/")
async def products_list(request: Request, page: PageQ = 1, limit: LimitQ = 10) -> dict:
    rows, total = _store(request).list_products(page=page, limit=limit)
    return payloads.page([payloads.product(r) for r in rows], total, limit)


@api.get("/products/{product_id}")
async def products_get(request: Request, product_id: str) -> Response:
    row = _store(request).get_product(product_id)
    return JSONResponse(payloads.product(row)) if row else not_found()


@api.get("/orders/")
async def orders_list(
    request: Request,
    customer_id: ManyQ = None,
    product_id: ManyQ = None,
    subscription_id: ManyQ = None,
    external_customer_id: ManyQ = None,
    product_billing_type: ManyQ = None,
    status: ManyQ = None,
    created_after: str | None = None,
    created_before: str | None = None,
    page: PageQ = 1,
    limit: LimitQ = 10,
    sorting: ManyQ = None,
) -> dict:
    store = _store(request)
    rows, total = store.list_orders(
        page=page,
        limit=limit,
        customer_id=customer_id,
        product_id=product_id,
        subscription_id=subscription_id,
        external_customer_id=external_customer_id,
        status=status,
        billing_type=product_billing_type,
        created_after=parse_iso(created_after) if created_after else None,
        created_before=parse_iso(created_before) if created_before else None,
        descending=not sorting or sorting[0] != "created_at",
    )
    return payloads.page([_order_json(store, r) for r in rows], total, limit)


@api.get("/orders/{order_id}")
async def orders_get(request: Request, order_id: str) -> Response:
    store = _store(request)
    row = store.get_order(order_id)
    return JSONResponse(_order_json(store, row)) if row else not_found()


# -- admin surface -----------------------------------------------------------------------
admin = APIRouter(prefix="/admin")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@admin.post("/customers")
async def admin_customers(request: Request) -> Response:
    return await _create_customer(request, await _json(request), allow_id=True)


@admin.post("/meters")
async def admin_meters(request: Request) -> Response:
    body = await _json(request)
    if not isinstance(body.get("name"), str):
        return bad_request("name is required")
    filter_ = body.get("filter")
    if filter_ is None:
        if not isinstance(body.get("event_name"), str):
            return bad_request("event_name (or a full filter) is required")
        filter_ = sum_filter(body["event_name"])
    if problem := metering.validate_filter(filter_):
        return bad_request(problem)
    aggregation = body.get("aggregation") or {
        "func": "sum",
        "property": body.get("property", "units"),
    }
    try:
        row = _store(request).create_meter(
            name=body["name"], filter=filter_, aggregation=aggregation, id=body.get("id")
        )
    except Conflict as e:
        return bad_request(str(e), 409)
    return JSONResponse(payloads.meter(row), status_code=201)


@admin.post("/products")
async def admin_products(request: Request) -> Response:
    body = await _json(request)
    if not isinstance(body.get("name"), str):
        return bad_request("name is required")
    if body.get("recurring_interval") not in (None, "day", "week", "month", "year"):
        return bad_request("recurring_interval must be day, week, month, year or null")
    # A meter cycle of its own (Polar's `meter_interval`), on recurring products only.
    meter_interval = body.get("meter_interval")
    if meter_interval not in (None, "day", "week", "month", "year"):
        return bad_request("meter_interval must be day, week, month, year or null")
    if meter_interval is not None and body.get("recurring_interval") is None:
        return bad_request("meter_interval needs a recurring product")
    store = _store(request)
    meters = [store.get_meter(str(m)) for m in body.get("metered_meter_ids") or []]
    if None in meters:
        return bad_request("metered_meter_ids must name existing meters", 404)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        return bad_request("metadata must be an object")
    # A Meter Credits benefit per meter named: {"meter_id": units} (it resets its meter).
    credits = body.get("meter_credits") or {}
    if not isinstance(credits, dict) or any(store.get_meter(str(m)) is None for m in credits):
        return bad_request("meter_credits must map existing meter ids to units", 404)
    try:
        row = store.create_product(
            name=body["name"],
            price_amount=int(body.get("price_amount", 1900)),
            currency=body.get("currency", "usd"),
            recurring_interval=body.get("recurring_interval"),
            id=body.get("id"),
            recurring_interval_count=int(body.get("recurring_interval_count") or 1),
            metered_prices=[
                {"meter_id": m["id"], "meter_name": m["name"], "price_id": new_id()} for m in meters
            ],
            metadata=metadata,
            benefits=[
                {"id": new_id(), "meter_id": str(m), "units": int(units)}
                for m, units in credits.items()
            ],
            meter_interval=meter_interval,
            meter_interval_count=int(body.get("meter_interval_count") or 1)
            if meter_interval
            else None,
        )
    except Conflict as e:
        return bad_request(str(e), 409)
    return JSONResponse(payloads.product(row), status_code=201)


async def _send(
    request: Request, order_id: str, event_type: str, webhook_id: str | None, offset: int
) -> dict[str, Any] | Response:
    dispatcher: Dispatcher = request.app.state.dispatcher
    if not dispatcher.target.configured:
        return bad_request(
            "no webhook target: start with --webhook-url/--webhook-secret or "
            "POST /admin/webhook-target",
            409,
        )
    store = _store(request)
    order = store.get_order(order_id)
    if order is None:
        return not_found()
    return await dispatcher.emit(
        event_type, _order_json(store, order), webhook_id=webhook_id, timestamp_offset=offset
    )


@admin.post("/orders")
async def admin_orders(request: Request) -> Response:
    body = await _json(request)
    store = _store(request)
    customer = store.get_customer(str(body.get("customer_id")))
    product = store.get_product(str(body.get("product_id")))
    if customer is None or product is None:
        return bad_request("customer_id and product_id must name existing rows", 404)
    billing_reason = body.get("billing_reason", "purchase")
    subscription = body.get("subscription")
    if subscription is None and billing_reason.startswith("subscription_"):
        subscription = {"recurring_interval": product["recurring_interval"] or "month"}
    if subscription is not None:
        subscription = {"id": subscription.get("id") or new_id(), **subscription}
    # Polar resets metered meters before it creates a renewal order: let tests do the same.
    for meter_id in body.get("reset_meter_ids") or []:
        store.add_system_event(
            name="meter.reset", customer_id=customer["id"], metadata={"meter_id": meter_id}
        )
    amount = body.get("amount")
    order = store.create_order(
        customer_id=customer["id"],
        product_id=product["id"],
        billing_reason=billing_reason,
        seats=body.get("seats"),
        metadata=body.get("metadata") or {},
        amount=product["price_amount"] if amount is None else int(amount),
        currency=product["currency"],
        subscription=subscription,
    )
    delivery = None
    if body.get("deliver", True) and request.app.state.dispatcher.target.configured:
        delivery = await _send(request, order["id"], "order.paid", None, 0)
    return JSONResponse({"order": _order_json(store, order), "delivery": delivery}, status_code=201)


@admin.post("/webhooks/send")
async def admin_webhooks_send(request: Request) -> Response:
    body = await _json(request)
    result = await _send(
        request,
        str(body.get("order_id")),
        body.get("type", "order.paid"),
        body.get("webhook_id"),
        int(body.get("timestamp_offset_seconds", 0)),
    )
    return result if isinstance(result, Response) else JSONResponse(result)


@admin.post("/webhook-target")
async def admin_webhook_target(request: Request) -> dict:
    body = await _json(request)
    target = WebhookTarget(body.get("url"), body.get("secret"))
    request.app.state.dispatcher.target = target
    return {"url": body.get("url"), "configured": target.configured}


@admin.post("/faults")
async def admin_faults_add(request: Request) -> Response:
    try:
        fault = fault_from_json(await _json(request))
    except (ValueError, TypeError) as e:
        return bad_request(str(e))
    request.app.state.faults.add(fault)
    return JSONResponse({"faults": request.app.state.faults.list()}, status_code=201)


@admin.get("/faults")
async def admin_faults_list(request: Request) -> dict:
    return {"faults": request.app.state.faults.list()}


@admin.delete("/faults")
async def admin_faults_clear(request: Request) -> dict:
    request.app.state.faults.clear()
    return {"faults": []}


@admin.get("/requests")
async def admin_requests(request: Request, endpoint: str | None = None) -> dict:
    return {"requests": request.app.state.faults.requests(endpoint)}


@admin.get("/events")
async def admin_events(request: Request, customer_id: str | None = None) -> dict:
    rows = _store(request).all_events(customer_id)
    return {
        "events": [
            {
                **{
                    k: r[k]
                    for k in (
                        "id",
                        "name",
                        "source",
                        "customer_id",
                        "external_customer_id",
                        "external_id",
                        "metadata",
                        "ts",
                        "ingested_at",
                    )
                },
                "timestamp": iso(r["ts"]),
            }
            for r in rows
        ]
    }


async def _meter_system_event(request: Request, name: str) -> Response:
    body = await _json(request)
    store = _store(request)
    if (
        store.get_customer(str(body.get("customer_id"))) is None
        or store.get_meter(str(body.get("meter_id"))) is None
    ):
        return bad_request("customer_id and meter_id must name existing rows", 404)
    metadata: dict[str, Any] = {"meter_id": body["meter_id"]}
    if name == "meter.credited":
        metadata |= {"units": int(body.get("units", 0)), "rollover": False}
    store.add_system_event(name=name, customer_id=body["customer_id"], metadata=metadata)
    return JSONResponse({"ok": True, "event": name})


@admin.post("/customer-meters/credit")
async def admin_credit(request: Request) -> Response:
    """Adds a meter.credited system event, as Polar's Meter Credits benefit does."""
    return await _meter_system_event(request, "meter.credited")


@admin.post("/customer-meters/reset")
async def admin_reset(request: Request) -> Response:
    """Adds a meter.reset system event: earlier events stop counting."""
    return await _meter_system_event(request, "meter.reset")


# -- application -------------------------------------------------------------------------
def create_app(config: StandinConfig) -> FastAPI:
    app = FastAPI(title="Polar stand-in", docs_url="/docs", redoc_url=None)
    start = parse_iso(config.clock_start) if config.clock_start else None
    app.state.clock = install(Clock(config.clock, start))  # before anything writes a time
    app.state.store = Store(config.db_path, balance_lag=config.balance_lag)
    seed(app.state.store)
    app.state.dispatcher = Dispatcher(WebhookTarget(config.webhook_url, config.webhook_secret))
    app.state.faults = FaultBoard()
    for fault in config.faults:
        app.state.faults.add(fault)
    expected = f"Bearer {config.token}".encode()
    scoped = {f"Bearer {token}".encode(): found for token, found in config.scoped_tokens.items()}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next: Any) -> Response:
        started = time.monotonic()
        path = request.url.path
        endpoint = endpoint_name(request.method, path)
        response = await _gate(request, call_next, endpoint, expected, scoped)
        if endpoint is not None:
            app.state.faults.record(endpoint, response.status_code)
        response.headers["date"] = formatdate(now(), usegmt=True)
        # Path only: query strings may carry emails. Never headers (token, secrets).
        log.info(
            "%s %s %s %.1fms",
            request.method,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    app.include_router(api)
    app.include_router(admin)
    endpoints.install(app)  # before delivery: its GET routes list the registered endpoints
    delivery.install(app, timeout=config.webhook_timeout, retry_scale=config.webhook_retry_scale)
    ratelimit.install(app, config.rate_limit)
    lifecycle.install(app)
    return app


async def _gate(
    request: Request,
    call_next: Any,
    endpoint: str | None,
    expected: bytes,
    scoped: dict[bytes, frozenset[str]],
) -> Response:
    path = request.url.path
    if path.startswith(("/v1/", "/admin/")):
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            granted = next(
                (found for token, found in scoped.items() if hmac.compare_digest(given, token)),
                None,
            )
            if granted is None or not path.startswith("/v1/"):
                return JSONResponse(
                    {"error": "Unauthorized", "detail": "Missing or invalid bearer token"},
                    status_code=401,
                )
            if (refused := scopes.refusal(request.method, path, granted)) is not None:
                return refused
    if path.startswith("/v1/") and (wait := request.app.state.rate_limit.check()) is not None:
        return ratelimit.too_many(wait)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return bad_request("Request body too large", 413)
    fault = request.app.state.faults.take(endpoint) if endpoint else None
    if fault is not None:
        return await apply_fault(fault, request, call_next)
    return await call_next(request)
