"""Signs webhook bodies the way Polar does, so tests can forge good and bad deliveries."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def polar_signed_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: float | None = None
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{secrets.token_hex(12)}"
    ts = time.time() if timestamp is None else timestamp
    signer = Webhook(base64.b64encode(secret.encode()).decode())
    signature = signer.sign(webhook_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(ts)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
