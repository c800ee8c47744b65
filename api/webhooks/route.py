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

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.metrics import TimedWebhookRoute
from polar_credits.api.payloads import BadPayload, parse_json
from polar_credits.api.problems import Problem
from polar_credits.api.webhooks.answers import metrics_of, refuse, respond
from polar_credits.api.webhooks.intake import read_body, verify_signature
from polar_credits.api.webhooks.orders import handle_order_paid
from polar_credits.api.webhooks.schemas import PolarEvent, WebhookAnswer, inline_schema
from polar_credits.api.webhooks.subscriptions import steer_subscription

router = APIRouter(tags=["webhooks"], route_class=TimedWebhookRoute)

HANDLED_EVENTS = frozenset({"order.paid"})


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
            "content": {"application/json": {"schema": inline_schema(PolarEvent)}},
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
        body = await read_body(request, settings.credits_api_body_timeout_seconds)
    except ClientDisconnect:
        # The client left: nobody reads an answer, and there is nothing to log.
        metrics_of(request).webhook("client_disconnected", None)
        return Response(status_code=400)
    verify_signature(request, body)

    try:
        payload = parse_json(body)
    except BadPayload as exc:
        raise refuse(request, 400, "bad_request", str(exc)) from None
    event_type = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(event_type, str):
        raise refuse(request, 400, "bad_request", "Payload has no event type")
    request.state.event_type = event_type  # for the metrics of what follows
    rules = request.app.state.rules
    if event_type.startswith("subscription.") and rules is not None and rules.has_cadence_rules():
        return await steer_subscription(request, settings, temporal, event_type, payload)
    if event_type not in HANDLED_EVENTS:
        return respond(request, WebhookAnswer(status="ignored", event_type=event_type))
    return await handle_order_paid(request, settings, temporal, event_type, payload)
