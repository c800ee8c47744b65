"""The body of every error answer (FastAPI's own shape: `{"detail": "..."}`), so the OpenAPI
page documents each route's errors."""

from __future__ import annotations

from pydantic import BaseModel


class Problem(BaseModel):
    detail: str
