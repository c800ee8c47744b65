"""Polar's clock: the `Date` (and status) of the last answer Polar gave this task, noted by
polar-sdk's own request seam, so verification compares Polar's times only."""

from __future__ import annotations

import contextlib
import contextvars
import types
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Self

import httpx
from polar.base import AsyncClientBase

# Per task: each call to Polar runs in a task of its own, and reads its own answer's Date
# (and status) right after the call returns.
_answer_date: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "polar_date", default=None
)
# polar-sdk says an error body it cannot read is a deserialization error, without the
# status (a 404 from a path Polar does not route): the status is kept here.
_answer_status: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "polar_status", default=None
)


class AnswerNotingClient(AsyncClientBase):
    """The polar-sdk client a PolarAsync was built with (its base URL, token, timeout and
    connections, untouched), noting the Date and status of every answer. polar-sdk 1.0.2
    takes no httpx client of ours, but every service sends through `send_request`; services
    built on this client (`EventsAsync(client)`) send through it too."""

    def __init__(self, client: AsyncClientBase) -> None:
        # No super().__init__(): that would open a second, unused httpx client.
        self._sdk_client = client

    def build_request(self, *args: Any, **kwargs: Any) -> httpx.Request:
        return self._sdk_client.build_request(*args, **kwargs)

    async def send_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._sdk_client.send_request(request)
        _answer_date.set(response.headers.get("date"))
        _answer_status.set(response.status_code)
        return response

    async def __aenter__(self) -> Self:
        await self._sdk_client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: types.TracebackType | None = None,
    ) -> None:
        await self._sdk_client.__aexit__(exc_type, exc_val, exc_tb)


def last_answer_status() -> int | None:
    """The HTTP status of Polar's last answer in this task (None before any answer)."""
    return _answer_status.get()


def polar_time_after_call() -> datetime:
    """A time on Polar's clock no earlier than anything the last call stored.

    HTTP dates have whole seconds and are truncated, so the next second is the first that
    is surely after the call was handled.
    """
    date = _answer_date.get()
    with contextlib.suppress(TypeError, ValueError, IndexError):
        if date:
            return parsedate_to_datetime(date).astimezone(UTC) + timedelta(seconds=1)
    return datetime.now(UTC) + timedelta(seconds=1)
