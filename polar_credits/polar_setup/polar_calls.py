"""Setup's calls to Polar: one call with 429s waited out and 401 as TokenRefused, every page
of a list, and the detail of a refusal."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from polar.base import PolarClientError, PolarRateLimitError

MAX_RATE_LIMIT_WAITS = 5
T = TypeVar("T")


class TokenRefused(Exception):
    """Polar answered 401: the token is wrong, revoked, or from the other server."""


async def call_polar(make: Callable[[], Awaitable[T]]) -> T:
    """One Polar call; a 429 is waited out (Polar's retry-after), a 401 is TokenRefused."""
    for _ in range(MAX_RATE_LIMIT_WAITS):
        try:
            return await make()
        except PolarRateLimitError as exc:
            await asyncio.sleep(min(exc.retry_after or 5, 60))
        except PolarClientError as exc:
            if exc.status_code == 401:
                raise TokenRefused(str(exc.error)) from None
            raise
    return await make()


async def all_items(pages: Callable[[int], Awaitable[Any]]) -> list[Any]:
    items: list[Any] = []
    page = 1
    while True:
        answer = await call_polar(functools.partial(pages, page))
        items += answer.items
        if page >= answer.pagination.max_page:
            return items
        page += 1


def error_detail(exc: PolarClientError) -> str:
    error = exc.error
    try:
        body = json.loads(error) if isinstance(error, str) else error
    except ValueError:
        return str(error)[:300]
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
            for d in body["detail"]
            if isinstance(d, dict)
        )
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error_description") or body)[:300]
    return str(error)[:300]
