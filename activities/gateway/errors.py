"""Polar's errors in Temporal's terms: which failures retry, after how long, and with what
message (the service's own words and Polar's status, never Polar's answer)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from polar.base import (
    PolarClientError,
    PolarDeserializationError,
    PolarNetworkError,
    PolarRateLimitError,
    PolarServerError,
)
from polar.v2026_10.errors import HTTPValidationError
from temporalio.exceptions import ApplicationError

from polar_credits.activities.gateway.clock import last_answer_status
from polar_credits.models.grants import PolarErrorType

# Polar sends no retry-after on some 429s; a minute is one full window of its rate limit.
DEFAULT_RATE_LIMIT_WAIT = timedelta(seconds=60)
_MAX_ERROR_TEXT = 500


class PolarCallError(ApplicationError):
    """A failed call to Polar, as Temporal sees it: `status_code` is Polar's HTTP status
    (None when there was no answer). Its message never quotes Polar's answer: a response body
    can hold a customer's email or name, and the message reaches logs and histories."""

    def __init__(self, message: str, *, status_code: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code


def polar_failure(exc: Exception, action: str) -> ApplicationError:
    """Map a polar-sdk error to the ApplicationError that gives it the right retry behaviour.
    Only the status and a reason of the service's own words go in (Polar's validation
    errors keep their place and message); raise it `from None`, so no traceback quotes the
    SDK's error, whose text holds the whole response body."""
    status_code = getattr(exc, "status_code", None)
    if isinstance(exc, PolarRateLimitError):
        wait = retry_after(exc)
        return PolarCallError(
            f"Polar rate limit hit while {action}; retrying after {wait.total_seconds():.0f}s",
            status_code=429,
            type=PolarErrorType.RATE_LIMITED,
            next_retry_delay=wait,
        )
    if isinstance(exc, HTTPValidationError):
        return rejected(action, _validation_detail(exc))
    if isinstance(exc, PolarClientError) and exc.status_code in (401, 403):
        # Retry: the grant must survive until an operator fixes the token.
        return PolarCallError(
            f"Polar refused the access token while {action} ({exc.status_code}); "
            "check POLAR_ACCESS_TOKEN and its scopes (events:write, customer_meters:read)",
            status_code=exc.status_code,
            type=PolarErrorType.AUTH,
        )
    if isinstance(exc, PolarClientError) and exc.status_code == 422:
        return rejected(action, "Polar's answer named no field")
    if isinstance(exc, PolarServerError):
        return PolarCallError(
            f"Polar unavailable while {action}: it answered {exc.status_code}",
            status_code=status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarNetworkError):
        # httpx's words about the connection (a timeout, a refused connection): no answer.
        return PolarCallError(
            f"Polar unavailable while {action}: {_truncate(exc.message)}",
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarDeserializationError) and _is_client_error(last_answer_status()):
        status_code = last_answer_status()
        return PolarCallError(
            f"Polar answered {status_code} while {action}",
            status_code=status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarDeserializationError):
        return PolarCallError(
            f"Polar unavailable while {action}: its answer was not what its API documents",
            type=PolarErrorType.UNAVAILABLE,
        )
    if isinstance(exc, PolarClientError):
        return PolarCallError(
            f"Polar answered {exc.status_code} while {action}",
            status_code=exc.status_code,
            type=PolarErrorType.UNAVAILABLE,
        )
    return PolarCallError(f"Unexpected error while {action}: {type(exc).__name__}")


def _is_client_error(status_code: int | None) -> bool:
    return status_code is not None and 400 <= status_code < 500 and status_code != 429


def rejected(action: str, detail: str) -> ApplicationError:
    return PolarCallError(
        f"Polar rejected {action} (422): {detail}",
        status_code=422,
        type=PolarErrorType.GRANT_REJECTED,
        non_retryable=True,
    )


def retry_after(exc: PolarRateLimitError) -> timedelta:
    if exc.retry_after is None:
        return DEFAULT_RATE_LIMIT_WAIT
    return timedelta(seconds=exc.retry_after)


def is_rejection(exc: Exception) -> bool:
    """Polar refused the request itself (422): sending it again as it is cannot help."""
    return isinstance(exc, HTTPValidationError) or (
        isinstance(exc, PolarClientError)
        and not isinstance(exc, PolarRateLimitError)
        and exc.status_code == 422
    )


def rejected_events(exc: Exception) -> dict[int, list[Any]]:
    """Polar's 422 names each bad event by its place in the batch: {index: [detail items]}."""
    found: dict[int, list[Any]] = {}
    for item in _validation_items(exc):
        loc = list(_item_field(item, "loc") or [])
        if len(loc) >= 3 and loc[:2] == ["body", "events"] and isinstance(loc[2], int):
            found.setdefault(loc[2], []).append(item)
    return found


def event_rejection_detail(own: dict[int, list[Any]]) -> str:
    """What Polar said about one order's events, each placed by its index among that order's
    own events ({index within the order: [detail items]})."""
    return "; ".join(
        _describe(item, ["events", index, *list(_item_field(item, "loc"))[3:]])
        for index, items in sorted(own.items())
        for item in items
    )


def _validation_items(exc: Exception) -> list[Any]:
    error = getattr(exc, "error", None)
    if isinstance(error, dict):
        return list(error.get("detail") or [])
    return list(getattr(error, "detail", None) or [])


def _item_field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _describe(item: Any, loc: list[Any] | None = None) -> str:
    """An item of Polar's 422 about an event the service built (no personal data in it):
    the place and Polar's message. An item may also echo the input; it is left out."""
    loc = loc if loc is not None else list(_item_field(item, "loc") or [])
    msg = _item_field(item, "msg") or "invalid"
    where = ".".join(str(p) for p in loc)
    return f"{where}: {msg}" if where else str(msg)


def _validation_detail(exc: Exception) -> str:
    """Any other 422: the places and error types only. Polar's message may quote what it
    holds (a customer's email, say), and this text reaches logs and histories."""
    parts = [
        f"{'.'.join(str(p) for p in _item_field(item, 'loc') or []) or 'body'}: "
        f"{_item_field(item, 'type') or 'invalid'}"
        for item in _validation_items(exc)
    ]
    return _truncate("; ".join(parts) or "Polar's answer named no field")


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"
