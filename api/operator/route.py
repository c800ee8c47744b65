"""The operator routes' request edge: the token first, then a capped, timed body.

FastAPI reads and parses a route's whole body before it resolves any dependency, so
`require_operator` alone would check the token of a 14 MB body only after holding all of it.
Every operator router uses `OperatorRoute` (FastAPI's "custom APIRoute class" pattern): it
authenticates from the headers (404 while the operator API is off, 401, and 403 for a read
token on a route that needs a write token) before reading a byte of the body, then reads the
body through `read_capped_body` (413 past MAX_BODY_BYTES, or as soon as Content-Length says
so; 408 past the body timeout) and parses it with `parse_json` (no lone surrogates, no deep
nesting, no NaN or Infinity: 422). The route's own dependencies (`OperatorDep`, `WriterDep`)
still run, for the operator's name and for the OpenAPI page's security scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from polar_credits.api.operator.auth import check_writer, operator_from_headers, require_writer
from polar_credits.api.payloads import (
    BadPayload,
    BodyTimeout,
    BodyTooLarge,
    parse_json,
    read_capped_body,
)
from polar_credits.api.problems import Problem

# The largest operator body: a rules preview takes a whole Polar order, which the webhook
# caps at 1 MiB too; a backfill's 10,000 customer ids fit well within it.
MAX_BODY_BYTES = 1024 * 1024

# The edge's answers, added to each route's `responses` (the /docs page).
TOKEN_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid operator token."},
}
# A route that changes something answers a read token so (listed in its own `responses`).
WRITER_ANSWER: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "A read token: this needs a write token."},
}
BODY_ANSWERS: dict[int | str, dict[str, Any]] = {
    408: {"model": Problem, "description": "The body did not arrive in time."},
    413: {"model": Problem, "description": "Body larger than 1 MiB."},
}


class OperatorRoute(APIRoute):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        edge = {**TOKEN_ANSWERS, **(BODY_ANSWERS if self.body_field is not None else {})}
        self.responses = {**edge, **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        needs_writer = require_writer in _calls(self.dependant)
        takes_body = self.body_field is not None

        async def guarded(request: Request) -> Response:
            operator = operator_from_headers(request)
            if needs_writer:
                check_writer(request, operator)
            if takes_body:
                try:
                    await _read_json(request)
                except ClientDisconnect:
                    return Response(status_code=400)  # nobody reads it; nothing to log
            return await handle(request)

        return guarded


async def _read_json(request: Request) -> None:
    """Reads the body once, capped and timed, and leaves it (and its JSON) where FastAPI's
    handler reads it: Starlette's Request keeps both once read."""
    seconds = request.app.state.settings.credits_api_body_timeout_seconds
    try:
        body = await read_capped_body(request, MAX_BODY_BYTES, seconds)
    except BodyTooLarge:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"Request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB: an operator "
            "request is far smaller (split a backfill's customer list into several backfills).",
        ) from None
    except BodyTimeout:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT, f"Request body did not arrive within {seconds:g} s."
        ) from None
    request._body = body
    if body:
        try:
            request._json = parse_json(body, finite=True)
        except BadPayload as exc:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": str(exc)}]
            ) from None


def _calls(dependant: Any) -> set[Any]:
    found: set[Any] = set()
    for sub in dependant.dependencies:
        found |= {sub.call, *_calls(sub)}
    return found
