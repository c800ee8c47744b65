"""The body of every error answer (FastAPI's own shape: `{"detail": "..."}`), so the OpenAPI
page documents each route's errors; and the app's answer to a request that fails validation."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

# What one validation answer may hold: enough to see each problem, never the input itself.
MAX_ERRORS = 20
MAX_LOC_TEXT = 100
MAX_MESSAGE = 300


class Problem(BaseModel):
    detail: str


async def validation_problem(request: Request, exc: RequestValidationError) -> Response:
    """422 in FastAPI's documented shape (`{"detail": [{"type", "loc", "msg"}]}`), without the
    `input` and `ctx` FastAPI's own handler echoes: the input may be huge, personal, or hold
    what no encoder writes (a lone surrogate, NaN), and the answer must never fail to encode.
    ASCII JSON, every text cut short and made encodable."""
    detail = [
        {
            "type": _text(error.get("type"), 60),
            "loc": [p if isinstance(p, int) else _text(p, MAX_LOC_TEXT) for p in error["loc"]]
            if isinstance(error.get("loc"), list | tuple)
            else [],
            "msg": _text(error.get("msg"), MAX_MESSAGE),
        }
        for error in exc.errors()[:MAX_ERRORS]
    ]
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _text(value: Any, limit: int) -> str:
    text = str(value)[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
