"""The naive inline webhook handler, as Polar's guide shows it: the baseline for tools.bench.burst.

Verify the Standard Webhooks signature, parse `order.paid`, call `events.ingest` inline with
one event for the order (its external_id is the order id, so Polar dedupes redeliveries),
answer 2xx; on any Polar error answer 500, so Polar retries the delivery later. No queue, no
workflow, no pacing: every delivery is one Polar call, made when the delivery arrives.

Run it (tools.bench.burst does) as its own process:

    python -m uvicorn --factory tools.bench.naive:app_from_env --host 127.0.0.1 --port 8010

with POLAR_ACCESS_TOKEN, POLAR_API_URL (host root, e.g. the stand-in) and POLAR_WEBHOOK_SECRET
set; POLAR_TIMEOUT_SECONDS (default 5, polar-sdk's) bounds one Polar call.
"""

from __future__ import annotations

import json
import logging
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from polar.base import PolarDeserializationError, deserialize
from polar.v2026_10 import PolarAsync
from polar.v2026_10.webhooks import WebhookOrderPaidPayload
from standardwebhooks.webhooks import WebhookVerificationError

from polar_credits.api.webhooks import polar_verifier

log = logging.getLogger("bench.naive")

EVENT_NAME = "api_usage"  # the demo meter's event (examples/demo-rules.toml)
UNITS = 10  # what the demo rules grant for the Starter pack
SOURCE = "naive-inline"


def grant_event(order_id: str, customer_id: str) -> dict:
    """One negative event per order; the order id is the idempotency key."""
    return {
        "name": EVENT_NAME,
        "customer_id": customer_id,
        "external_id": order_id,
        "metadata": {"units": -UNITS, "order_id": order_id, "source": SOURCE},
    }


def create_app(token: str, api_url: str, secret: str, timeout: float = 5.0) -> FastAPI:
    app = FastAPI(title="naive inline Polar webhook handler", docs_url=None, redoc_url=None)
    verifier = polar_verifier(secret)
    polar = PolarAsync(token, base_url=api_url, timeout=timeout)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/webhooks/polar")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            verifier.verify(body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError):
            return JSONResponse({"detail": "bad signature"}, status_code=403)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "not JSON"}, status_code=400)
        if not isinstance(payload, dict) or payload.get("type") != "order.paid":
            return JSONResponse({"status": "ignored"}, status_code=202)
        try:
            order = deserialize(payload, WebhookOrderPaidPayload).data
        except PolarDeserializationError:
            return JSONResponse({"detail": "not an order.paid payload"}, status_code=400)
        try:
            answer = await polar.events.ingest(events=[grant_event(order.id, order.customer_id)])
        except Exception as exc:  # any Polar error: 500, and Polar will redeliver
            log.warning("order %s: Polar error %s; answering 500", order.id, type(exc).__name__)
            return JSONResponse({"detail": "Polar error"}, status_code=500)
        return JSONResponse(
            {"status": "granted", "inserted": answer.inserted, "duplicates": answer.duplicates}
        )

    return app


def app_from_env() -> FastAPI:
    return create_app(
        os.environ["POLAR_ACCESS_TOKEN"],
        os.environ["POLAR_API_URL"],
        os.environ["POLAR_WEBHOOK_SECRET"],
        float(os.environ.get("POLAR_TIMEOUT_SECONDS") or 5.0),
    )
