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
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS) as client:
            response = await client.post(target.url, content=body.encode(), headers=headers)
    except httpx.HTTPError as e:
        # Polar counts a timeout or refused connection as a failed attempt: say so.
        return {**result, "status_code": None, "body": f"delivery failed: {type(e).__name__}"}
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text
    return {**result, "status_code": response.status_code, "body": answer}
