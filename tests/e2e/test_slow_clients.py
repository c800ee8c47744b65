"""Slow clients against the API's uvicorn server (api/server.py) on a real socket.

A client trickling its headers or its body is cut off; a slow handler, a normal request and
a keep-alive connection idle between requests are not. Most cases run a tiny app in a
server thread with the API's own uvicorn configuration; the last starts `python -m api` to
check the settings reach the server. Bounds are generous (a loaded 2-core machine): only
"not before the timeout" and "within the timeout + MARGIN".
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import h11
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from polar_credits.api.server import BODY_GRACE_SECONDS, uvicorn_config
from polar_credits.settings import Settings
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
BODY_DEADLINE = BODY_TIMEOUT + BODY_GRACE_SECONDS
# Far above every pause below, so uvicorn's keep-alive never explains a closure here.
KEEP_ALIVE = 10.0
MARGIN = 3.0  # closure may come this late on a loaded machine
EARLY = 0.1  # timer and clock slack on the early side
TRICKLE_LINES = 30  # one a second: far longer than any timeout here


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/fast", methods=["GET", "POST"])
    async def fast() -> dict[str, bool]:
        return {"ok": True}  # never reads a body: answers before it is in

    @app.get("/slow")
    async def slow(seconds: float) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # what a cut-off client looks like from here
            return Response(status_code=400)
        return Response(body, media_type="application/octet-stream")

    return app


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The tiny app served with the API's uvicorn configuration, in a thread."""
    settings = Settings(
        credits_api_host="127.0.0.1",
        credits_api_port=free_port(),
        credits_api_header_timeout_seconds=HEADER_TIMEOUT,
        credits_api_body_timeout_seconds=BODY_TIMEOUT,
    )
    config = uvicorn_config(
        tiny_app(),
        settings,
        log_config=None,  # leave logging to pytest, so caplog sees uvicorn's records
        timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-slow-clients", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield settings.credits_api_port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[list[RawClient]]:
    """Clients registered here must leave no warning, no traceback, and no trace of
    themselves (their port) in the server's logs."""
    caplog.set_level(logging.INFO, logger="polar_credits.api.server")
    clients: list[RawClient] = []
    yield clients
    for record in caplog.records:
        assert record.levelno < logging.WARNING, record.getMessage()
        assert record.exc_info is None, record.getMessage()
        for client in clients:
            assert str(client.port) not in record.getMessage(), record.getMessage()


class RawClient:
    """HTTP/1.1 on one socket, sent exactly as the test says; answers parsed with h11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.port = self.sock.getsockname()[1]
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.received = b""
        self.http = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False if the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_at = self.closed_at or time.monotonic()
            return False
        return True

    def request(self, method: str, target: str, body: bytes = b"", length: int = 0) -> bytes:
        """The bytes of a request whose body is `length` long, of which `body` is sent."""
        headers = [("Host", "127.0.0.1")]
        if method == "POST":
            headers.append(("Content-Length", str(length)))
        data = self.http.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += self.http.send(h11.Data(data=body))
        if len(body) == length:
            data += self.http.send(h11.EndOfMessage())
        return data

    def _recv(self, timeout: float) -> bytes | None:
        """What arrives within `timeout`: None if nothing, b"" if the server closed."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed_at = self.closed_at or time.monotonic()
        return chunk

    def response(self, timeout: float = 30.0) -> tuple[int, bytes]:
        """The next response: (status, body). Fails if the server closes first."""
        status, body = 0, b""
        end = time.monotonic() + timeout
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                chunk = self._recv(max(0.0, end - time.monotonic()))
                assert chunk, "the server closed or did not answer"
                self.http.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
        return status, body

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within `seconds`; bytes received on
        the way are kept in `received`."""
        end = time.monotonic() + seconds
        while self.closed_at is None and (left := end - time.monotonic()) > 0:
            chunk = self._recv(left)
            if chunk is None:
                return False
            self.received += chunk
        return self.closed_at is not None

    def trickle(self, pieces: Iterable[bytes], every: float = 1.0) -> bool:
        """Send one piece every `every` seconds until the server closes; whether it did."""
        for piece in pieces:
            if not self.send(piece) or self.closed_within(every):
                return True
        return self.closed_within(MARGIN)


@pytest.fixture
def client(port: int, quiet: list[RawClient]) -> Iterator[RawClient]:
    client = RawClient(port)
    quiet.append(client)
    try:
        yield client
    finally:
        client.close()


def header_lines() -> Iterator[bytes]:
    return (b"X-Trickle-%d: %d\r\n" % (i, i) for i in range(TRICKLE_LINES))


def body_bytes() -> Iterator[bytes]:
    return (b"x" for _ in range(TRICKLE_LINES))


def test_headers_sent_a_line_a_second_are_cut_off(client: RawClient) -> None:
    assert client.send(b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    assert client.trickle(header_lines()), "the server kept a client trickling its headers"
    assert client.closed_at is not None
    elapsed = client.closed_at - client.opened
    assert HEADER_TIMEOUT - EARLY <= elapsed <= HEADER_TIMEOUT + MARGIN
    assert client.received == b"", "closed without an answer"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    client: RawClient,
) -> None:
    assert client.closed_within(HEADER_TIMEOUT + MARGIN), "a silent connection was kept"
    assert client.closed_at is not None
    assert client.closed_at - client.opened >= HEADER_TIMEOUT - EARLY
    assert client.received == b""


def test_a_handler_slower_than_the_header_timeout_is_answered(
    port: int, quiet: list[RawClient]
) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        slow = http.get("/slow", params={"seconds": 2 * HEADER_TIMEOUT})
        echoed = http.post("/echo", content=b"a body sent at once")

    assert slow.status_code == 200 and slow.json() == {"slept": 2 * HEADER_TIMEOUT}
    assert echoed.status_code == 200 and echoed.content == b"a body sent at once"
    # uvicorn's own headers are kept.
    assert slow.headers["server"] == "uvicorn"
    assert "date" in slow.headers


def test_a_keep_alive_connection_idle_between_requests_is_kept(client: RawClient) -> None:
    assert client.send(client.request("GET", "/fast"))
    assert client.response() == (200, b'{"ok":true}')

    # Idle for longer than the header timeout, well within the keep-alive timeout.
    assert not client.closed_within(2 * HEADER_TIMEOUT)

    assert client.send(client.request("POST", "/echo", b"second", length=6))
    assert client.response() == (200, b"second")


def test_a_second_request_trickling_its_headers_on_keep_alive_is_cut_off(
    client: RawClient,
) -> None:
    assert client.send(client.request("GET", "/fast"))
    assert client.response() == (200, b'{"ok":true}')
    assert not client.closed_within(HEADER_TIMEOUT + 0.5)  # idle: kept

    started = time.monotonic()
    assert client.send(b"GET /fast HTTP/1.1\r\n")
    assert client.trickle(header_lines()), "the server kept a client trickling its headers"
    assert client.closed_at is not None
    assert HEADER_TIMEOUT - EARLY <= client.closed_at - started <= HEADER_TIMEOUT + MARGIN
    assert client.received == b""


def test_a_body_that_never_completes_is_cut_off(client: RawClient) -> None:
    started = time.monotonic()
    assert client.send(client.request("POST", "/echo", b"x" * 10, length=1000))

    assert client.trickle(body_bytes()), "the server kept a client trickling its body"
    assert client.closed_at is not None
    assert BODY_DEADLINE - EARLY <= client.closed_at - started <= BODY_DEADLINE + MARGIN
    assert client.received == b""


def test_a_body_trickled_after_an_early_answer_is_cut_off(client: RawClient) -> None:
    started = time.monotonic()
    assert client.send(client.request("POST", "/fast", b"x" * 10, length=1000))
    assert client.response() == (200, b'{"ok":true}')  # the route does not wait for it

    assert client.trickle(body_bytes()), "the server kept a client trickling its body"
    assert client.closed_at is not None
    assert BODY_DEADLINE - EARLY <= client.closed_at - started <= BODY_DEADLINE + MARGIN


def test_python_m_api_cuts_off_a_trickling_client_quietly(tmp_path: Path) -> None:
    """The real entry point reads the timeout from the environment."""
    port = free_port()
    api = ServiceProcess(
        "api",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": "whsec_test_" + "c2xvdy1jbGllbnRz",
            "CREDITS_API_HOST": "127.0.0.1",
            "CREDITS_API_PORT": str(port),
            "CREDITS_API_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        },
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=tmp_path / "api.log",
    ).start()
    try:
        log_before = api.log().splitlines()
        client = RawClient(port)
        try:
            assert client.send(b"POST /webhooks/polar HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert client.trickle(header_lines()), "the API kept a client trickling its headers"
            assert client.closed_at is not None
            assert client.closed_at - client.opened <= HEADER_TIMEOUT + MARGIN
        finally:
            client.close()
        added = api.log().splitlines()[len(log_before) :]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        api.stop()
    assert 'polar_credits_slow_clients_closed_total{phase="headers"} 1' in metrics, metrics
    assert len(added) <= 1, added
    assert not any("Traceback" in line or str(client.port) in line for line in added), added
