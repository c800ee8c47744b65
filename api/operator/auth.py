"""Bearer-token authentication of the operator API.

The token is CREDITS_OPERATOR_TOKEN, compared in constant time. With the token unset the
operator API is off: every operator route answers 404, as if it were not there. The webhook
never uses this: it is authenticated by Polar's signature only.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="CREDITS_OPERATOR_TOKEN")


async def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = request.app.state.settings.credits_operator_token
    if token is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "The operator API is off: set CREDITS_OPERATOR_TOKEN to turn it on.",
        )
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "A valid operator token is required (Authorization: Bearer <CREDITS_OPERATOR_TOKEN>).",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Every operator router is built with `dependencies=[OPERATOR]`.
OPERATOR = Depends(require_operator)
