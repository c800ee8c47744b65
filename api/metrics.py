"""`GET /metrics`: what the webhook edge did, as Prometheus counters, for operators.

Counters live in the process (one API process, one set); scrape every API process.
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from api.server import SLOW_CLIENTS_CLOSED

router = APIRouter(tags=["operations"])

WEBHOOKS = "polar_credits_webhooks_total"
UNKNOWN_VALUES = "polar_credits_webhook_unknown_values_total"
SLOW_CLIENTS = "polar_credits_slow_clients_closed_total"

HELP = {
    WEBHOOKS: "Webhook requests by how they were answered.",
    UNKNOWN_VALUES: "order.paid deliveries holding a value this release does not know; "
    "nothing was granted for them.",
    SLOW_CLIENTS: "Connections closed because a request's headers or body did not arrive "
    "in time, by phase.",
}


class Metrics:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def count(self, name: str, **labels: str) -> None:
        self.counts[(name, tuple(sorted(labels.items())))] += 1

    def value(self, name: str, **labels: str) -> int:
        return self.counts[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        lines = []
        samples = dict(self.counts)
        # Counted below the app, by the HTTP protocol (api/server.py).
        for phase, value in SLOW_CLIENTS_CLOSED.items():
            samples[(SLOW_CLIENTS, (("phase", phase),))] = value
        for name in sorted({name for name, _ in samples} | set(HELP)):
            lines.append(f"# HELP {name} {HELP.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for (sample, labels), value in sorted(samples.items()):
                if sample == name:
                    lines.append(f"{name}{_labels(labels)} {value}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_quote(value)}"' for key, value in labels)
    return "{" + inner + "}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus counters of the webhook edge",
)
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        request.app.state.metrics.render(), media_type="text/plain; version=0.0.4"
    )
