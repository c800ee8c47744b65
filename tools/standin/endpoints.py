"""Webhook endpoints registered through Polar's API (`POST/PATCH/DELETE /v1/webhooks/endpoints`),
as `polar-credits setup` registers them, with Polar's shapes, validation and generated secret.

They are a catalogue only: the stand-in still delivers to its one configured target
(`--webhook-url`, `POST /admin/webhook-target`), which the list shows first as before.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tools.standin.clock import iso, now
from tools.standin.ingest import error
from tools.standin.seed import ORGANIZATION_ID
from tools.standin.store import Store, new_id

API_VERSIONS = ("2026-04", "2026-10")
FORMATS = ("raw", "discord", "slack")
# Polar's WebhookEventType (server/polar/models/webhook_endpoint.py), API version 2026-10.
EVENT_TYPES = frozenset(
    {
        "checkout.created", "checkout.updated", "checkout.expired",
        "customer.created", "customer.updated", "customer.deleted", "customer.state_changed",
        "customer_seat.assigned", "customer_seat.claimed", "customer_seat.revoked",
        "member.created", "member.updated", "member.deleted",
        "order.created", "order.updated", "order.paid", "order.refunded",
        "subscription.created", "subscription.updated", "subscription.active",
        "subscription.canceled", "subscription.uncanceled", "subscription.cycled",
        "subscription.revoked", "subscription.past_due", "subscription.paused",
        "subscription.resumed", "subscription.migrated",
        "refund.created", "refund.updated", "product.created", "product.updated",
        "discount.created", "discount.updated", "discount.deleted",
        "benefit.created", "benefit.updated",
        "benefit_grant.created", "benefit_grant.cycled", "benefit_grant.updated",
        "benefit_grant.revoked", "organization.updated",
    }
)  # fmt: skip
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registered_webhook_endpoints (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, name TEXT, api_version TEXT NOT NULL,
    format TEXT NOT NULL, secret TEXT NOT NULL, events TEXT NOT NULL,
    enabled INTEGER NOT NULL, created_at REAL NOT NULL, modified_at REAL
);
"""


class Endpoints:
    """The registered endpoints, in the stand-in's database (kept across restarts)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        with store.connection() as db:
            db.executescript(_SCHEMA)

    def list(self) -> list[dict[str, Any]]:
        with self._store.connection() as db:
            rows = db.execute(
                "SELECT * FROM registered_webhook_endpoints ORDER BY created_at, id"
            ).fetchall()
        return [_decoded(dict(r)) for r in rows]

    def get(self, endpoint_id: str) -> dict[str, Any] | None:
        with self._store.connection() as db:
            row = db.execute(
                "SELECT * FROM registered_webhook_endpoints WHERE id = ?", (endpoint_id,)
            ).fetchone()
        return _decoded(dict(row)) if row else None

    def create(self, *, url: str, name: str | None, api_version: str, format: str,
               events: list[str]) -> dict[str, Any]:  # fmt: skip
        endpoint_id = new_id()
        # Polar: generate_token(prefix="whsec_"), a URL-safe random token.
        secret = "whsec_" + secrets.token_urlsafe(32)
        with self._store.connection() as db:
            db.execute(
                "INSERT INTO registered_webhook_endpoints VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, NULL)",
                (endpoint_id, url, name, api_version, format, secret, json.dumps(events), now()),
            )
        return self.get(endpoint_id)

    def update(self, endpoint_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        columns = {k: json.dumps(v) if k == "events" else v for k, v in changes.items()}
        columns["modified_at"] = now()
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self._store.connection() as db:
            db.execute(
                f"UPDATE registered_webhook_endpoints SET {assignments} WHERE id = ?",
                (*columns.values(), endpoint_id),
            )
        return self.get(endpoint_id)

    def delete(self, endpoint_id: str) -> None:
        with self._store.connection() as db:
            db.execute("DELETE FROM registered_webhook_endpoints WHERE id = ?", (endpoint_id,))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["events"] = json.loads(row["events"])
    row["enabled"] = bool(row["enabled"])
    return row


def endpoint_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "created_at": iso(row["created_at"]),
        "modified_at": iso(row["modified_at"]) if row["modified_at"] else None,
        "id": row["id"],
        "url": row["url"],
        "name": row["name"],
        "api_version": row["api_version"],
        "format": row["format"],
        "secret": row["secret"],
        "organization_id": ORGANIZATION_ID,
        "events": row["events"],
        "enabled": row["enabled"],
        "uses_standard_webhook_signature": False,
    }


# -- validation, as Polar's WebhookEndpointCreate/Update schemas ----------------------------
def url_problem(url: Any) -> str | None:
    """Polar takes only https URLs to a public host (server/polar/webhook/schemas.py)."""
    if not isinstance(url, str) or not url.strip():
        return "Field required"
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        return "URL scheme should be 'https'"
    host = parts.hostname
    if host in _LOCAL_HOSTS or f"[{host}]" in _LOCAL_HOSTS:
        return "Webhook URLs cannot point to localhost or private IP addresses."
    try:
        if not ipaddress.ip_address(host).is_global:
            return "Webhook URLs cannot point to localhost or private IP addresses."
    except ValueError:
        pass
    return None


def body_errors(body: dict[str, Any], *, create: bool) -> list[dict[str, Any]]:
    errors = []
    if create or body.get("url") is not None:
        if problem := url_problem(body.get("url")):
            errors.append(error(["body", "url"], problem, "url_parsing", body.get("url")))
    if create or body.get("format") is not None:
        if body.get("format") not in FORMATS:
            errors.append(
                error(["body", "format"], "Input should be 'raw', 'discord' or 'slack'",
                      "literal_error", body.get("format"))
            )  # fmt: skip
    if create or body.get("events") is not None:
        events = body.get("events")
        if not isinstance(events, list):
            errors.append(error(["body", "events"], "Input should be a valid list", "list_type"))
        else:
            for i, event in enumerate(events):
                if event not in EVENT_TYPES:
                    errors.append(
                        error(["body", "events", i], "Input should be a webhook event type",
                              "enum", event)
                    )  # fmt: skip
    if body.get("api_version") is not None and body["api_version"] not in API_VERSIONS:
        errors.append(
            error(["body", "api_version"], "Input should be '2026-04' or '2026-10'",
                  "literal_error", body["api_version"])
        )  # fmt: skip
    if create and body.get("organization_id") is not None:
        errors.append(
            error(["body", "organization_id"], "Setting organization_id is disallowed when "
                  "using an organization token.", "organization_token")
        )  # fmt: skip
    return errors


# -- routes --------------------------------------------------------------------------------
router = APIRouter(prefix="/v1/webhooks/endpoints")


def _endpoints(request: Request) -> Endpoints:
    return request.app.state.endpoints


def _not_found() -> JSONResponse:
    return JSONResponse({"error": "ResourceNotFound", "detail": "Not found"}, status_code=404)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@router.post("")
@router.post("/")
async def endpoints_create(request: Request) -> Response:
    body = await _body(request)
    if errors := body_errors(body, create=True):
        return JSONResponse({"detail": errors}, status_code=422)
    row = _endpoints(request).create(
        url=body["url"].strip(),
        name=body.get("name"),
        api_version=body.get("api_version") or "2026-10",
        format=body["format"],
        events=list(body["events"]),
    )
    return JSONResponse(endpoint_json(row), status_code=201)


@router.patch("/{endpoint_id}")
async def endpoints_update(request: Request, endpoint_id: str) -> Response:
    endpoints = _endpoints(request)
    if endpoints.get(endpoint_id) is None:
        return _not_found()
    body = await _body(request)
    if errors := body_errors(body, create=False):
        return JSONResponse({"detail": errors}, status_code=422)
    changes = {
        key: body[key]
        for key in ("url", "name", "api_version", "format", "events", "enabled")
        if body.get(key) is not None
    }
    if "url" in changes:
        changes["url"] = changes["url"].strip()
    return JSONResponse(endpoint_json(endpoints.update(endpoint_id, changes)))


@router.patch("/{endpoint_id}/secret")
async def endpoints_reset_secret(request: Request, endpoint_id: str) -> Response:
    endpoints = _endpoints(request)
    if endpoints.get(endpoint_id) is None:
        return _not_found()
    row = endpoints.update(endpoint_id, {"secret": "whsec_" + secrets.token_urlsafe(32)})
    return JSONResponse(endpoint_json(row))


@router.delete("/{endpoint_id}")
async def endpoints_delete(request: Request, endpoint_id: str) -> Response:
    endpoints = _endpoints(request)
    if endpoints.get(endpoint_id) is None:
        return _not_found()
    endpoints.delete(endpoint_id)
    return Response(status_code=204)


def install(app: FastAPI) -> Endpoints:
    """Before delivery.install: its GET routes list these endpoints after the target."""
    app.state.endpoints = Endpoints(app.state.store)
    app.include_router(router)
    return app.state.endpoints
