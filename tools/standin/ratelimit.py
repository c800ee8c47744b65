"""Polar's rate limit on /v1: N requests per organization per sliding 60 s window.

Over it: 429, empty body, integer retry-after (whole seconds until a slot frees, at least 1).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tools.standin.seed import ORGANIZATION_ID

PRESETS = {"sandbox": 100, "production": 500}
DEFAULT_PER_MINUTE = PRESETS["production"]
WINDOW_SECONDS = 60.0


class RateLimiter:
    """Sliding window log: a request is allowed when fewer than N were allowed in the last 60 s."""

    def __init__(self, per_minute: int = DEFAULT_PER_MINUTE) -> None:
        self._lock = threading.Lock()
        self.per_minute = per_minute
        self._allowed: dict[str, deque[float]] = {}

    def set(self, per_minute: int) -> None:
        """New limit, fresh window: tests start from a known state."""
        with self._lock:
            self.per_minute = per_minute
            self._allowed.clear()

    def check(self, organization_id: str = ORGANIZATION_ID) -> int | None:
        """Counts the request if allowed (None); else the whole seconds to wait (>= 1)."""
        # Real monotonic time: the limit is about real request rates, not the injectable clock.
        at = time.monotonic()
        with self._lock:
            window = self._allowed.setdefault(organization_id, deque())
            while window and window[0] <= at - WINDOW_SECONDS:
                window.popleft()
            if len(window) < self.per_minute:
                window.append(at)
                return None
            # Rejected requests do not count; the oldest allowed one frees the next slot.
            return max(1, math.ceil(window[0] + WINDOW_SECONDS - at))

    def state(self, organization_id: str = ORGANIZATION_ID) -> dict:
        at = time.monotonic()
        with self._lock:
            window = self._allowed.get(organization_id, deque())
            used = sum(1 for t in window if t > at - WINDOW_SECONDS)
            return {"per_minute": self.per_minute, "window": "sliding 60s", "used": used}


def too_many(retry_after: int) -> Response:
    return Response(status_code=429, headers={"retry-after": str(retry_after)})


admin = APIRouter(prefix="/admin")


@admin.get("/rate-limit")
async def admin_rate_limit_get(request: Request) -> dict:
    return request.app.state.rate_limit.state()


@admin.post("/rate-limit")
async def admin_rate_limit_set(request: Request) -> Response:
    try:
        body = await request.json()
        per_minute = body["per_minute"]
    except (ValueError, TypeError, KeyError):
        per_minute = None
    if not isinstance(per_minute, int) or isinstance(per_minute, bool) or per_minute < 1:
        return JSONResponse(
            {"error": "BadRequest", "detail": "per_minute must be an integer >= 1"},
            status_code=400,
        )
    limiter: RateLimiter = request.app.state.rate_limit
    limiter.set(per_minute)
    return JSONResponse(limiter.state())


def install(app: FastAPI, per_minute: int) -> RateLimiter:
    app.state.rate_limit = RateLimiter(per_minute)
    app.include_router(admin)
    return app.state.rate_limit
