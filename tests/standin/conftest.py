"""Fixtures for the stand-in's own tests: real subprocesses, polar-sdk over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from polar.v2026_10 import PolarAsync

from tests.support.net import free_port
from tests.support.standin import StandinProcess

WEBHOOK_SECRET = "whsec_standin_test_secret_not_base64!"


class WebhookReceiver:
    """A tiny HTTP server on a free port that keeps every delivery it gets."""

    def __init__(self) -> None:
        self.deliveries: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.deliveries.append({"headers": dict(self.headers.items()), "body": body})
                answer = json.dumps({"received": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/polar"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    """Shared stand-in with no balance lag; tests use fresh customers to stay independent."""
    process = StandinProcess(tmp_path_factory.mktemp("standin") / "standin.sqlite3")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fresh_standin(tmp_path: Path) -> Iterator[Callable[..., StandinProcess]]:
    """A stand-in of one's own (own database) for restart and lag tests."""
    processes: list[StandinProcess] = []

    def make(**kwargs: object) -> StandinProcess:
        process = StandinProcess(tmp_path / f"standin-{len(processes)}.sqlite3", **kwargs)
        processes.append(process)
        return process.start()

    try:
        yield make
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "standin" in request.fixturenames:
        request.getfixturevalue("standin").clear_faults()


@pytest.fixture
async def polar(standin: StandinProcess) -> AsyncIterator[PolarAsync]:
    async with PolarAsync(standin.token, base_url=standin.base_url) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r
