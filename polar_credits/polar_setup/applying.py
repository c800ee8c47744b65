"""Applying a plan: exactly the changes it lists, in order, each refusal a SetupError."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from polar.base import PolarClientError
from polar.v2026_10 import PolarAsync
from polar.v2026_10.literals import WebhookEventType

from polar_credits.polar_ids import path_segment
from polar_credits.polar_setup.plan import Plan
from polar_credits.polar_setup.planning import API_VERSION
from polar_credits.polar_setup.polar_calls import call_polar, error_detail
from polar_credits.polar_setup.starter_rules import starter_rules

T = TypeVar("T")


class SetupError(Exception):
    """Polar refused a change (the message says which and why)."""


async def apply_plan(polar: PolarAsync, plan: Plan) -> None:
    """Makes the plan's changes, in order: meters, webhook endpoint, rules file."""
    for spec in plan.meters_to_create:
        meter = await _change(
            "create the meter",
            "meters:write",
            functools.partial(
                polar.meters.create,
                name=spec.name,
                filter={
                    "conjunction": "and",
                    "clauses": [{"property": "name", "operator": "eq", "value": spec.event_name}],
                },
                aggregation={"func": "sum", "property": spec.property},
            ),
        )
        spec.id = meter.id
    webhook = plan.webhook
    if webhook is not None and webhook.endpoint_id is None:
        created = await _change(
            "create the webhook endpoint",
            "webhooks:write",
            lambda: polar.webhooks.create_webhook_endpoint(
                url=webhook.url,
                format="raw",
                events=cast("list[WebhookEventType]", webhook.events),
                api_version=API_VERSION,
            ),
        )
        webhook.endpoint_id, webhook.secret = created.id, created.secret
    elif webhook is not None and webhook.changes:
        endpoint_id, changes = webhook.endpoint_id, webhook.changes
        assert endpoint_id is not None  # the branch above handles an endpoint still to create
        await _change(
            "update the webhook endpoint",
            "webhooks:write",
            lambda: polar.webhooks.update_webhook_endpoint(path_segment(endpoint_id), **changes),
        )
    if plan.rules_file is not None:
        text = starter_rules(plan.meters, plan.products)
        # "x": never overwrite, even a file that appeared since the plan was made.
        with plan.rules_file.open("x", encoding="utf-8") as file:
            file.write(text)


async def _change(what: str, scope: str, make: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call_polar(make)
    except PolarClientError as exc:
        if exc.status_code == 403:
            raise SetupError(f"cannot {what}: the token lacks the scope {scope}") from None
        raise SetupError(
            f"cannot {what}: Polar answered {exc.status_code}: {error_detail(exc)}"
        ) from None
