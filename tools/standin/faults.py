"""Injected faults per API endpoint (5xx, 429, latency, a rate of them, hangs, dropped
connections), and the log of answered requests. In memory: test scaffolding, not Polar state.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tools.standin.clock import now

FAULT_STATUSES = (404, 422, 429, 500, 502, 503, 504)
DEFAULT_DETAIL = "Injected by the stand-in"
DEFAULT_HANG_SECONDS = 3600.0  # longer than any client timeout


@dataclass
class Fault:
    endpoint: str
    status: int | None
    count: int
    retry_after: int | None = None
    latency_ms: int = 0
    # Answer only after this delay, once the request has been carried out: the client times
    # out although Polar stored what it sent (the case idempotency keys exist for).
    response_delay_ms: int = 0
    # Set: each request fires the fault with this probability, until cleared (count unused).
    rate: float | None = None
    seed: int | None = None
    hang: bool = False  # no answer for hang_seconds (or until the client gives up)
    hang_seconds: float = DEFAULT_HANG_SECONDS
    drop: bool = False  # close the connection without any HTTP answer
    # The answer's `detail` (the 422's `msg`): an error body may quote what Polar holds (a
    # customer's email, say), which a client must never write to its logs.
    detail: str = DEFAULT_DETAIL
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "_rng"}


def fault_from_json(body: dict[str, Any]) -> Fault:
    """Builds a fault from the admin / start-up JSON shape; ValueError says what is wrong."""
    if not isinstance(body.get("endpoint"), str):
        raise ValueError("endpoint is required, e.g. events.ingest")
    status = body.get("status")
    if status is not None and status not in FAULT_STATUSES:
        raise ValueError(f"status must be one of {FAULT_STATUSES} or null")
    rate = body.get("rate")
    if rate is not None and not (isinstance(rate, int | float) and 0 <= rate <= 1):
        raise ValueError("rate must be a probability between 0 and 1")
    fault = Fault(
        endpoint=body["endpoint"],
        status=status,
        count=int(body.get("count", 1)),
        retry_after=body.get("retry_after"),
        latency_ms=int(body.get("latency_ms", 0)),
        response_delay_ms=int(body.get("response_delay_ms", 0)),
        rate=None if rate is None else float(rate),
        seed=body.get("seed"),
        hang=bool(body.get("hang")) or body.get("hang_seconds") is not None,
        hang_seconds=float(body.get("hang_seconds") or DEFAULT_HANG_SECONDS),
        drop=bool(body.get("drop")),
        detail=str(body.get("detail") or DEFAULT_DETAIL),
    )
    if fault.rate is None and fault.count < 1:
        raise ValueError("count must be >= 1 (or give a rate)")
    return fault


def _value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_fault_spec(spec: str) -> dict[str, Any]:
    """`events.ingest:status=503,count=2` -> {"endpoint": "events.ingest", "status": 503, ...}."""
    endpoint, _, options = spec.partition(":")
    body: dict[str, Any] = {"endpoint": endpoint.strip()}
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"fault option {option!r} is not key=value")
        body[key.strip()] = _value(value)
    return body


def startup_faults(specs: list[str], faults_file: str | None, env_json: str | None) -> list[Fault]:
    """Faults from --fault specs, --faults-file (JSON list) and STANDIN_FAULTS (JSON list)."""
    bodies: list[dict[str, Any]] = []
    if env_json:
        bodies += json.loads(env_json)
    if faults_file:
        with open(faults_file) as f:
            bodies += json.load(f)
    bodies += [parse_fault_spec(spec) for spec in specs]
    return [fault_from_json(body) for body in bodies]


class FaultBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: dict[str, list[dict]] = {}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict]:
        with self._lock:
            return [f.public() for f in self._faults]

    def take(self, endpoint: str) -> Fault | None:
        """The fault this request gets: a rate fault that fires, else one use of the oldest
        count-based fault armed for this endpoint."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint != endpoint:
                    continue
                if fault.rate is not None:
                    if fault._rng.random() < fault.rate:
                        return fault
                    continue
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def record(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests.setdefault(endpoint, []).append({"at": now(), "status": status})

    def requests(self, endpoint: str | None) -> list[dict]:
        with self._lock:
            if endpoint is not None:
                return list(self._requests.get(endpoint, []))
            return [{"endpoint": name, **r} for name, rs in self._requests.items() for r in rs]


def endpoint_name(method: str, path: str) -> str | None:
    """Names a Polar API call the way the SDK does: events.ingest, customer_meters.list..."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0] != "v1":
        return None
    resource = parts[1].replace("-", "_")
    if len(parts) == 2:
        return f"{resource}.{'create' if method == 'POST' else 'list'}"
    if parts[2] == "ingest":
        return f"{resource}.ingest"
    return f"{resource}.get" if method == "GET" else f"{resource}.{method.lower()}"


# -- acting out a fault --------------------------------------------------------------------
async def apply_fault(fault: Fault, request: Request, call_next: Any) -> Response:
    """Answers the request the way the fault says (latency first, then hang, drop or status)."""
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.hang:
        await _hang(request, fault.hang_seconds)
        return JSONResponse({"error": "InjectedHang", "detail": "Hung by the stand-in"}, 504)
    if fault.drop:
        await _drop(request)
        # Never reaches the client; logged as 499 unless the server cancels the task first.
        return Response(status_code=DROPPED_STATUS)
    if fault.status == 429:
        # Polar answers 429 with an empty body and an integer retry-after.
        headers = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
        return Response(status_code=429, headers=headers)
    if fault.status == 422:
        # A validation failure that names no event: the whole body is refused.
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": fault.detail, "type": "value_error"}]},
            status_code=422,
        )
    if fault.status is not None:
        return JSONResponse(
            {"error": "InjectedFault", "detail": fault.detail},
            status_code=fault.status,
        )
    response = await call_next(request)
    if fault.response_delay_ms:
        await asyncio.sleep(fault.response_delay_ms / 1000)
    return response


# Recorded in /admin/requests for a dropped connection (nginx's "client closed request").
DROPPED_STATUS = 499


async def _hang(request: Request, seconds: float) -> None:
    # Poll for the client's disconnect so a hung request does not outlive its client.
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.1)


def _transport(request: Request) -> asyncio.Transport | None:
    # uvicorn's receive/send are bound methods of its per-request cycle, which holds the socket.
    for channel in (getattr(request, "_receive", None), getattr(request, "_send", None)):
        transport = getattr(getattr(channel, "__self__", None), "transport", None)
        if transport is not None:
            return transport
    return None


async def _drop(request: Request) -> None:
    """Closes the TCP connection before any byte of an answer: clients see a transport error."""
    transport = _transport(request)
    if transport is None:
        raise RuntimeError("cannot drop the connection: not served by uvicorn")
    transport.close()
    # Let the server notice the lost connection, so it does not try to answer a 500.
    await asyncio.sleep(0.05)
