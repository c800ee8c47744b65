"""The token step of the plan: the scopes the service and setup need, probed one read each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from polar.base import PolarClientError
from polar.v2026_10 import PolarAsync

from polar_credits.polar_setup.plan import Plan, SetupRequest
from polar_credits.polar_setup.polar_calls import call_polar

# What the worker and the API need (docs/polar-setup.md), and what setup itself
# needs. Read scopes are probed with a one-item list; events:write with an empty ingest
# (Polar accepts it and stores nothing). meters:write and webhooks:write cannot be probed
# without a change: a missing one shows as a 403 when setup makes that change.
SERVICE_SCOPES = (
    "events:write",
    "events:read",
    "customer_meters:read",
    "orders:read",
    "subscriptions:read",
    "customers:read",
    "meters:read",
)
SETUP_SCOPES = ("meters:write", "products:read", "webhooks:read", "webhooks:write")
UNPROBED_SCOPES = ("meters:write", "webhooks:write")


async def check_token(polar: PolarAsync, request: SetupRequest, plan: Plan) -> None:
    probes: dict[str, Callable[[], Awaitable[Any]]] = {
        # meters:read first: a refused token fails here, before anything else is asked.
        "meters:read": lambda: polar.meters.list(limit=1),
        "events:read": lambda: polar.events.list(limit=1),
        "events:write": lambda: polar.events.ingest(events=[]),
        "customer_meters:read": lambda: polar.customer_meters.list(limit=1),
        "orders:read": lambda: polar.orders.list(limit=1),
        "subscriptions:read": lambda: polar.subscriptions.list(limit=1),
        "customers:read": lambda: polar.customers.list(limit=1),
        "products:read": lambda: polar.products.list(limit=1),
    }
    if request.webhook_url:
        probes["webhooks:read"] = lambda: polar.webhooks.list_webhook_endpoints(limit=1)
    for scope, probe in probes.items():
        try:
            await call_polar(probe)
        except PolarClientError as exc:
            if exc.status_code == 403:
                plan.scopes_missing.append(scope)
            elif exc.status_code != 422:  # 422: the token passed, the probe's body did not
                raise
    checked = ", ".join(s for s in probes if s not in plan.scopes_missing)
    if plan.scopes_missing:
        plan.add(
            "token",
            "problem",
            f"the token lacks {', '.join(plan.scopes_missing)}: create a token with "
            f"{', '.join(SERVICE_SCOPES + SETUP_SCOPES)}",
        )
    else:
        plan.add(
            "token",
            "ok",
            f"accepted; scopes present: {checked} "
            f"({', '.join(UNPROBED_SCOPES)} are checked when a change needs them)",
        )
