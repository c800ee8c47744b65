"""How the webhook answers: every answer and refusal is counted by outcome in `/metrics`,
and a refusal for good is logged."""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from polar_credits.api.metrics import Metrics
from polar_credits.api.webhooks.schemas import WebhookAnswer
from polar_credits.logsafe import for_log

log = logging.getLogger("polar_credits.api")


def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def refuse(request: Request, status: int, outcome: str, detail: str) -> HTTPException:
    metrics_of(request).webhook(outcome, getattr(request.state, "event_type", None))
    return HTTPException(status, detail)


def respond(request: Request, answer: WebhookAnswer, status_code: int = 202) -> JSONResponse:
    metrics_of(request).webhook(answer.status, answer.event_type)
    return JSONResponse(status_code=status_code, content=answer.model_dump())


def respond_refused(request: Request, event_type: str, order_id: str, reason: str) -> JSONResponse:
    return respond(request, refusal_answer(event_type, order_id, reason), status_code=200)


def refusal_answer(event_type: str, resource_id: str, reason: str) -> WebhookAnswer:
    what = "subscription" if event_type.startswith("subscription.") else "order"
    log.warning("%s %s: refused for good, %s; nothing started", what, for_log(resource_id), reason)
    return WebhookAnswer(
        status="refused", event_type=event_type, detail=f"{reason}; nothing started"
    )
