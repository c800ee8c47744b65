"""What an operator route answers when Temporal refuses or fails a call: one mapping for all.

Temporal answers a request it can never take (a payload over its blob size limit, a value out
of range, a precondition that does not hold) with a permanent status: retrying cannot help, so
the operator is told what was wrong (422), not "try again". Only what may pass with time
(unavailable, deadline exceeded, throttled, a connection not made yet) is 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

# The caller's request can never succeed as it is.
PERMANENT = frozenset(
    {
        RPCStatusCode.INVALID_ARGUMENT,
        RPCStatusCode.OUT_OF_RANGE,
        RPCStatusCode.FAILED_PRECONDITION,
    }
)
MAX_REASON = 300


def temporal_error(exc: Exception) -> HTTPException:
    """The answer for `exc`, raised by a Temporal client call (RPCError, or RuntimeError and
    TimeoutError when no connection could be made in time)."""
    if isinstance(exc, RPCError) and exc.status in PERMANENT:
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"Temporal refused the request ({exc.status.name}): {exc.message[:MAX_REASON]}",
        )
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"Temporal is unavailable ({type(exc).__name__})"
    )


# The largest workflow input an operator route starts, encoded (payload codec included): far
# under Temporal's 2 MB blob limit (and its 512 KiB warning), so a history stays readable and
# a continued-as-new run can carry it. A larger request is refused before Temporal sees it.
MAX_WORKFLOW_INPUT_BYTES = 512 * 1024


async def check_input_size(temporal: Client, input: Any, what: str) -> None:
    """413 when `input`, encoded as Temporal would store it, exceeds MAX_WORKFLOW_INPUT_BYTES."""
    payloads = await temporal.data_converter.encode([input])
    size = sum(payload.ByteSize() for payload in payloads)
    if size > MAX_WORKFLOW_INPUT_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{what} is {size // 1024} KiB once encoded; a run's input may be at most "
            f"{MAX_WORKFLOW_INPUT_BYTES // 1024} KiB: split it into smaller requests.",
        )
