"""`POST /webhooks/polar`: verify, parse, start the order's workflow, answer in milliseconds.

It never calls Polar. Every answer makes Polar's behaviour right (Polar retries anything
but a 2xx, and disables an endpoint after ten failed events in a row):
- 4xx for a request that is not a genuine delivery (bad signature, malformed body);
- 2xx for every genuine delivery, including one holding a value this release does not know
  yet (ignored, counted) and one that can never be processed (refused, logged, counted);
- 503 only when Temporal is unavailable, within a deadline well under Polar's 10 s, so
  Polar's retry is the one that counts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import ClientDisconnect
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import ui_summaries as ui
from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.metrics import START_ERRORS, UNKNOWN_VALUES, Metrics, TimedWebhookRoute
from polar_credits.api.payloads import (
    BadPayload,
    BodyTimeout,
    BodyTooLarge,
    parse_json,
    read_capped_body,
)
from polar_credits.api.problems import Problem
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.identity import order_workflow_id
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.models.facts import OrderFacts
from polar_credits.models.orders import OrderCreditsInput, VerificationPolicy
from polar_credits.orders import (
    PaidOrder,
    PolarSubscription,
    SubscriptionSnapshot,
    order_facts,
    subscription_facts,
)
from polar_credits.settings import Settings
from polar_credits.starters.allowances import (
    AllowanceUnavailable,
    Delivery,
    steer_allowance,
    wants_allowance,
)
from polar_credits.starters.orders import start_order_run

log = logging.getLogger("polar_credits.api")
router = APIRouter(tags=["webhooks"], route_class=TimedWebhookRoute)

MAX_BODY_BYTES = 1024 * 1024
HANDLED_EVENTS = frozenset({"order.paid"})
# Temporal answers these when the request itself is invalid: retrying cannot help.
PERMANENT_START_ERRORS = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.OUT_OF_RANGE})
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookAnswer(BaseModel):
    status: Literal["started", "duplicate", "ignored", "refused", "signalled"]
    event_type: str
    workflow_id: str | None = None
    ui_url: str | None = None
    # The subscription's allowance run this delivery reached (rules with `every`).
    allowance_workflow_id: str | None = None
    detail: str | None = None


class PolarEvent(BaseModel):
    """The envelope of every Polar webhook; only `order.paid` starts a run."""

    type: str
    timestamp: str | None = None
    api_version: str | None = None
    data: PaidOrder


class PolarSubscriptionEvent(BaseModel):
    """A `subscription.*` webhook: it steers the subscription's allowance run."""

    type: str
    data: PolarSubscription


def polar_verifier(secret: str) -> Webhook:
    """Polar signs with the raw bytes of the whole secret string, `whsec_` prefix included."""
    return Webhook(base64.b64encode(secret.encode()).decode())


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _refuse(request: Request, status: int, outcome: str, detail: str) -> HTTPException:
    _metrics(request).webhook(outcome, getattr(request.state, "event_type", None))
    return HTTPException(status, detail)


async def _read_body(request: Request, seconds: float) -> bytes:
    try:
        return await read_capped_body(request, MAX_BODY_BYTES, seconds)
    except BodyTooLarge:
        raise _refuse(request, 413, "too_large", "Request body is larger than 1 MiB") from None
    except BodyTimeout:
        raise _refuse(
            request, 408, "body_timeout", f"Request body did not arrive within {seconds:g} s"
        ) from None


def _verify(request: Request, body: bytes) -> None:
    headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
    try:
        request.app.state.webhook_verifier.verify(body, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise _refuse(request, 403, "bad_signature", f"Webhook signature rejected: {exc}") from None
    except UnicodeDecodeError:
        raise _refuse(
            request, 403, "bad_signature", "Webhook signature rejected: body is not UTF-8"
        ) from None
    except (ValueError, binascii.Error):
        raise _refuse(
            request, 403, "bad_signature", "Webhook signature rejected: malformed signature"
        ) from None


def _parse(request: Request, payload: Any, model: type[BaseModel], what: str) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _refuse(
            request,
            400,
            "bad_request",
            f"Payload does not fit Polar's {what}: {where}: {first['msg']}",
        ) from None


def _answer(request: Request, answer: WebhookAnswer, status_code: int = 202) -> JSONResponse:
    _metrics(request).webhook(answer.status, answer.event_type)
    return JSONResponse(status_code=status_code, content=answer.model_dump())


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined: a schema placed in an operation
    cannot refer to `#/$defs/...`, which would resolve against the whole document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


WEBHOOK_DOC = """Polar posts its webhooks here (Standard Webhooks signature, secret
`POLAR_WEBHOOK_SECRET`). `order.paid` starts the order's crediting run, keyed by the order
id, so redeliveries and concurrent duplicates start nothing twice. With cadence rules
(`every`), `subscription.*` events and paid subscription orders also reach the subscription's
allowance run (signal-with-start). Every other event type is acknowledged and ignored. Every
2xx tells Polar to stop retrying; the body's `status` says what happened."""


@router.post(
    "/webhooks/polar",
    response_model=WebhookAnswer,
    status_code=202,
    summary="Receive a signed Polar webhook",
    description=WEBHOOK_DOC,
    responses={
        200: {
            "model": WebhookAnswer,
            "description": "`duplicate`: this order already has a run that did not fail; "
            "nothing started. `refused`: a genuine delivery that can never be processed "
            "(an id far beyond Polar's, or Temporal refused the run as invalid); nothing "
            "started, the refusal is logged and counted so Polar stops retrying.",
        },
        202: {
            "model": WebhookAnswer,
            "description": "`started`: the order's run started (`workflow_id`, `ui_url`; "
            "`allowance_workflow_id` when it also reached the subscription's allowance run). "
            "`signalled`: a `subscription.*` event reached the subscription's allowance run. "
            "`ignored`: an event type the service does not act on, or an order whose status "
            "or billing reason this release does not know yet; nothing granted, counted in "
            "`/metrics`.",
        },
        400: {"model": Problem, "description": "Signed, but the body is malformed."},
        403: {"model": Problem, "description": "Signature, id or timestamp rejected."},
        408: {"model": Problem, "description": "The body did not arrive in time."},
        413: {"model": Problem, "description": "Body larger than 1 MiB."},
        503: {
            "model": Problem,
            "description": "Temporal unavailable or too slow to answer; Polar retries.",
        },
    },
    openapi_extra={
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "description": description,
            }
            for name, description in (
                ("webhook-id", "Delivery id, stable across Polar's retries."),
                ("webhook-timestamp", "Unix seconds; at most 5 minutes off."),
                ("webhook-signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`."),
            )
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(PolarEvent)}},
            "description": "Polar's event envelope. Only `order.paid` is acted on; the "
            "fields shown are the ones read, all others are ignored.",
        },
    },
)
async def polar_webhook(
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> Response:
    try:
        body = await _read_body(request, settings.credits_api_body_timeout_seconds)
    except ClientDisconnect:
        # The client left: nobody reads an answer, and there is nothing to log.
        _metrics(request).webhook("client_disconnected", None)
        return Response(status_code=400)
    _verify(request, body)

    try:
        payload = parse_json(body)
    except BadPayload as exc:
        raise _refuse(request, 400, "bad_request", str(exc)) from None
    event_type = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(event_type, str):
        raise _refuse(request, 400, "bad_request", "Payload has no event type")
    request.state.event_type = event_type  # for the metrics of what follows
    rules = request.app.state.rules
    if event_type.startswith("subscription.") and rules is not None and rules.has_cadence_rules():
        return await _steer(request, settings, temporal, event_type, payload)
    if event_type not in HANDLED_EVENTS:
        return _answer(request, WebhookAnswer(status="ignored", event_type=event_type))

    order = _parse(request, payload, PolarEvent, "order.paid").data
    unknown = order.unknown_values()
    if unknown:
        for field in unknown:
            _metrics(request).count(UNKNOWN_VALUES, field=field)
        described = ", ".join(f"{field} {for_log(value, 40)!r}" for field, value in unknown.items())
        log.warning(
            "order %s: ignored, unknown %s; nothing granted (upgrade, then redeliver from Polar)",
            for_log(order.id),
            described,
        )
        return _answer(
            request,
            WebhookAnswer(
                status="ignored",
                event_type=event_type,
                detail=f"Unknown {described}: nothing granted",
            ),
        )

    metadata_keys = request.app.state.metadata_keys
    refusal = order.refusal(metadata_keys)
    if refusal:
        return _refused(request, event_type, order.id, refusal)
    facts = order_facts(order, metadata_keys)
    answer = await _start(request, settings, temporal, event_type, facts)
    if (
        answer.status != "refused"
        and order.subscription_id
        and wants_allowance(rules, order.product_id)
    ):
        # The paid order tells the subscription's allowance run that it is paid for (and
        # starts it, the first time).
        snapshot = order.subscription or SubscriptionSnapshot()
        observation = SubscriptionObservation(
            facts=subscription_facts(snapshot, metadata_keys, order),
            paid_order_id=order.id,
            event_type=event_type,
        )
        delivery = await _deliver(request, settings, temporal, observation)
        answer.allowance_workflow_id = delivery.workflow_id
    return _answer(request, answer, status_code=202 if answer.status == "started" else 200)


async def _steer(
    request: Request, settings: Settings, temporal: Any, event_type: str, payload: Any
) -> Response:
    subscription = _parse(request, payload, PolarSubscriptionEvent, event_type).data
    refusal = subscription.refusal()
    if refusal:
        return _refused(request, event_type, subscription.id, refusal)
    observation = SubscriptionObservation(
        facts=subscription_facts(subscription, request.app.state.metadata_keys),
        event_type=event_type,
    )
    delivery = await _deliver(request, settings, temporal, observation)
    if delivery.workflow_id is None:
        return _answer(request, WebhookAnswer(status="ignored", event_type=event_type))
    answer = WebhookAnswer(
        status="signalled" if delivery.outcome == "signalled" else "ignored",
        event_type=event_type,
        workflow_id=delivery.workflow_id,
        ui_url=workflow_ui_url(settings, delivery.workflow_id),
        allowance_workflow_id=delivery.workflow_id,
        detail="the subscription's allowance run has ended"
        if delivery.outcome == "ended"
        else None,
    )
    return _answer(request, answer)


async def _deliver(
    request: Request, settings: Settings, temporal: Any, observation: SubscriptionObservation
) -> Delivery:
    try:
        return await steer_allowance(
            temporal,
            request.app.state.rules,
            observation,
            task_queue=settings.credits_task_queue,
            deadline=settings.credits_temporal_start_timeout_seconds,
        )
    except AllowanceUnavailable as exc:
        _metrics(request).count(START_ERRORS, workflow="allowance", cause="unavailable")
        subscription_id = observation.facts.subscription_id
        log.warning(
            "subscription %s: Temporal unavailable (%s); asking Polar to retry",
            for_log(subscription_id),
            exc,
        )
        raise _refuse(
            request, 503, "temporal_unavailable", "Temporal is unreachable; retry later"
        ) from None


def _refused(request: Request, event_type: str, order_id: str, reason: str) -> JSONResponse:
    return _answer(request, _refusal(event_type, order_id, reason), status_code=200)


def _refusal(event_type: str, resource_id: str, reason: str) -> WebhookAnswer:
    what = "subscription" if event_type.startswith("subscription.") else "order"
    log.warning("%s %s: refused for good, %s; nothing started", what, for_log(resource_id), reason)
    return WebhookAnswer(
        status="refused", event_type=event_type, detail=f"{reason}; nothing started"
    )


async def _start(
    request: Request, settings: Settings, temporal: Any, event_type: str, facts: OrderFacts
) -> WebhookAnswer:
    """Start the order's run; the answer says `started` or `duplicate` (Temporal refused a
    second run). Raises the 503 when Temporal is unavailable."""
    workflow_id = order_workflow_id(facts.order_id)
    answer = WebhookAnswer(
        status="started",
        event_type=event_type,
        workflow_id=workflow_id,
        ui_url=workflow_ui_url(settings, workflow_id),
    )
    deadline = settings.credits_temporal_start_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            # A run that failed may be run again by redelivering the webhook (the starter's
            # reuse policy for the webhook).
            await start_order_run(
                temporal,
                OrderCreditsInput(
                    order=facts,
                    verification=VerificationPolicy(
                        timeout_seconds=settings.credits_verify_timeout_seconds,
                        first_interval_seconds=settings.credits_verify_first_check_seconds,
                    ),
                ),
                task_queue=settings.credits_task_queue,
                via=ui.VIA_WEBHOOK,
                rpc_timeout=timedelta(seconds=deadline),
            )
    except WorkflowAlreadyStartedError:
        log.info(
            "order %s: duplicate delivery, run %s exists",
            for_log(facts.order_id),
            for_log(workflow_id),
        )
        answer.status = "duplicate"
        return answer
    except RPCError as exc:
        if exc.status in PERMANENT_START_ERRORS:
            _metrics(request).count(START_ERRORS, workflow="order", cause=exc.status.name.lower())
            return _refusal(event_type, facts.order_id, f"Temporal refused the run: {exc.message}")
        raise _unavailable(request, facts, type(exc).__name__) from None
    except (TimeoutError, RuntimeError) as exc:
        # RuntimeError: the lazy client could not connect at all.
        raise _unavailable(request, facts, type(exc).__name__) from None
    log.info("order %s: started %s", for_log(facts.order_id), for_log(workflow_id))
    return answer


def _unavailable(request: Request, facts: OrderFacts, cause: str) -> HTTPException:
    _metrics(request).count(START_ERRORS, workflow="order", cause=cause)
    log.warning(
        "order %s: Temporal unavailable (%s); asking Polar to retry", for_log(facts.order_id), cause
    )
    return _refuse(request, 503, "temporal_unavailable", "Temporal is unreachable; retry later")
