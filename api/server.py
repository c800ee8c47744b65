"""The uvicorn server for the API, with read timeouts on slow clients.

uvicorn has no timeout on reading a request: a client that sends its headers one line a
second, or never finishes its body, holds a connection (and a file descriptor) for as long
as it likes; its keep-alive timeout only covers a connection that sends nothing after a
response. `TimedH11Protocol` adds two deadlines to uvicorn's h11 protocol and closes the
connection, without a response, when one passes:

- headers: a request's headers must be complete within the header timeout of the
  connection opening (first request) or of the request's first byte (later requests on a
  keep-alive connection: the idle time before is the keep-alive timeout's business, so a
  connection idle in keep-alive is never closed here). A connection that sends nothing at
  all is closed after the header timeout too; uvicorn would keep it forever.
- body: a request's body must be complete within the body timeout, plus
  `BODY_GRACE_SECONDS`, of its headers. The grace lets a handler that reads the body under
  its own timeout of the same length answer first (408); the deadline is the backstop for
  every other route, and for a client that goes on trickling a body after its response
  was sent (uvicorn reads and drops that for as long as it comes). Time the server itself
  holds the body back (flow control, or a client waiting for `100 Continue` that the app
  has not asked for yet) does not count against the client.

A request whose headers are in does not otherwise time out here: a slow handler is not a
slow client. Each closure is counted in `SLOW_CLIENTS_CLOSED` and logged as one INFO line
without client data.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from polar_credits.settings import Settings

log = logging.getLogger("polar_credits.api.server")

# Connections closed for a slow client, by the part of the request that was late:
# "headers" or "body". Counted on the event loop; read it for a metric.
SLOW_CLIENTS_CLOSED: Counter[str] = Counter()

# How long after the body timeout the server closes a connection whose body is still not
# complete, so a handler timing its own body read with the same timeout answers first.
BODY_GRACE_SECONDS = 1.0

# uvicorn's exit status when the server could not start (uvicorn.main.STARTUP_FAILURE).
STARTUP_FAILURE = 3

_Phase = Literal["headers", "body", "idle", None]


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body read deadlines (see the module doc).

    Use `timed_h11_protocol` to get a subclass with the timeouts set; uvicorn's `http=`
    takes the class and builds one instance per connection."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: _Phase = None
        self._upgraded = False

    # uvicorn's hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm(None)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        # Runs after every read, and after every response (for pipelined requests): the
        # one place where h11's view of the client's request changes.
        super().handle_events()
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._disarm(None)
        super().handle_websocket_upgrade(event)

    # Deadlines

    def _follow_request(self) -> None:
        if self._upgraded or self.transport is None or self.transport.is_closing():
            self._disarm(None)
            return
        their_state = self.conn.their_state
        if their_state is h11.IDLE:
            # Waiting for a request's headers. After a response, uvicorn's keep-alive timer
            # covers an idle connection; the header clock starts at the next byte (when
            # uvicorn cancels that timer) or now if bytes of the next request are already
            # buffered, or if no keep-alive timer runs (uvicorn arms none when a request
            # body ends after its response).
            if self._phase == "headers":
                return
            if self.timeout_keep_alive_task is None or self.conn.trailing_data[0]:
                self._arm("headers", self.header_timeout)
            else:
                self._disarm("idle")
        elif their_state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout + BODY_GRACE_SECONDS)
        else:
            # The request is complete (or the connection is closing or broken).
            self._disarm(None)

    def _arm(self, phase: _Phase, delay: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._phase = phase
        self._deadline = self.loop.call_later(delay, self._deadline_passed)

    def _disarm(self, phase: _Phase) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        their_state = self.conn.their_state
        if self._phase == "headers" and their_state is h11.IDLE:
            self._close_slow_client("headers", self.header_timeout)
        elif self._phase == "body" and their_state is h11.SEND_BODY:
            server_holds_body = self.flow.read_paused or (
                self.cycle is not None and self.cycle.waiting_for_100_continue
            )
            if server_holds_body:
                self._arm("body", self.body_timeout)
            else:
                self._close_slow_client("body", self.body_timeout + BODY_GRACE_SECONDS)
        else:  # pragma: no cover - state changes always pass through _follow_request
            self._follow_request()

    def _close_slow_client(self, part: str, after: float) -> None:
        SLOW_CLIENTS_CLOSED[part] += 1
        log.info("Closed a slow connection: request %s incomplete after %.1f s", part, after)
        self._phase = None
        # connection_lost tells h11 and a running request (http.disconnect).
        self.transport.close()


def timed_h11_protocol(header_timeout: float, body_timeout: float) -> type[TimedH11Protocol]:
    """A `TimedH11Protocol` subclass with these timeouts, for uvicorn's `http=`."""
    if header_timeout <= 0 or body_timeout <= 0:
        raise ValueError("read timeouts must be positive")
    return type(
        "TimedH11Protocol",
        (TimedH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The API's uvicorn configuration; `overrides` are uvicorn.Config options (tests)."""
    options: dict[str, Any] = {
        "host": settings.credits_api_host,
        "port": settings.credits_api_port,
        "log_level": "warning",
        "access_log": False,
        "http": timed_h11_protocol(
            settings.credits_api_header_timeout_seconds,
            settings.credits_api_body_timeout_seconds,
        ),
    }
    if settings.credits_log_format == "json":
        # uvicorn's own records then reach the root logger's JSON handler, not its text one.
        options["log_config"] = None
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(app: Any, settings: Settings) -> int:
    """Run the API until SIGINT/SIGTERM, as `uvicorn.run` would; the exit status."""
    server = uvicorn.Server(uvicorn_config(app, settings))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE
