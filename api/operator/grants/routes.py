"""The grants endpoints: `GET /grants`, `GET /grants/{id}`, `POST /grants`,
`POST /grants/{id}/revoke` and `POST /orders/{id}/rerun`. Thin: each validates its request and
hands it to the service (`reads` to list and show, `service` to act)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.operator.auth import OPERATOR, WriterDep
from polar_credits.api.operator.grants import reads, service
from polar_credits.api.operator.grants.query import ID_VALUE, STATUS_VALUE, GrantKind, list_query
from polar_credits.api.operator.grants.schemas import (
    GrantDetail,
    GrantId,
    GrantPage,
    ManualGrantBody,
    ManualGrantView,
    OrderId,
    RerunView,
    RevokeBody,
    RevokeView,
    UtcMoment,
)
from polar_credits.api.operator.route import WRITER_ANSWER, OperatorRoute
from polar_credits.api.problems import Problem

router = APIRouter(tags=["grants"], dependencies=[OPERATOR], route_class=OperatorRoute)

MAX_PAGE = 100


@router.get(
    "/grants",
    response_model=GrantPage,
    summary="List grant runs (order, allowance, manual, revoke), newest first",
    responses={
        422: {"model": Problem, "description": "A bad filter, or a page_token it never issued."},
        503: {"model": Problem, "description": "Temporal is unavailable; try again."},
    },
)
async def list_grants(
    temporal: TemporalDep,
    settings: SettingsDep,
    kind: Annotated[list[GrantKind] | None, Query(description="Default: every kind.")] = None,
    customer_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    order_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    subscription_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    product_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    status_: Annotated[
        str | None, Query(alias="status", pattern=STATUS_VALUE, description="CreditStatus")
    ] = None,
    started_after: Annotated[UtcMoment | None, Query(description="Start time from (ISO)")] = None,
    started_before: Annotated[UtcMoment | None, Query(description="Start time until (ISO)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    page_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> GrantPage:
    query = list_query(
        kind or list(GrantKind),
        customer_id=customer_id,
        order_id=order_id,
        subscription_id=subscription_id,
        product_id=product_id,
        status_=status_,
        started_after=started_after,
        started_before=started_before,
    )
    return await reads.list_grants(temporal, settings, query, limit, page_token)


@router.get(
    "/grants/{grant_id}",
    response_model=GrantDetail,
    summary="One grant run: its decision, events, verification and Temporal UI link",
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def show_grant(
    grant_id: GrantId, settings: SettingsDep, temporal: TemporalDep
) -> GrantDetail:
    return await reads.show_grant(temporal, settings, grant_id)


@router.post(
    "/grants",
    response_model=ManualGrantView,
    status_code=201,
    summary="Grant units by hand (idempotent by key)",
    responses={
        200: {"model": ManualGrantView, "description": "This key's grant already exists."},
        **WRITER_ANSWER,
        409: {"model": Problem, "description": "The key was used with another body."},
        422: {"model": Problem, "description": "Bad request, or an unknown meter."},
        503: {"model": Problem},
    },
)
async def create_grant(
    body: ManualGrantBody,
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> JSONResponse:
    rules = request.app.state.rules
    view, code = await service.create_manual_grant(temporal, settings, rules, body, operator.name)
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


@router.post(
    "/grants/{grant_id}/revoke",
    response_model=RevokeView,
    status_code=201,
    summary="Take a grant back once, capped at the customer's balance",
    responses={
        200: {"model": RevokeView, "description": "This grant was revoked before: that revoke."},
        202: {"model": RevokeView, "description": "Still running: GET /grants/{id} later."},
        **WRITER_ANSWER,
        404: {"model": Problem},
        409: {"model": Problem, "description": "The run granted nothing that can be revoked."},
        422: {"model": Problem},
        502: {"model": Problem, "description": "The revoke failed (its reason); nothing taken."},
    },
)
async def revoke_grant(
    grant_id: GrantId,
    body: RevokeBody,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> JSONResponse:
    view, code = await service.revoke_grant(temporal, settings, grant_id, body, operator.name)
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


@router.post(
    "/orders/{order_id}/rerun",
    response_model=RerunView,
    status_code=201,
    summary="Run an order's crediting again after its run failed",
    responses={
        **WRITER_ANSWER,
        404: {"model": Problem, "description": "No run for this order."},
        409: {"model": Problem, "description": "Its run granted, or still runs."},
        503: {"model": Problem},
    },
)
async def rerun_order(
    order_id: OrderId,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> RerunView:
    return await service.rerun_order(temporal, settings, order_id, operator.name)
