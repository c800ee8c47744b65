"""The worker's metrics: the Temporal SDK's own and the service's, on one Prometheus endpoint.

With CREDITS_WORKER_METRICS_PORT set, the worker's Temporal client runs on a `Runtime` that
serves Prometheus on that port (`worker_runtime`); the service records its metrics through
that runtime's `MetricMeter`, so one scrape holds both. Without it every meter is Temporal's
no-op meter: recording costs nothing and needs no check (docs/operator/metrics-and-logs.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from polar.base import PolarClientError, PolarRateLimitError
from polar.v2026_10.errors import HTTPValidationError
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from polar_credits.temporal_client import core_logging

METRICS_HOST = "127.0.0.1"  # CREDITS_WORKER_METRICS_HOST's default

GRANT_EVENTS = "polar_credits_grant_events"
GRANTED_UNITS = "polar_credits_granted_units"
VERIFICATIONS = "polar_credits_verifications"
POLAR_CALLS = "polar_credits_polar_calls"
PERMITS = "polar_credits_polar_permits"
PERMIT_WAIT = "polar_credits_polar_permit_wait_seconds"
WAITING = "polar_credits_gateway_waiting"
BUDGET = "polar_credits_polar_budget_per_minute"
GRANTS_HELD = "polar_credits_grants_held_over_max"
MESSAGES_REFUSED = "polar_credits_allowance_messages_refused"

# A permit normally comes within a second; under a full budget, calls queue for minutes.
PERMIT_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def worker_runtime(metrics_port: int = 0, *, host: str = METRICS_HOST) -> Runtime:
    """The worker's Temporal runtime: its core's logs go through Python's logging
    (`core_logging`), and with `metrics_port` it serves Prometheus on host:port, counters
    ending in `_total`, durations in seconds; ValueError when the port cannot be bound."""
    metrics = None
    if metrics_port:
        metrics = PrometheusConfig(
            bind_address=f"{host}:{metrics_port}",
            counters_total_suffix=True,
            durations_as_seconds=True,
            histogram_bucket_overrides={PERMIT_WAIT: list(PERMIT_WAIT_BUCKETS)},
        )
    return Runtime(telemetry=TelemetryConfig(logging=core_logging(), metrics=metrics))


def client_meter(client: Client) -> MetricMeter:
    """The meter of the client's runtime (no-op unless it exports metrics)."""
    runtime = client.service_client.config.runtime or Runtime.default()
    return runtime.metric_meter


def activity_meter() -> MetricMeter:
    """The running activity's meter (its namespace, task queue and type as labels); the
    no-op meter outside an activity (a test calling the method directly)."""
    try:
        return activity.metric_meter()
    except RuntimeError:
        return MetricMeter.noop


def call_outcome(exc: BaseException | None) -> str:
    """A Polar call's outcome as a label: ok, rate_limited, rejected (Polar refused the
    request: 4xx), error (5xx, network, an answer that did not parse)."""
    if exc is None:
        return "ok"
    if isinstance(exc, PolarRateLimitError):
        return "rate_limited"
    if isinstance(exc, HTTPValidationError | PolarClientError):
        return "rejected"
    return "error"


def record_grants(grants: list[tuple[str, str, int]]) -> None:
    """Grant events Polar confirmed (rule, meter, units each), from the running activity.
    An ingest retried after a lost answer counts again: Polar dedupes, the counter does not."""
    meter = activity_meter()
    events = meter.create_counter(GRANT_EVENTS, "Grant events Polar confirmed, by rule and meter.")
    units = meter.create_counter(GRANTED_UNITS, "Units granted, by rule and meter.")
    for rule, meter_name, amount in grants:
        labels: Mapping[str, str] = {"rule": rule, "meter": meter_name}
        events.add(1, labels)
        units.add(max(amount, 0), labels)


def record_verifications(outcomes: list[tuple[str, bool]]) -> None:
    """A verification's end, per meter: whether Polar's meter showed the grant in time."""
    counter = activity_meter().create_counter(
        VERIFICATIONS, "Grant verifications by meter and outcome (verified, unverified)."
    )
    for meter_name, verified in outcomes:
        counter.add(1, {"meter": meter_name, "outcome": "verified" if verified else "unverified"})


def count_held(kind: str, grants: int) -> None:
    """From a workflow: grants held because their amount is above the per-grant maximum,
    by run kind (order, allowance). The SDK records nothing while a workflow replays."""
    workflow.metric_meter().create_counter(
        GRANTS_HELD, "Grants held: computed above the per-grant maximum, never sent to Polar."
    ).add(grants, {"kind": kind})


def count_refused(reason: str) -> None:
    """From an allowance run: a message it refused (reason: customer_mismatch)."""
    workflow.metric_meter().create_counter(
        MESSAGES_REFUSED, "Messages an allowance run refused, by reason."
    ).add(1, {"reason": reason})


class GatewayMetrics:
    """What the gateway to Polar does with its budget: calls by action and outcome, permits,
    the wait for one, and what waits. The no-op meter by default (tests, metrics off)."""

    def __init__(
        self, meter: MetricMeter = MetricMeter.noop, budget_per_minute: int | None = None
    ) -> None:
        self._calls = meter.create_counter(
            POLAR_CALLS, "Calls to Polar by action and outcome (ok, rate_limited, ...)."
        )
        self._permits = meter.create_counter(PERMITS, "Permits to call Polar this worker got.")
        self._permit_wait = meter.create_histogram_float(
            PERMIT_WAIT, "Time the gateway waited for a permit to call Polar.", "s"
        )
        self._waiting = meter.create_gauge(
            WAITING, "Requests waiting for the gateway's next permit, by kind."
        )
        if budget_per_minute is not None:
            meter.create_gauge(
                BUDGET, "Calls a minute to Polar that all workers together may make."
            ).set(budget_per_minute)

    def call(self, action: str, exc: BaseException | None = None) -> None:
        self._calls.add(1, {"action": action, "outcome": call_outcome(exc)})

    def permit(self, waited_seconds: float) -> None:
        self._permits.add(1)
        self._permit_wait.record(waited_seconds)

    def waiting(self, ingest: int, read: int, call: int) -> None:
        self._waiting.set(ingest, {"kind": "ingest"})
        self._waiting.set(read, {"kind": "read"})
        self._waiting.set(call, {"kind": "call"})
