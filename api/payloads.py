"""Reading a request body safely: capped in size and time, and JSON that is too deep, or text
Temporal cannot encode, refused with a short reason before anything else looks at it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

# Polar's payloads nest about six levels (event → order → product → prices → ...).
MAX_JSON_DEPTH = 32


class BadPayload(ValueError):
    """The body can never be processed; the message is a short reason for the sender."""


class BodyTooLarge(Exception):
    """The body is (or declares itself) larger than the route takes: answer 413."""


class BodyTimeout(Exception):
    """The body did not arrive in time: answer 408."""


async def read_capped_body(request: Request, max_bytes: int, seconds: float) -> bytes:
    """The whole body, refused as soon as it declares or grows past `max_bytes`, and cut off
    when it has not arrived within `seconds` (a client that trickles holds nothing long)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise BodyTooLarge
    except TimeoutError:
        raise BodyTimeout from None
    return bytes(body)


def parse_json(body: bytes, *, finite: bool = False) -> Any:
    """The parsed body, or BadPayload. `finite`: refuse NaN, Infinity and -Infinity, which
    Python's json accepts but no JSON standard does (the webhook tolerates them in fields it
    does not read, as Polar may add some; an operator's input is strict)."""
    try:
        payload = json.loads(body, parse_constant=_refuse_constant if finite else None)
    except RecursionError:
        raise BadPayload(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except BadPayload:
        raise
    except ValueError as exc:  # also not UTF-8, and integers of more than 4,300 digits
        raise BadPayload(f"Body is not valid JSON: {_first_line(exc)}") from None
    check_shape(payload)
    return payload


def _refuse_constant(name: str) -> Any:
    raise BadPayload(f"JSON holds {name}, which is not a number JSON allows")


def check_shape(payload: Any) -> None:
    """Iterative, so a hostile depth cannot exhaust the stack here either."""
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list) and depth > MAX_JSON_DEPTH:
            raise BadPayload(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value)


def _check_text(text: str) -> None:
    # json.loads accepts an escaped lone surrogate ("\ud800"), which no UTF-8 encoder
    # (Temporal's included) can write. Polar's own text never holds one.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPayload("JSON holds an invalid Unicode escape (a lone surrogate)") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]
