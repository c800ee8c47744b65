"""Taking a delivery in: its body (capped in size and time), its Standard Webhooks signature,
and its payload checked against the event's model; each failure is a counted 4xx."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from polar_credits.api.payloads import BodyTimeout, BodyTooLarge, read_capped_body
from polar_credits.api.webhooks.answers import refuse

MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def polar_verifier(secret: str) -> Webhook:
    """Polar signs with the raw bytes of the whole secret string, `whsec_` prefix included."""
    return Webhook(base64.b64encode(secret.encode()).decode())


async def read_body(request: Request, seconds: float) -> bytes:
    try:
        return await read_capped_body(request, MAX_BODY_BYTES, seconds)
    except BodyTooLarge:
        raise refuse(request, 413, "too_large", "Request body is larger than 1 MiB") from None
    except BodyTimeout:
        raise refuse(
            request, 408, "body_timeout", f"Request body did not arrive within {seconds:g} s"
        ) from None


def verify_signature(request: Request, body: bytes) -> None:
    headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
    try:
        request.app.state.webhook_verifier.verify(body, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise refuse(request, 403, "bad_signature", f"Webhook signature rejected: {exc}") from None
    except UnicodeDecodeError:
        raise refuse(
            request, 403, "bad_signature", "Webhook signature rejected: body is not UTF-8"
        ) from None
    except (ValueError, binascii.Error):
        raise refuse(
            request, 403, "bad_signature", "Webhook signature rejected: malformed signature"
        ) from None


def parse_event(request: Request, payload: Any, model: type[BaseModel], what: str) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise refuse(
            request,
            400,
            "bad_request",
            f"Payload does not fit Polar's {what}: {where}: {first['msg']}",
        ) from None
