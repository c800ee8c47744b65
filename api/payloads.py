"""Reading a signed webhook body safely: JSON that is too deep, or text Temporal cannot
encode, is refused with a short reason before anything else looks at it."""

from __future__ import annotations

import json
from typing import Any

# Polar's payloads nest about six levels (event → order → product → prices → ...).
MAX_JSON_DEPTH = 32


class BadPayload(ValueError):
    """The body can never be processed; the message is a short reason for the sender."""


def parse_json(body: bytes) -> Any:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadPayload(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # also not UTF-8, and integers of more than 4,300 digits
        raise BadPayload(f"Body is not valid JSON: {_first_line(exc)}") from None
    check_shape(payload)
    return payload


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
