"""The worker's endpoint for orchestrators and Prometheus: `/metrics`, `/livez` and `/readyz` on
one port (CREDITS_WORKER_METRICS_PORT).

The Temporal SDK's Prometheus exporter runs in its Rust core and serves nothing but its
metrics, so it listens on a loopback port of its own and this small server, on the worker's
event loop, relays it beside the two probes. Metric names are the exporter's, unchanged.

- `/livez`: 200 whenever the process and its event loop answer (this server runs on it).
- `/readyz`: 200 once Temporal answers and both of the worker's workers (the order queue and
  the budget queue) are polling it, as Temporal itself reports; 503 with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Mapping
from datetime import timedelta

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.worker import Worker

log = logging.getLogger("polar_credits.worker")

# An orchestrator's probe gives up after a few seconds: answer well before.
TEMPORAL_CHECK_SECONDS = 2.0
REQUEST_READ_SECONDS = 5.0
MAX_HEADER_BYTES = 16 * 1024


def internal_port() -> int:
    """A loopback port that was free a moment ago, for the SDK's exporter to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerHealth:
    """What `/readyz` answers from: the client once connected, the workers once polling."""

    def __init__(self) -> None:
        self._client: Client | None = None
        self._workers: dict[str, Worker] = {}  # task queue -> its worker
        self._stopping = False

    def connected(self, client: Client) -> None:
        self._client = client

    def polling(self, workers: Mapping[str, Worker]) -> None:
        self._workers = dict(workers)

    def stopped(self) -> None:
        self._workers = {}
        self._stopping = True

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the first thing that keeps the worker from taking tasks."""
        client = self._client
        if self._stopping:
            return False, "the worker is stopping"
        if client is None:
            return False, "not connected to Temporal yet"
        try:
            await client.service_client.check_health(
                timeout=timedelta(seconds=TEMPORAL_CHECK_SECONDS)
            )
        except Exception as exc:  # noqa: BLE001 - any failure: Temporal is not usable
            return False, f"Temporal does not answer ({type(exc).__name__})"
        if not self._workers:
            return False, "the workers are not polling yet"
        for queue, worker in self._workers.items():
            if not worker.is_running:
                return False, f"the worker of task queue {queue!r} is not running"
            try:
                seen = await self._poller_seen(client, queue, worker)
            except Exception as exc:  # noqa: BLE001
                return False, f"Temporal does not answer ({type(exc).__name__})"
            if not seen:
                return False, f"Temporal sees no poller of this worker on task queue {queue!r}"
        return True, "ok"

    @staticmethod
    async def _poller_seen(client: Client, queue: str, worker: Worker) -> bool:
        identity = worker.config().get("identity") or client.identity
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=TEMPORAL_CHECK_SECONDS),
        )
        return any(poller.identity == identity for poller in answer.pollers)


class HealthServer:
    """A minimal HTTP/1.1 server (GET and HEAD, one request per connection) on host:port."""

    def __init__(self, health: WorkerHealth, exporter_port: int) -> None:
        self.health = health
        self.exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
        self._server: asyncio.Server | None = None
        self._http = httpx.AsyncClient(timeout=5.0)

    async def start(self, host: str, port: int) -> None:
        """Bind now; OSError when the port is taken."""
        self._server = await asyncio.start_server(self._handle, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        await self._http.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_READ_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            writer.close()
            return
        try:
            status, content_type, body = await self._answer(method, target.split("?", 1)[0])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable" if status == 503 else "Bad Gateway"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return _json(405, "error", f"{method} is not allowed: use GET")
        if path == "/livez":
            return _json(200, "ok")
        if path == "/readyz":
            ready, reason = await self.health.readiness()
            return _json(200, "ok") if ready else _json(503, "unavailable", reason)
        if path == "/metrics":
            try:
                answer = await self._http.get(self.exporter_url)
            except httpx.HTTPError as exc:
                return _json(502, "error", f"the metrics exporter does not answer: {exc}")
            content_type = answer.headers.get("content-type", "text/plain; version=0.0.4")
            return answer.status_code, content_type, answer.content
        return _json(404, "error", f"no {path}: try /metrics, /livez or /readyz")


def _json(status: int, state: str, detail: str | None = None) -> tuple[int, str, bytes]:
    body = {"status": state} if detail is None else {"status": state, "detail": detail}
    return status, "application/json", json.dumps(body).encode()
