"""`POST /codec/encode`, `POST /codec/decode`: the codec endpoint the Temporal UI and CLI call
to show encrypted histories (docs/operator/encrypted-histories.md).

It speaks Temporal's codec-server protocol: a Payloads message as protobuf JSON
(`{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}`) in and out, 400
for a body or payload it cannot handle. The UI calls it from the browser, so it answers CORS
(preflight included) for the UI's origin only (TEMPORAL_UI_URL), and every answer, errors
included, carries the CORS headers the browser needs to show it. It holds the keys, so it is
an operator route; with encryption off it is not there (404).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from google.protobuf import json_format
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload, Payloads

from polar_credits.api.operator.auth import OPERATOR
from polar_credits.api.payloads import BodyTimeout, BodyTooLarge, read_capped_body
from polar_credits.api.problems import Problem
from polar_credits.codec import EncryptionCodec, PayloadDecryptionError
from polar_credits.settings import Settings

# Temporal caps a payload at 2 MiB (4 MiB a gRPC message); base64 adds a third. A page of a
# history's payloads fits; a larger body is not one the UI sends.
MAX_BODY_BYTES = 4 * 1024 * 1024
# What the UI sends: its JSON, its namespace, and (with "pass access token") a bearer token.
ALLOWED_HEADERS = "content-type, authorization, x-namespace"
PREFLIGHT_MAX_AGE_SECONDS = 600


class CorsRoute(APIRoute):
    """Adds the UI origin's CORS headers to every answer of the route, errors included:
    without them the browser hides a 401 or a 400 behind a bare "CORS error"."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            try:
                response = await handle(request)
            except HTTPException as exc:
                response = JSONResponse(
                    {"detail": exc.detail}, exc.status_code, headers=exc.headers
                )
            response.headers.update(_cors_headers(request))
            return response

        return with_cors


router = APIRouter(prefix="/codec", tags=["codec"], route_class=CorsRoute)


class CodecPayload(BaseModel):
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Metadata values, each base64"
    )
    data: str = Field(default="", description="The payload's bytes, base64")


class CodecPayloads(BaseModel):
    """Temporal's Payloads message in protobuf JSON."""

    payloads: list[CodecPayload]


def _ui_origin(settings: Settings) -> str:
    url = urlsplit(settings.temporal_ui_url)
    return f"{url.scheme}://{url.netloc}".lower()


def _cors_headers(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if origin is None or origin.lower() != _ui_origin(request.app.state.settings):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        # For the UI's "Include cross-origin credentials" (a cookie of a proxy in front).
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


async def _codec(request: Request) -> EncryptionCodec:
    codec: EncryptionCodec | None = request.app.state.payload_codec
    if codec is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "Encryption is off: the codec endpoint serves only when CREDITS_ENCRYPTION_KEYS "
            "and CREDITS_ENCRYPTION_KEY_ID are set.",
        )
    return codec


# Who may call it: the operator API's authentication (decoding reveals every payload), checked
# first like on every operator route; then, for an operator, 404 while encryption is off.
GUARDS = [OPERATOR, Depends(_codec)]

_ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Not a Payloads message, or a payload that fails."},
    401: {"model": Problem, "description": "No valid operator token."},
    404: {"model": Problem, "description": "Encryption (or the operator API) is off."},
    413: {"model": Problem, "description": "Body larger than 4 MiB."},
}
_BODY = {
    "requestBody": {
        "required": True,
        # The response model's schema, which FastAPI lists under components.
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CodecPayloads"}}},
    }
}


@router.post(
    "/encode",
    response_model=CodecPayloads,
    dependencies=GUARDS,
    responses=_ANSWERS,
    openapi_extra=_BODY,
    summary="Encrypt payloads under the active key (Temporal codec-server protocol)",
)
async def encode(request: Request, codec: Annotated[EncryptionCodec, Depends(_codec)]) -> Response:
    payloads = await _read_payloads(request)
    return _answer([codec.encrypt(payload) for payload in payloads])


@router.post(
    "/decode",
    response_model=CodecPayloads,
    dependencies=GUARDS,
    responses=_ANSWERS,
    openapi_extra=_BODY,
    summary="Decrypt payloads (Temporal codec-server protocol); plain ones come back as they are",
)
async def decode(request: Request, codec: Annotated[EncryptionCodec, Depends(_codec)]) -> Response:
    payloads = await _read_payloads(request)
    try:
        decoded = [codec.decrypt(payload) for payload in payloads]
    except PayloadDecryptionError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Cannot decode: {exc}.") from None
    return _answer(decoded)


@router.options("/encode", include_in_schema=False)
@router.options("/decode", include_in_schema=False)
async def preflight(request: Request) -> Response:
    """The browser's CORS preflight: it carries no token, so it is answered without one."""
    if not _cors_headers(request):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Origin {request.headers.get('origin')!r} is not the Temporal UI's "
            f"({_ui_origin(request.app.state.settings)}, from TEMPORAL_UI_URL).",
        )
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
        },
    )


async def _read_payloads(request: Request) -> Sequence[Payload]:
    body = await _read_body(request)
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise _bad("the JSON is nested too deeply") from None
    except ValueError as exc:  # includes a body that is not UTF-8
        raise _bad(f"the body is not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(parsed, dict):
        raise _bad('expected an object {"payloads": [...]}')
    message = Payloads()
    try:
        json_format.ParseDict(parsed, message)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise _bad(f"not a Payloads message: {str(exc)[:200]}") from None
    return message.payloads


async def _read_body(request: Request) -> bytes:
    seconds = request.app.state.settings.credits_api_body_timeout_seconds
    try:
        return await read_capped_body(request, MAX_BODY_BYTES, seconds)
    except BodyTooLarge:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"Request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.",
        ) from None
    except BodyTimeout:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT, f"Request body did not arrive within {seconds:g} s."
        ) from None


def _bad(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"Bad codec request: {reason}.")


def _answer(payloads: list[Payload]) -> JSONResponse:
    content = json_format.MessageToDict(Payloads(payloads=payloads))
    content.setdefault("payloads", [])
    return JSONResponse(content)
