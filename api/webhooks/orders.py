"""`order.paid`: start the order's crediting run through polar_credits/starters, keyed by the
order id (a paid subscription order also reaches the subscription's allowance run)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import ui_summaries as ui
from polar_credits.api.metrics import START_ERRORS, UNKNOWN_VALUES
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.api.webhooks.answers import (
    metrics_of,
    refusal_answer,
    refuse,
    respond,
    respond_refused,
)
from polar_credits.api.webhooks.intake import parse_event
from polar_credits.api.webhooks.schemas import PolarEvent, WebhookAnswer
from polar_credits.api.webhooks.subscriptions import deliver_to_allowance
from polar_credits.identity import order_workflow_id
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.models.facts import OrderFacts
from polar_credits.models.orders import OrderCreditsInput, VerificationPolicy
from polar_credits.orders import SubscriptionSnapshot, order_facts, subscription_facts
from polar_credits.settings import Settings
from polar_credits.starters.allowances import wants_allowance
from polar_credits.starters.orders import start_order_run

log = logging.getLogger("polar_credits.api")

# Temporal answers these when the request itself is invalid: retrying cannot help.
PERMANENT_START_ERRORS = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.OUT_OF_RANGE})


async def handle_order_paid(
    request: Request, settings: Settings, temporal: Any, event_type: str, payload: Any
) -> Response:
    rules = request.app.state.rules
    order = parse_event(request, payload, PolarEvent, "order.paid").data
    unknown = order.unknown_values()
    if unknown:
        for field in unknown:
            metrics_of(request).count(UNKNOWN_VALUES, field=field)
        described = ", ".join(f"{field} {for_log(value, 40)!r}" for field, value in unknown.items())
        log.warning(
            "order %s: ignored, unknown %s; nothing granted (upgrade, then redeliver from Polar)",
            for_log(order.id),
            described,
        )
        return respond(
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
        return respond_refused(request, event_type, order.id, refusal)
    facts = order_facts(order, metadata_keys)
    answer = await start_order(request, settings, temporal, event_type, facts)
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
        delivery = await deliver_to_allowance(request, settings, temporal, observation)
        answer.allowance_workflow_id = delivery.workflow_id
    return respond(request, answer, status_code=202 if answer.status == "started" else 200)


async def start_order(
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
            metrics_of(request).count(START_ERRORS, workflow="order", cause=exc.status.name.lower())
            return refusal_answer(
                event_type, facts.order_id, f"Temporal refused the run: {exc.message}"
            )
        raise _unavailable(request, facts, type(exc).__name__) from None
    except (TimeoutError, RuntimeError) as exc:
        # RuntimeError: the lazy client could not connect at all.
        raise _unavailable(request, facts, type(exc).__name__) from None
    log.info("order %s: started %s", for_log(facts.order_id), for_log(workflow_id))
    return answer


def _unavailable(request: Request, facts: OrderFacts, cause: str) -> HTTPException:
    metrics_of(request).count(START_ERRORS, workflow="order", cause=cause)
    log.warning(
        "order %s: Temporal unavailable (%s); asking Polar to retry", for_log(facts.order_id), cause
    )
    return refuse(request, 503, "temporal_unavailable", "Temporal is unreachable; retry later")
