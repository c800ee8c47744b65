"""`POST /webhooks/polar`: verify, parse, start the order's workflow, answer in milliseconds.

It never calls Polar. Anything that is not accepted is answered with a status that makes
Polar's behaviour right: 4xx for requests that can never succeed, 503 when Temporal is
unreachable so Polar retries and nothing is lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from polar.base import PolarDeserializationError, deserialize
from polar.v2026_10.webhooks import WebhookOrderPaidPayload
from pydantic import BaseModel
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.dependencies import SettingsDep, TemporalDep
from polar_credits import search_attributes as sa
from polar_credits.models import OrderCreditsInput, OrderFacts, VerificationPolicy
from polar_credits.orders import order_facts
from polar_credits.settings import Settings
from workflows.order_credits import OrderCreditsWorkflow, order_workflow_id

log = logging.getLogger("polar_credits.api")
router = APIRouter(tags=["webhooks"])

MAX_BODY_BYTES = 1024 * 1024
HANDLED_EVENTS = frozenset({"order.paid"})


class WebhookAnswer(BaseModel):
    status: Literal["started", "duplicate", "ignored"]
    event_type: str
    workflow_id: str | None = None
    ui_url: str | None = None


class Problem(BaseModel):
    detail: str


def polar_verifier(secret: str) -> Webhook:
    """Polar signs with the raw bytes of the whole secret string, `whsec_` prefix included."""
    return Webhook(base64.b64encode(secret.encode()).decode())


def warm_up_parsers() -> None:
    """polar-sdk builds its model loaders on first use; do it before the first delivery."""
    try:
        deserialize({}, WebhookOrderPaidPayload)
    except PolarDeserializationError:
        pass


def workflow_ui_url(settings: Settings, workflow_id: str) -> str:
    base = settings.temporal_ui_url.rstrip("/")
    return f"{base}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"


def start_attributes(facts: OrderFacts) -> list[SearchAttributePair]:
    """Set at start so an operator finds the run in the UI before its first task runs."""
    pairs = [
        SearchAttributePair(sa.POLAR_ORDER_ID, facts.order_id),
        SearchAttributePair(sa.POLAR_CUSTOMER_ID, facts.customer_id),
        SearchAttributePair(sa.CREDIT_STATUS, "pending"),
    ]
    if facts.product_id:
        pairs.append(SearchAttributePair(sa.POLAR_PRODUCT_ID, facts.product_id))
    return pairs


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, "Request body is larger than 1 MiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, "Request body is larger than 1 MiB")
    return bytes(body)


def _verify(verifier: Webhook, body: bytes, request: Request) -> None:
    headers = {
        name: request.headers.get(name, "")
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }
    try:
        verifier.verify(body, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise HTTPException(403, f"Webhook signature rejected: {exc}") from None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        # Malformed signature header or non-UTF-8 body: cannot be a valid delivery.
        raise HTTPException(403, "Webhook signature rejected: malformed signature") from None


@router.post(
    "/webhooks/polar",
    response_model=WebhookAnswer,
    status_code=202,
    responses={
        200: {"model": WebhookAnswer, "description": "Duplicate: this order already has a run"},
        400: {"model": Problem},
        403: {"model": Problem},
        413: {"model": Problem},
        503: {"model": Problem, "description": "Temporal unreachable; Polar will retry"},
    },
    summary="Receive a signed Polar webhook",
)
async def polar_webhook(
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> WebhookAnswer | JSONResponse:
    body = await _read_body(request)
    _verify(request.app.state.webhook_verifier, body, request)

    try:
        payload = json.loads(body)
    except ValueError:
        raise HTTPException(400, "Body is not valid JSON") from None
    event_type = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(event_type, str):
        raise HTTPException(400, "Payload has no event type")
    if event_type not in HANDLED_EVENTS:
        return WebhookAnswer(status="ignored", event_type=event_type)

    try:
        event = deserialize(payload, WebhookOrderPaidPayload)
    except PolarDeserializationError as exc:
        raise HTTPException(
            400, f"Payload does not fit Polar's {event_type} schema: {exc.error}"
        ) from None
    facts = order_facts(event.data)
    workflow_id = order_workflow_id(facts.order_id)
    answer = WebhookAnswer(
        status="started",
        event_type=event_type,
        workflow_id=workflow_id,
        ui_url=workflow_ui_url(settings, workflow_id),
    )
    try:
        await temporal.start_workflow(
            OrderCreditsWorkflow.run,
            OrderCreditsInput(
                order=facts,
                verification=VerificationPolicy(
                    timeout_seconds=settings.credits_verify_timeout_seconds,
                    first_interval_seconds=settings.credits_verify_first_check_seconds,
                ),
            ),
            id=workflow_id,
            task_queue=settings.credits_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(start_attributes(facts)),
        )
    except WorkflowAlreadyStartedError:
        log.info("order %s: duplicate delivery, run %s exists", facts.order_id, workflow_id)
        answer.status = "duplicate"
        return JSONResponse(status_code=200, content=answer.model_dump())
    except (RPCError, RuntimeError) as exc:
        # RuntimeError: the lazy client could not connect at all.
        log.warning(
            "order %s: Temporal unavailable (%s); asking Polar to retry",
            facts.order_id,
            type(exc).__name__,
        )
        raise HTTPException(503, "Temporal is unreachable; retry later") from None
    log.info("order %s: started %s", facts.order_id, workflow_id)
    return answer
