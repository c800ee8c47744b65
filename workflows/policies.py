"""Retry policies, timeouts and the continue-as-new rule every workflow uses: one home each.

Each value is part of the commands recorded in workflow histories: changing one changes what
a replayed run issues, so a new need gets a new constant, never a new value for an old one.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from polar_credits.activities.operator import BALANCE_UNREADABLE
    from polar_credits.models.grants import PolarErrorType

# -- retry policies ---------------------------------------------------------------------

# Transient Polar trouble only delays a grant (an ingest, a first-order lookup, a ledger
# reservation, a backfill page): retry forever, with a bounded interval. A grant Polar
# rejected for good is the one failure no retry fixes.
UNTIL_DONE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[PolarErrorType.GRANT_REJECTED.value],
)
# Giving capped units back after Polar refused their grants: retry forever, briefly spaced.
RELEASE_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1))
# A reconciliation page: the next scheduled run starts afresh if this one gives up.
RECONCILE_PAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
# A failed meter read of the first release is just a missed check: its polling loop tries
# again later.
METER_READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
# Verification observes and never decides: it may retry for as long as its window lasts.
VERIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# A revoke waits on an operator: a few tries, then a clear failure rather than a guess.
BALANCE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=4),
    maximum_attempts=4,
    non_retryable_error_types=[BALANCE_UNREADABLE, PolarErrorType.GRANT_REJECTED.value],
)
# Someone is waiting for a preview's answer: a few quick tries, then say what failed.
PREVIEW_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=3,
    non_retryable_error_types=[
        PolarErrorType.ORDER_NOT_FOUND.value,
        PolarErrorType.GRANT_REJECTED.value,
    ],
)

# -- timeouts ---------------------------------------------------------------------------

# Every activity that may wait on Polar or the shared budget heartbeats: Temporal learns
# within seconds that its worker died.
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
# Deciding: the local activities that evaluate the rules.
DECIDE_TIMEOUT = timedelta(seconds=30)
# The first release's per-order ingest and meter reads (its runs replay on them).
FIRST_RELEASE_TIMEOUT = timedelta(seconds=30)
# A grant may wait for its batch's permit, and for a 429's retry-after, beyond a minute.
INGEST_TIMEOUT = timedelta(minutes=10)
# Reading Polar's orders (the first-order lookup) and reserving in the customer's ledger.
LOOKUP_TIMEOUT = timedelta(minutes=2)
# A revoke's balance read.
BALANCE_TIMEOUT = timedelta(minutes=2)
# A page of a backfill or a reconciliation waits for permits of the shared budget, maybe
# behind a 429's retry-after.
PAGE_TIMEOUT = timedelta(minutes=10)
# Reading or moving a reconciliation's watermark.
WATERMARK_TIMEOUT = timedelta(seconds=30)
# Each activity of a preview, which someone waits for.
PREVIEW_ACTIVITY_TIMEOUT = timedelta(seconds=20)


# -- continue-as-new --------------------------------------------------------------------

# Events before a long-lived run (a subscription's allowance, a customer's ledger, the rules
# registry) continues as new, well before Temporal's own suggestion (10,240 events) and limit
# (51,200): a granted period costs about a dozen events, a reservation or an accepted rules
# file a handful, so the state carried stays small. A run's input may set a lower one (tests).
HISTORY_LIMIT = 2_000


def should_continue_as_new(history_limit: int) -> bool:
    """Whether a long-lived run should hand its state to a fresh run now: its history has
    reached the run's own limit, or Temporal suggests it (history size or event count)."""
    info = workflow.info()
    return info.get_current_history_length() >= history_limit or info.is_continue_as_new_suggested()
