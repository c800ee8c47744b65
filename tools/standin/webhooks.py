"""Signs and delivers the webhooks the stand-in sends, per Standard Webhooks as Polar does.

Polar's HMAC key is the raw UTF-8 of the whole secret string, "whsec_" prefix included.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from tools.standin.clock import now, wall
from tools.standin.payloads import webhook_body

DELIVERY_TIMEOUT_SECONDS = 10.0


@dataclass
class WebhookTarget:
    url: str | None = None
    secret: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url and self.secret)


def new_webhook_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    signer = Webhook(base64.b64encode(secret.encode()).decode())
    when = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signer.sign(webhook_id, when, body),
    }


async def deliver(
    target: WebhookTarget,
    webhook_id: str,
    event_type: str,
    payload: dict[str, Any],
    timestamp: int,
    *,
    timeout_seconds: float = DELIVERY_TIMEOUT_SECONDS,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """POSTs one signed delivery and reports what the receiver answered."""
    body = json.dumps(payload, separators=(",", ":"))
    headers = {
        "content-type": "application/json",
        "user-agent": "polar-standin",
        **sign(target.secret, webhook_id, timestamp, body),
    }
    result: dict[str, Any] = {"webhook_id": webhook_id, "type": event_type}
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_seconds) as own:
                response = await own.post(target.url, content=body.encode(), headers=headers)
        else:
            response = await client.post(
                target.url, content=body.encode(), headers=headers, timeout=timeout_seconds
            )
    except httpx.HTTPError as e:
        # Polar counts a timeout or refused connection as a failed attempt: say so.
        return {**result, "status_code": None, "body": f"delivery failed: {type(e).__name__}"}
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text
    return {**result, "status_code": response.status_code, "body": answer}


class Dispatcher:
    """The one way the stand-in emits a webhook event: domain code says *what* happened,
    the dispatcher decides how it reaches the endpoint. With a delivery engine attached
    (tools.standin.delivery) that means stored events, retries, disabling and the log."""

    def __init__(self, target: WebhookTarget) -> None:
        self.engine: Any = None
        self._target = target

    @property
    def target(self) -> WebhookTarget:
        return self._target

    @target.setter
    def target(self, target: WebhookTarget) -> None:
        # Setting the target (POST /admin/webhook-target) re-enables a disabled endpoint.
        self._target = target
        if self.engine is not None:
            self.engine.log.enable()

    async def emit(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        webhook_id: str | None = None,
        timestamp_offset: int = 0,
        sent_at: float | None = None,
    ) -> dict[str, Any] | None:
        """Deliver one event now and report the endpoint's first answer (None: no target set).

        Keys: webhook_id, type, status_code, body, event_id, attempt; a disabled endpoint
        gives status "endpoint_disabled" and status_code None."""
        if self.engine is not None:
            return await self.engine.emit(
                event_type,
                data,
                webhook_id=webhook_id,
                timestamp_offset=timestamp_offset,
                sent_at=sent_at,
            )
        if not self.target.configured:
            return None
        sent_at = now() if sent_at is None else sent_at
        return await deliver(
            self.target,
            webhook_id or new_webhook_id(),
            event_type,
            webhook_body(event_type, data, sent_at),
            int(wall()) + timestamp_offset,
        )

    async def emit_many(
        self, events: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """Emit the events of one operation as a batch (in order unless the webhook mode
        says reorder); results in the order given."""
        if self.engine is not None:
            return await self.engine.emit_many(events)
        return [await self.emit(event_type, data) for event_type, data in events]
