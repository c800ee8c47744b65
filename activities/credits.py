"""Activities of the order-credits workflow: decide grants, ingest them into Polar, read meters.

All side effects live here. Polar failures are translated into Temporal's retry semantics:
transient ones retry with backoff, a 429 waits at least its `retry-after`, and a rejection no
retry can fix (422) is a named non-retryable error.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from polar.base import (
    PolarClientError,
    PolarDeserializationError,
    PolarNetworkError,
    PolarRateLimitError,
    PolarServerError,
)
from polar.v2026_10 import PolarAsync
from polar.v2026_10.errors import HTTPValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from polar_credits.models import (
    Grant,
    IngestResult,
    MeterCheckInput,
    MeterReading,
    OrderFacts,
)
from polar_credits.rules import RulesFile, decide_grants

# Error types the workflow and its retry policies refer to by name.
GRANT_REJECTED = "PolarRejectedGrant"
POLAR_RATE_LIMITED = "PolarRateLimited"
POLAR_UNAVAILABLE = "PolarUnavailable"
POLAR_AUTH = "PolarAuthError"

# Polar sends no retry-after on some 429s; a minute is one full window of its rate limit.
DEFAULT_RATE_LIMIT_WAIT = timedelta(seconds=60)
_MAX_ERROR_TEXT = 500


def grant_event(grant: Grant) -> dict:
    """The negative event that raises the customer's balance by `grant.units`."""
    return {
        "name": grant.event_name,
        "customer_id": grant.customer_id,
        "external_id": grant.external_id,
        "metadata": {
            # A Sum meter only counts JSON numbers: an int, never "-10".
            grant.property: -grant.units,
            "rule_id": grant.rule_id,
            "order_id": grant.order_id,
            "reason": grant.reason,
            "source": "polar-credits",
        },
    }


def polar_failure(exc: Exception, action: str) -> ApplicationError:
    """Map a polar-sdk error to the ApplicationError that gives it the right retry behaviour."""
    if isinstance(exc, PolarRateLimitError):
        wait = (
            timedelta(seconds=exc.retry_after)
            if exc.retry_after is not None
            else DEFAULT_RATE_LIMIT_WAIT
        )
        return ApplicationError(
            f"Polar rate limit hit while {action}; retrying after {wait.total_seconds():.0f}s",
            type=POLAR_RATE_LIMITED,
            next_retry_delay=wait,
        )
    if isinstance(exc, HTTPValidationError):
        return ApplicationError(
            f"Polar rejected {action} (422): {_validation_detail(exc)}",
            type=GRANT_REJECTED,
            non_retryable=True,
        )
    if isinstance(exc, PolarClientError) and exc.status_code in (401, 403):
        # Retry: the grant must survive until an operator fixes the token.
        return ApplicationError(
            f"Polar refused the access token while {action} ({exc.status_code}); "
            "check POLAR_ACCESS_TOKEN and its scopes (events:write, customer_meters:read)",
            type=POLAR_AUTH,
        )
    if isinstance(exc, PolarClientError) and exc.status_code == 422:
        return ApplicationError(
            f"Polar rejected {action} (422): {_truncate(str(exc.error))}",
            type=GRANT_REJECTED,
            non_retryable=True,
        )
    if isinstance(exc, (PolarServerError, PolarNetworkError, PolarDeserializationError)):
        return ApplicationError(
            f"Polar unavailable while {action}: {_truncate(exc.message)}", type=POLAR_UNAVAILABLE
        )
    if isinstance(exc, PolarClientError):
        return ApplicationError(
            f"Polar answered {exc.status_code} while {action}: {_truncate(str(exc.error))}",
            type=POLAR_UNAVAILABLE,
        )
    return ApplicationError(f"Unexpected error while {action}: {_truncate(str(exc))}")


def _validation_detail(exc: HTTPValidationError) -> str:
    details = getattr(exc.error, "detail", None) or []
    parts = []
    for item in details:
        loc = ".".join(str(p) for p in getattr(item, "loc", []) or [])
        parts.append(
            f"{loc}: {getattr(item, 'msg', item)}" if loc else str(getattr(item, "msg", item))
        )
    return _truncate("; ".join(parts) or str(exc.error))


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class CreditActivities:
    """Holds the Polar client and the rules; the worker registers its bound methods."""

    def __init__(self, polar: PolarAsync, rules: RulesFile) -> None:
        self._polar = polar
        self._rules = rules

    @activity.defn(name="evaluate_rules")
    async def evaluate_rules(self, order: OrderFacts) -> list[Grant]:
        return decide_grants(self._rules, order)

    @activity.defn(name="ingest_grants")
    async def ingest_grants(self, grants: list[Grant]) -> IngestResult:
        """One batch call for all of an order's grants; Polar dedupes each by `external_id`."""
        try:
            response = await self._polar.events.ingest(events=[grant_event(g) for g in grants])
        except Exception as exc:
            raise polar_failure(exc, "ingesting grant events") from None
        activity.logger.info(
            "ingested grants for order %s: inserted=%d duplicates=%d",
            grants[0].order_id if grants else "-",
            response.inserted,
            response.duplicates,
        )
        return IngestResult(inserted=response.inserted, duplicates=response.duplicates)

    @activity.defn(name="read_meter")
    async def read_meter(self, check: MeterCheckInput) -> MeterReading:
        """Read the customer meter and tell whether Polar has recomputed it since the grant.

        Balances are recomputed asynchronously after ingestion, so the meter counts the grant
        once its `modified_at` is not older than every grant event's timestamp (both are
        Polar's clock). Only numbers leave this activity: the API's objects carry the
        customer's email and name, which must not reach the workflow history.
        """
        try:
            meters = await self._polar.customer_meters.list(
                customer_id=check.customer_id, meter_id=check.meter_id, limit=1
            )
            events = await self._polar.events.list(
                customer_id=check.customer_id,
                name=check.event_name,
                metadata={"order_id": check.order_id},
                limit=100,
            )
        except Exception as exc:
            raise polar_failure(exc, "reading the customer meter") from None

        wanted = set(check.rule_ids)
        stamps = [
            _parse_time(event.timestamp)
            for event in events.items
            if getattr(event, "metadata", {}).get("rule_id") in wanted
        ]
        meter = meters.items[0] if meters.items else None
        modified = _parse_time(meter.modified_at) if meter else None
        includes = (
            meter is not None
            and len(stamps) >= len(wanted)
            and modified is not None
            and all(modified >= stamp for stamp in stamps)
        )
        return MeterReading(
            meter_id=check.meter_id,
            consumed_units=float(meter.consumed_units) if meter else 0.0,
            credited_units=float(meter.credited_units) if meter else 0.0,
            balance=float(meter.balance) if meter else 0.0,
            modified_at=meter.modified_at if meter else None,
            events_found=len(stamps),
            includes_grant=includes,
        )

    def all(self) -> list:
        return [self.evaluate_rules, self.ingest_grants, self.read_meter]
