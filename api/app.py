"""The FastAPI application: one Temporal client per process, created in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api import health, webhooks
from polar_credits.settings import Settings


def create_app(settings: Settings, temporal: Client | None = None) -> FastAPI:
    """`temporal` may be given by tests; otherwise a lazy client connects on first use, so
    the API starts (and answers 503) while Temporal is still coming up."""
    assert settings.polar_webhook_secret is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        webhooks.warm_up_parsers()
        app.state.temporal = temporal or await Client.connect(
            settings.temporal_address, namespace=settings.temporal_namespace, lazy=True
        )
        yield

    app = FastAPI(
        title="polar-credits",
        summary="Grants usage credits to Polar customers, durably, from signed webhooks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.webhook_verifier = webhooks.polar_verifier(
        settings.polar_webhook_secret.get_secret_value()
    )
    app.include_router(webhooks.router)
    app.include_router(health.router)
    return app
