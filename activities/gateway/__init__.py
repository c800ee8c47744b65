"""The one gateway to Polar: every call the worker makes goes through here.

It batches (the grants of many orders in one ingest call, the meters of many customers in
one read), paces every call under the service's share of the organization's rate limit
(shared by all workers through `CallBudget`), isolates an event Polar rejects from the rest
of its batch, and translates Polar's errors into Temporal's retry semantics.

Activities ask it for what they need and wait for their own part of the answer; no activity
calls polar-sdk directly.

Where each job lives: `endpoints` (what activities ask: `PolarGateway`), `scheduler`
(batches, read turns, isolating a rejected event, permits), `errors` (Polar's errors in
Temporal's terms), `clock` (Polar's `Date`), `results` (what callers get back).
"""

from polar_credits.activities.gateway.clock import polar_time_after_call
from polar_credits.activities.gateway.endpoints import PolarGateway, PolarSender
from polar_credits.activities.gateway.errors import (
    DEFAULT_RATE_LIMIT_WAIT,
    PolarCallError,
    polar_failure,
    rejected,
    retry_after,
)
from polar_credits.activities.gateway.results import (
    IngestOutcome,
    IngestReceipt,
    MeterRow,
    OrderStamp,
)
from polar_credits.activities.gateway.scheduler import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_READ_CUSTOMERS,
    READ_TURN,
    BatchSender,
    CallBudget,
    CallScheduler,
)

__all__ = [
    "DEFAULT_RATE_LIMIT_WAIT",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_READ_CUSTOMERS",
    "READ_TURN",
    "BatchSender",
    "CallBudget",
    "CallScheduler",
    "IngestOutcome",
    "IngestReceipt",
    "MeterRow",
    "OrderStamp",
    "PolarCallError",
    "PolarGateway",
    "PolarSender",
    "polar_failure",
    "polar_time_after_call",
    "rejected",
    "retry_after",
]
