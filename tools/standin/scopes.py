"""Organization tokens with fewer scopes (STANDIN_SCOPED_TOKENS), refused as Polar refuses them:
403 `insufficient_scope` on an endpoint whose scope the token lacks (polar/auth/dependencies.py).

The main token (`--token`) keeps every scope and is the only one the /admin surface takes.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

# /v1/<resource>: the scope family Polar's endpoints require.
_FAMILIES = {
    "events": "events",
    "customer-meters": "customer_meters",
    "meters": "meters",
    "products": "products",
    "orders": "orders",
    "subscriptions": "subscriptions",
    "customers": "customers",
    "webhooks": "webhooks",
    "refunds": "refunds",
}


def parse(text: str | None) -> dict[str, frozenset[str]]:
    """`{"<token>": "events:read meters:read", ...}` (a space-separated string or a list)."""
    if not text:
        return {}
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("STANDIN_SCOPED_TOKENS must be a JSON object: token -> scopes")
    return {
        str(token): frozenset(scopes.split() if isinstance(scopes, str) else map(str, scopes))
        for token, scopes in raw.items()
    }


def accepted(method: str, path: str) -> frozenset[str] | None:
    """The scopes any one of which lets a token make this call; None: no scope needed."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0] != "v1" or parts[1] not in _FAMILIES:
        return None
    family = _FAMILIES[parts[1]]
    if method in ("GET", "HEAD"):  # Polar's read dependencies take the write scope too
        return frozenset({f"{family}:read", f"{family}:write"})
    return frozenset({f"{family}:write"})


def refusal(method: str, path: str, scopes: frozenset[str]) -> JSONResponse | None:
    needed = accepted(method, path)
    if needed is None or needed & scopes:
        return None
    scope = " ".join(sorted(needed))
    body: dict[str, Any] = {
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the "
        "access token.",
    }
    return JSONResponse(
        body,
        status_code=403,
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
    )
