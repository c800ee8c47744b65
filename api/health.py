"""Liveness and readiness probes for orchestrators."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from polar_credits.api.dependencies import TemporalDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    detail: str | None = None


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="Temporal is reachable, so webhooks can be accepted",
)
async def readyz(temporal: TemporalDep) -> Health | JSONResponse:
    try:
        await temporal.service_client.check_health(timeout=timedelta(seconds=2))
    except Exception as exc:  # any failure means: do not route webhooks here yet
        return JSONResponse(
            status_code=503,
            content=Health(
                status="unavailable", detail=f"Temporal: {type(exc).__name__}"
            ).model_dump(),
        )
    return Health(status="ok")
