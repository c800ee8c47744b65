"""`POST /backfills`, `GET /backfills/{key}`: grant credits to many existing customers once.

The API never calls Polar: it starts (or finds) the backfill's workflow, keyed by the
operator's idempotency key, and reads its progress. The worker's BackfillWorkflow does the
listing and the granting through the gateway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import ui_summaries as ui
from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.operator.auth import OPERATOR, WriterDep
from polar_credits.api.operator.grants.query import ID_VALUE
from polar_credits.api.operator.route import WRITER_ANSWER, OperatorRoute
from polar_credits.api.operator.run_status import ENDED_UNFINISHED, chain_status_name
from polar_credits.api.operator.temporal_errors import check_input_size, temporal_error
from polar_credits.api.problems import Problem
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.backfills import (
    BACKFILL_KEY,
    MAX_CUSTOMER_ID_CHARS,
    MAX_CUSTOMER_LIST,
    MAX_REASON_CHARS,
    BackfillInput,
    BackfillMeter,
    BackfillProgress,
    BackfillRequest,
    BackfillTarget,
)
from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.identity import backfill_workflow_id
from polar_credits.operators import started_by
from polar_credits.settings import Settings
from polar_credits.starters.operator import FINGERPRINT_MEMO, start_backfill_run
from polar_credits.workflows.backfill import BackfillWorkflow

router = APIRouter(
    prefix="/backfills", tags=["backfills"], dependencies=[OPERATOR], route_class=OperatorRoute
)

TEMPORAL_TIMEOUT = timedelta(seconds=10)

Key = Annotated[str, Field(pattern=BACKFILL_KEY.pattern, description="The idempotency key")]
# The ids the grants routes take (ID_VALUE: at most 256 characters, no spaces or quotes).
CustomerId = Annotated[str, Field(pattern=ID_VALUE, max_length=MAX_CUSTOMER_ID_CHARS)]


class BackfillBody(BaseModel):
    """Exactly one target: `product_id`, `customer_ids` or `all_active = true`. Strict, like
    the rules file: `"units": "10"` or `true` is refused, not read as a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: Key = Field(
        description="Idempotency key: the same key never grants a customer twice; reused with "
        "another body it is refused (409)."
    )
    product_id: str | None = Field(
        default=None,
        pattern=ID_VALUE,
        max_length=MAX_CUSTOMER_ID_CHARS,
        description="The customers with an active subscription to this product.",
    )
    customer_ids: list[CustomerId] | None = Field(
        default=None, min_length=1, max_length=MAX_CUSTOMER_LIST, description="These customers."
    )
    all_active: bool = Field(
        default=False, description="Every customer with an active subscription."
    )
    meter: str = Field(min_length=1, description="A meter name of the rules file.")
    units: int = Field(ge=1, le=MAX_GRANT_UNITS, description="Credits granted to each customer.")
    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)

    @model_validator(mode="after")
    def _one_target(self) -> BackfillBody:
        chosen = [self.product_id is not None, self.customer_ids is not None, self.all_active]
        if sum(chosen) != 1:
            raise ValueError("give exactly one target: product_id, customer_ids or all_active")
        return self

    @property
    def target(self) -> BackfillTarget:
        if self.product_id is not None:
            return BackfillTarget.PRODUCT
        if self.customer_ids is not None:
            return BackfillTarget.CUSTOMERS
        return BackfillTarget.ALL_ACTIVE

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class BackfillView(BaseModel):
    key: str
    workflow_id: str
    status: Literal["running", "completed", "failed", "terminated", "canceled", "timed_out"]
    target: str | None = None
    product_id: str | None = None
    customers_listed: int | None = Field(default=None, description="Size of customer_ids.")
    meter: str | None = None
    units: int | None = None
    reason: str | None = None
    progress: dict[str, Any] | None = Field(
        default=None,
        description="pages, customers_seen, granted, already_granted, unattributed, skipped "
        "(reason: count), rejected (customer and Polar's reason), rejected_total, total, done; "
        "the final report once `status` is completed.",
    )
    ui_url: str
    started_by: str | None = Field(
        default=None, description="The name of the operator token that started the backfill."
    )


def _meter(request: Request, name: str) -> BackfillMeter:
    rules = request.app.state.rules
    if rules is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "No rules file (CREDITS_RULES_FILE): a backfill grants on one of its meters.",
        )
    meter = rules.meters.get(name)
    if meter is None:
        known = ", ".join(sorted(rules.meters)) or "none"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"Unknown meter {name!r}: the rules file defines {known}.",
        )
    return BackfillMeter(
        name=name, meter_id=meter.id, event_name=meter.event_name, property=meter.property
    )


async def _view(
    settings: Settings, handle: WorkflowHandle[Any, Any], key: str
) -> BackfillView | None:
    """The backfill as it stands, or None when there is none with this key."""
    try:
        description = await handle.describe(rpc_timeout=TEMPORAL_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise temporal_error(exc) from exc
    state = description.status or WorkflowExecutionStatus.RUNNING
    view = BackfillView(
        key=key,
        workflow_id=handle.id,
        status=chain_status_name(state),
        ui_url=workflow_ui_url(settings, handle.id),
    )
    progress: BackfillProgress | None = None
    try:
        if state == WorkflowExecutionStatus.COMPLETED:
            progress = await handle.result(rpc_timeout=TEMPORAL_TIMEOUT)
        elif state in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.CONTINUED_AS_NEW):
            progress = await handle.query(BackfillWorkflow.progress, rpc_timeout=TEMPORAL_TIMEOUT)
    except Exception:  # noqa: BLE001 - no worker to answer the query: the status still shows
        progress = None
    if progress is not None:
        view.progress = _plain(progress)
    memo = await description.memo()
    view.target = memo.get("target")
    view.product_id = memo.get("product_id")
    view.customers_listed = memo.get("customers_listed")
    view.meter = memo.get("meter")
    view.units = memo.get("units")
    view.reason = memo.get("reason")
    view.started_by = started_by(memo)
    return view


def _plain(progress: BackfillProgress) -> dict[str, Any]:
    return asdict(progress)


async def _fingerprint(
    handle: WorkflowHandle[Any, Any],
) -> tuple[str | None, WorkflowExecutionStatus | None]:
    try:
        description = await handle.describe(rpc_timeout=TEMPORAL_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None, None
        raise temporal_error(exc) from exc
    return (await description.memo()).get(FINGERPRINT_MEMO), description.status


def _conflict(key: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"Backfill key {key!r} was already used with another request: use a new key, or send "
        "the first request unchanged to see that backfill.",
    )


@router.post(
    "",
    response_model=BackfillView,
    status_code=202,
    summary="Start a backfill (idempotent by key)",
    responses={
        200: {"model": BackfillView, "description": "This key's backfill already exists."},
        **WRITER_ANSWER,
        409: {"model": Problem, "description": "The key was used with another request."},
        413: {
            "model": Problem,
            "description": "Body larger than 1 MiB, or a run input over 512 KiB once encoded "
            "(split the customer list).",
        },
        422: {
            "model": Problem,
            "description": "Bad request, an unknown meter, or Temporal "
            "refused the request (it never will take it as it is).",
        },
        503: {"model": Problem, "description": "Temporal is unavailable; try again."},
    },
)
async def start_backfill(
    body: BackfillBody,
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> JSONResponse:
    meter = _meter(request, body.meter)
    workflow_id = backfill_workflow_id(body.key)
    handle = temporal.get_workflow_handle_for(BackfillWorkflow.run, workflow_id)
    fingerprint = body.fingerprint()
    try:
        existing, state = await _fingerprint(handle)
        if existing is not None and existing != fingerprint:
            raise _conflict(body.key)
        # A run that ended without finishing: the same request starts the backfill again,
        # which goes through every page once more (Polar dedupes what was already granted).
        if existing is None or state in ENDED_UNFINISHED:
            await _start(temporal, settings, body, meter, fingerprint, operator.name)
            code = status.HTTP_202_ACCEPTED
        else:
            code = status.HTTP_200_OK
    except WorkflowAlreadyStartedError:
        # Another request with this key won the race: the same body gets its backfill.
        existing, _ = await _fingerprint(handle)
        if existing != fingerprint:
            raise _conflict(body.key) from None
        code = status.HTTP_200_OK
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    view = await _view(settings, handle, body.key)
    assert view is not None
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


async def _start(
    temporal: Client,
    settings: Settings,
    body: BackfillBody,
    meter: BackfillMeter,
    fingerprint: str,
    operator: str,
) -> None:
    request = BackfillRequest(
        key=body.key,
        target=body.target.value,
        meter=meter,
        units=body.units,
        reason=body.reason,
        product_id=body.product_id,
        customer_ids=list(body.customer_ids or []),
    )
    input = BackfillInput(request=request)
    await check_input_size(temporal, input, "This backfill")
    await start_backfill_run(
        temporal,
        input,
        task_queue=settings.credits_task_queue,
        fingerprint=fingerprint,
        operator=operator,
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TEMPORAL_TIMEOUT,
    )


@router.get(
    "/{key}",
    response_model=BackfillView,
    summary="A backfill's progress, or its report once done",
    responses={404: {"model": Problem, "description": "No backfill with this key."}},
)
async def get_backfill(
    key: Annotated[str, Path(pattern=BACKFILL_KEY.pattern)],
    settings: SettingsDep,
    temporal: TemporalDep,
) -> BackfillView:
    handle = temporal.get_workflow_handle_for(BackfillWorkflow.run, backfill_workflow_id(key))
    try:
        view = await _view(settings, handle, key)
    except (RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No backfill with key {key!r}.")
    return view
