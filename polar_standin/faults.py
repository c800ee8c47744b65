"""Injected faults (5xx, 429, latency) per API endpoint, and the log of answered requests.

Both live in memory: they are test scaffolding, not Polar state.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from polar_standin.clock import now

FAULT_STATUSES = (429, 500, 502, 503, 504)


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
            return [asdict(f) for f in self._faults]

    def take(self, endpoint: str) -> Fault | None:
        """Consumes one use of the oldest fault armed for this endpoint."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint == endpoint and fault.count > 0:
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
