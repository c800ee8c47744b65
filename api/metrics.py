"""`GET /metrics`: what the webhook edge did, in Prometheus' text format, for operators.

Each app holds its own prometheus-client registry (`app.state.metrics`), never the global
one: metrics live in the process (one API process, one set; scrape every API process), and
two apps in one process (tests) count apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, get_args

import prometheus_client
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from polar.v2026_10.literals import WebhookEventType
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from polar_credits.api.server import SLOW_CLIENTS_CLOSED

# Without this, every counter gets a `_created` twin that nobody alerts on.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

router = APIRouter(tags=["operations"])

WEBHOOKS = "polar_credits_webhooks_total"
UNKNOWN_VALUES = "polar_credits_webhook_unknown_values_total"
SLOW_CLIENTS = "polar_credits_slow_clients_closed_total"
DELIVERIES = "polar_credits_webhook_deliveries_total"
WEBHOOK_SECONDS = "polar_credits_webhook_request_seconds"
START_ERRORS = "polar_credits_temporal_start_errors_total"

# Polar answers within 10 s or retries; the service aims at milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Polar's webhook event types, as the polar-sdk the service runs lists them. Each is a label
# value; any other type, even correctly signed, counts as "other": a sender of made-up types
# must not add a series per type.
POLAR_EVENT_TYPES = frozenset(get_args(WebhookEventType))
OTHER_EVENT = "other"
NO_EVENT = "none"  # refused before the event type was read (bad signature, bad body)


def event_label(event_type: str | None) -> str:
    if event_type is None:
        return NO_EVENT
    return event_type if event_type in POLAR_EVENT_TYPES else OTHER_EVENT


class _SlowClients(Collector):
    """Counted below the app, by the HTTP protocol (api/server.py), once per process."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            SLOW_CLIENTS,
            "Connections closed because a request's headers or body did not arrive in time, "
            "by phase.",
            labels=["phase"],
        )
        for phase, value in sorted(SLOW_CLIENTS_CLOSED.items()):
            family.add_metric([phase], value)
        yield family


class Metrics:
    """The API's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            WEBHOOKS,
            "Webhook requests by how they were answered.",
            ["outcome"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            DELIVERIES,
            "Webhook requests by event type (`none` before it was read, `other` when "
            "unexpected) and outcome.",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self.unknown_values = Counter(
            UNKNOWN_VALUES,
            "order.paid deliveries holding a value this release does not know; nothing was "
            "granted for them.",
            ["field"],
            registry=self.registry,
        )
        self.start_errors = Counter(
            START_ERRORS,
            "Workflow starts or signals Temporal did not take, by run kind and cause.",
            ["workflow", "cause"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            WEBHOOK_SECONDS,
            "Time to answer POST /webhooks/polar, from its headers to the answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SlowClients())
        self._counters = {
            WEBHOOKS: self.webhooks,
            UNKNOWN_VALUES: self.unknown_values,
            DELIVERIES: self.deliveries,
            START_ERRORS: self.start_errors,
        }

    def count(self, name: str, **labels: str) -> None:
        self._counters[name].labels(**labels).inc()

    def webhook(self, outcome: str, event_type: str | None) -> None:
        """One webhook answered: by outcome, and by event type and outcome."""
        self.webhooks.labels(outcome=outcome).inc()
        self.deliveries.labels(event_type=event_label(event_type), outcome=outcome).inc()

    def value(self, name: str, **labels: str) -> int:
        sample = self.registry.get_sample_value(name, labels)
        return int(sample or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedWebhookRoute(APIRoute):
    """Observes each request's handling time in `polar_credits_webhook_request_seconds`,
    whatever the answer (an error answer is raised through here)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def timed(request: Request) -> Response:
            started = time.perf_counter()
            try:
                return await handler(request)
            finally:
                metrics: Metrics = request.app.state.metrics
                metrics.webhook_seconds.observe(time.perf_counter() - started)

        return timed


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the webhook edge",
)
async def metrics(request: Request) -> Response:
    return Response(
        request.app.state.metrics.render(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )
