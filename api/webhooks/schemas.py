"""The webhook's bodies: Polar's event envelopes it reads, the answer it gives, and the
request schema the OpenAPI page shows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from polar_credits.orders import PaidOrder, PolarSubscription


class WebhookAnswer(BaseModel):
    status: Literal["started", "duplicate", "ignored", "refused", "signalled"]
    event_type: str
    workflow_id: str | None = None
    ui_url: str | None = None
    # The subscription's allowance run this delivery reached (rules with `every`).
    allowance_workflow_id: str | None = None
    detail: str | None = None


class PolarEvent(BaseModel):
    """The envelope of every Polar webhook; only `order.paid` starts a run."""

    type: str
    timestamp: str | None = None
    api_version: str | None = None
    data: PaidOrder


class PolarSubscriptionEvent(BaseModel):
    """A `subscription.*` webhook: it steers the subscription's allowance run."""

    type: str
    data: PolarSubscription


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined: a schema placed in an operation
    cannot refer to `#/$defs/...`, which would resolve against the whole document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
