"""The API docs work offline: `/docs` and `/redoc` load their JavaScript and CSS from the API
itself (a packaged copy), never from a CDN. Served by uvicorn on a real socket."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import httpx
import pytest
import uvicorn

from polar_credits.api.app import create_app
from polar_credits.settings import Settings
from tests.support.net import free_port

WEBHOOK_SECRET = "whsec_test_" + "ZG9jcy1vZmZsaW5lLXRlc3Q"
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


class _AssetRefs(HTMLParser):
    """What a page loads, as (kind, url): kind is "script", "stylesheet" or "icon"."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        rel = (attr.get("rel") or "").split()
        if tag == "script" and attr.get("src"):
            self.refs.append(("script", attr["src"]))
        elif tag == "link" and attr.get("href") and rel:
            self.refs.append(("icon" if "icon" in rel else rel[0], attr["href"]))


# What each kind of asset must be served as, and its least plausible size.
ASSET_TYPES = {
    "script": ("text/javascript", 10_000),
    "stylesheet": ("text/css", 10_000),
    "icon": ("image/", 100),
}


def asset_refs(html: str) -> list[tuple[str, str]]:
    parser = _AssetRefs()
    parser.feed(html)
    return parser.refs


@pytest.fixture(scope="module")
async def api_url() -> AsyncIterator[str]:
    """The app on 127.0.0.1; `temporal` is given, so nothing connects to Temporal."""
    settings = Settings(polar_webhook_secret=WEBHOOK_SECRET)
    app = create_app(settings, temporal=object())  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.025)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def check_page_is_self_hosted(api_url: str, path: str, kinds: set[str]) -> dict[str, bytes]:
    """GET `path`; assert it names no URL off this server, that it loads at least one asset of
    each of `kinds`, and that every asset it loads is served here with the right content type.
    Returns the assets' bodies by URL."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        page = await http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text

        foreign = [u for u in ABSOLUTE_URL.findall(html) if not u.startswith(api_url)]
        assert foreign == [], f"{path} loads from outside the API: {foreign}"

        refs = asset_refs(html)
        assert {kind for kind, _ in refs} >= kinds, refs
        bodies: dict[str, bytes] = {}
        for kind, url in refs:
            content_type, least_size = ASSET_TYPES[kind]
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(content_type), (url, asset.headers)
            assert len(asset.content) >= least_size, (url, len(asset.content))
            bodies[url] = asset.content
        return bodies


async def test_swagger_ui_is_served_from_the_api(api_url: str) -> None:
    bodies = await check_page_is_self_hosted(api_url, "/docs", {"script", "stylesheet", "icon"})
    scripts = [body for url, body in bodies.items() if url.endswith(".js")]
    # FastAPI emits an OpenAPI 3.1 schema; Swagger UI before 5 shows "Unable to render this
    # definition" for it. Swagger UI 5 has the OAS 3.1 plugin (`isOAS31`).
    assert any(b"isOAS31" in body for body in scripts)


async def test_redoc_is_served_from_the_api(api_url: str) -> None:
    await check_page_is_self_hosted(api_url, "/redoc", {"script", "icon"})


async def test_openapi_schema_is_served(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/webhooks/polar" in schema["paths"]
    assert not any(p.startswith("/docs") or p == "/redoc" for p in schema["paths"])


async def test_the_webhook_is_documented(api_url: str) -> None:
    """Its headers, the body fields it reads (every reference resolvable) and each answer."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        schema = (await http.get("/openapi.json")).json()
    webhook = schema["paths"]["/webhooks/polar"]["post"]
    headers = {p["name"] for p in webhook["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert "#/$defs/" not in json.dumps(body), "a reference that cannot resolve here"
    order = body["properties"]["data"]["properties"]
    assert {"id", "customer_id", "status", "billing_reason", "metadata"} <= set(order)
    for status in ("200", "202", "400", "403", "408", "413", "503"):
        assert webhook["responses"][status]["description"], status
