"""Shared dependencies of the routers, kept on `app.state` so tests can override them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from polar_credits.settings import Settings


# async: FastAPI runs sync dependencies in a thread pool, a needless hop per request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_temporal(request: Request) -> Client:
    temporal: Client = request.app.state.temporal
    return temporal


SettingsDep = Annotated[Settings, Depends(get_settings)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
