"""The FastAPI application: one Temporal client per process, created in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from temporalio.client import Client

from polar_credits.api import codec, health, metrics, webhooks
from polar_credits.api.metrics import Metrics
from polar_credits.api.operator import backfills, reconcile
from polar_credits.api.operator.grants.routes import router as grants_router
from polar_credits.api.operator.rules import router as rules_router
from polar_credits.api.problems import validation_problem
from polar_credits.codec import payload_codec
from polar_credits.operators import load_operator_tokens
from polar_credits.rules import MetadataKeys, load_rules
from polar_credits.settings import Settings, SettingsError
from polar_credits.temporal_client import (
    TemporalConnection,
    TemporalUnreachable,
    check_temporal,
    connect_temporal,
    resolve_temporal,
)

log = logging.getLogger("polar_credits.api")


async def _report_temporal(
    client: Client, connection: TemporalConnection, settings: Settings
) -> None:
    """Connect once in the background and log what is wrong, naming the setting: the API
    starts whatever Temporal's state, but a refused API key or certificate, or an unknown
    namespace, would otherwise only show as 503s."""
    try:
        await check_temporal(client, connection, settings)
    except SettingsError as exc:
        log.error("Temporal refuses this API's settings: %s", exc)
    except TemporalUnreachable as exc:
        log.warning("Temporal is not reachable yet: %s", exc)
    else:
        log.info("Temporal reachable at %s", connection.describe())


def create_app(settings: Settings, temporal: Client | None = None) -> FastAPI:
    """`temporal` may be given by tests; otherwise a lazy client connects on first use, so
    the API starts (and answers 503) while Temporal is still coming up.

    Reads the rules file (CREDITS_RULES_FILE, the worker's) for the metadata keys its rules
    name (no other metadata is copied into a workflow) and for the products whose
    subscriptions have an allowance run (rules with `every`). Raises RulesError, and
    SettingsError for a doubtful operator token (polar_credits/operators.py).

    Without `temporal`, resolves the Temporal connection now (polar_credits/temporal_client/):
    a setting that can never work (an unreadable certificate or key, a malformed profile file,
    an unknown TEMPORAL_PROFILE) raises SettingsError before the server starts."""
    assert settings.polar_webhook_secret is not None
    operator_tokens = load_operator_tokens(settings)
    connection = None
    if temporal is None:
        connection = resolve_temporal(settings)
        settings = connection.applied_to(settings)  # links to the UI name the namespace used
    rules_file = settings.credits_rules_file
    rules = load_rules(rules_file) if rules_file else None
    metadata_keys: MetadataKeys | frozenset[str] = rules.metadata_keys() if rules else frozenset()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.temporal = temporal or await connect_temporal(
            settings, lazy=True, connection=connection
        )
        checking = None
        if connection is not None:
            log.info("Temporal at %s; not waiting for it to start", connection.describe())
            checking = asyncio.create_task(
                _report_temporal(app.state.temporal, connection, settings)
            )
        yield
        if checking is not None:
            checking.cancel()

    app = FastAPI(
        title="polar-credits",
        summary="Grants usage credits to Polar customers, durably, from signed webhooks.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metadata_keys = metadata_keys
    app.state.rules = rules
    app.state.operator_tokens = operator_tokens
    app.state.metrics = Metrics()
    app.state.payload_codec = payload_codec(settings)  # None when encryption is off
    secret = settings.require("POLAR_WEBHOOK_SECRET").polar_webhook_secret
    assert secret is not None  # require() raised SettingsError otherwise
    app.state.webhook_verifier = webhooks.polar_verifier(secret.get_secret_value())
    app.add_exception_handler(RequestValidationError, validation_problem)  # type: ignore[arg-type]
    app.include_router(webhooks.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(backfills.router)
    app.include_router(reconcile.router)
    app.include_router(grants_router)
    app.include_router(rules_router)
    app.include_router(codec.router)
    _serve_docs_offline(app)
    return app


# Swagger UI 5 and ReDoc 2, as shipped inside the fastapi-offline wheel (swagger-ui-bundle 1.1.0
# ships Swagger UI 4, which cannot render the OpenAPI 3.1 schema FastAPI emits).
DOCS_ASSETS = files("fastapi_offline") / "static"
DOCS_ASSETS_URL = "/docs/assets"


def _serve_docs_offline(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` with their JavaScript and CSS served by this app, not a
    CDN, so they work on a machine without internet access (FastAPI's "self-hosting" recipe)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _root(request: Request) -> str:
    """Where the app is mounted, so the docs' links work behind a path prefix."""
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")
