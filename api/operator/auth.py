"""Bearer-token authentication of the operator API, by name and scope.

The tokens come from CREDITS_OPERATOR_TOKENS, CREDITS_OPERATOR_TOKENS_FILE and
CREDITS_OPERATOR_TOKEN (polar_credits/operators.py), read once by `create_app`. With none set
the operator API is off: every operator route answers 404, as if it were not there. The
webhook never uses this: it is authenticated by Polar's signature only.

- `Depends(require_operator)` (or `OperatorDep`): any valid token, read or write; it yields
  the `Operator` (name, scope). Every operator router carries it (`OPERATOR`).
- `WriterDep` on a route that changes something: a read token gets 403 there.
- Every operator router is also built with `route_class=OperatorRoute` (api/operator/route.py),
  which runs the same checks from the headers before the body is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from polar_credits.operators import OperatorToken, Scope, authenticate

_bearer = HTTPBearer(
    auto_error=False,
    description="An operator token (CREDITS_OPERATOR_TOKENS, CREDITS_OPERATOR_TOKENS_FILE or "
    "CREDITS_OPERATOR_TOKEN); routes that change something need a `write` token.",
)


@dataclass(frozen=True)
class Operator:
    """Who called: the token's name (recorded on the runs it starts) and its scope."""

    name: str
    scope: Scope


async def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Operator:
    return operator_of(request, credentials.credentials if credentials is not None else "")


def operator_from_headers(request: Request) -> Operator:
    """The same check from the Authorization header alone, for OperatorRoute (api/operator/
    route.py), which runs it before the body is read; parsed as HTTPBearer parses it."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    return operator_of(request, credentials if scheme.lower() == "bearer" else "")


def operator_of(request: Request, given: str) -> Operator:
    """The operator whose token is `given`; 404 while the operator API is off, 401 for any
    other token (or none)."""
    tokens: tuple[OperatorToken, ...] = request.app.state.operator_tokens
    if not tokens:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "The operator API is off: set CREDITS_OPERATOR_TOKENS (or CREDITS_OPERATOR_TOKEN) "
            "to turn it on.",
        )
    token = authenticate(tokens, given)
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "A valid operator token is required (Authorization: Bearer <token>).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Operator(name=token.name, scope=token.scope)


async def require_writer(
    request: Request, operator: Annotated[Operator, Depends(require_operator)]
) -> Operator:
    check_writer(request, operator)
    return operator


def check_writer(request: Request, operator: Operator) -> None:
    """403 unless `operator` holds a write token."""
    if operator.scope != Scope.WRITE:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{request.method} {request.url.path} changes things: it needs a write token, and "
            f"{operator.name!r} has a read token.",
        )


# Every operator router is built with `dependencies=[OPERATOR]`; FastAPI resolves a dependency
# once per request, so a route's own `OperatorDep` or `WriterDep` costs nothing more.
OPERATOR = Depends(require_operator)
OperatorDep = Annotated[Operator, Depends(require_operator)]
WriterDep = Annotated[Operator, Depends(require_writer)]
