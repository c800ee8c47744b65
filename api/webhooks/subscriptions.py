"""The `subscription.*` events, and paid subscription orders: each reaches the subscription's
allowance run (signal-with-start) through polar_credits/starters."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from polar_credits.api.metrics import START_ERRORS
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.api.webhooks.answers import metrics_of, refuse, respond, respond_refused
from polar_credits.api.webhooks.intake import parse_event
from polar_credits.api.webhooks.schemas import PolarSubscriptionEvent, WebhookAnswer
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.orders import subscription_facts
from polar_credits.settings import Settings
from polar_credits.starters.allowances import AllowanceUnavailable, Delivery, steer_allowance

log = logging.getLogger("polar_credits.api")


async def steer_subscription(
    request: Request, settings: Settings, temporal: Any, event_type: str, payload: Any
) -> Response:
    subscription = parse_event(request, payload, PolarSubscriptionEvent, event_type).data
    refusal = subscription.refusal()
    if refusal:
        return respond_refused(request, event_type, subscription.id, refusal)
    observation = SubscriptionObservation(
        facts=subscription_facts(subscription, request.app.state.metadata_keys),
        event_type=event_type,
    )
    delivery = await deliver_to_allowance(request, settings, temporal, observation)
    if delivery.workflow_id is None:
        return respond(request, WebhookAnswer(status="ignored", event_type=event_type))
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
    return respond(request, answer)


async def deliver_to_allowance(
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
        metrics_of(request).count(START_ERRORS, workflow="allowance", cause="unavailable")
        subscription_id = observation.facts.subscription_id
        log.warning(
            "subscription %s: Temporal unavailable (%s); asking Polar to retry",
            for_log(subscription_id),
            exc,
        )
        raise refuse(
            request, 503, "temporal_unavailable", "Temporal is unreachable; retry later"
        ) from None
