"""Every id the service makes: Temporal workflow ids and Polar external ids, built from business
keys (order, subscription period, rule, operator key), never from run ids or attempts.

Each format is pinned byte for byte by tests/test_identity.py: running workflows, Temporal's
id dedupe and Polar's `external_id` dedupe (forever) all depend on these strings never changing.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polar_credits.models.facts import OrderFacts

# -- Key safety ------------------------------------------------------------------------------
# Two schemes, because ids built with each exist in Temporal and Polar: merging them would
# change some of those ids. Both keep one key per value (hashing is still one-to-one in
# practice), so every layer of dedupe holds.

# Polar's ids are 36-character UUIDs. Ids, external ids and event metadata built from them must
# stay within Temporal's and Polar's limits (1,000 bytes for a workflow id, 500 characters for
# a metadata value) and be safe to print.
MAX_PLAIN_POLAR_ID_CHARS = 200

# An operator's idempotency key, or a grant id, used as is in ids: anything else (long, spaces,
# control characters) is hashed. Backfill keys must match it outright (the API refuses others).
OPERATOR_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


def _sha256(value: str) -> str:
    return "sha256-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def safe_key_part(polar_id: str) -> str:
    """A Polar id (order, subscription, customer) as it appears in workflow ids, external ids
    and event metadata: itself, or, when long or holding characters that do not belong in an
    id (newlines, escapes), its SHA-256."""
    if len(polar_id) <= MAX_PLAIN_POLAR_ID_CHARS and polar_id.isprintable():
        return polar_id
    return _sha256(polar_id)


def operator_key_part(key: str) -> str:
    """An operator's idempotency key or a grant id as it appears in manual grant and revoke
    ids: itself when short and id-safe (OPERATOR_KEY), else its SHA-256."""
    if OPERATOR_KEY.match(key):
        return key
    return _sha256(key)


# -- Workflow ids ----------------------------------------------------------------------------

ORDER_WORKFLOW_PREFIX = "order-credits-"
ALLOWANCE_WORKFLOW_PREFIX = "subscription-allowance-"
LEDGER_WORKFLOW_PREFIX = "customer-ledger-"
MANUAL_GRANT_PREFIX = "manual-grant-"
REVOKE_PREFIX = "revoke-"
BACKFILL_PREFIX = "backfill-"
PREVIEW_PREFIX = "rules-preview-"
BUDGET_PREFIX = "polar-credits-budget-"
REGISTRY_WORKFLOW_ID = "polar-credits-rules"
DEFAULT_TASK_QUEUE = "polar-credits"
# The reconciliation schedule, and the prefix of its runs (Temporal appends the scheduled
# time) and of the runs started at once.
RECONCILE_SCHEDULE_ID = "polar-credits-reconcile"
RECONCILE_RUN_PREFIX = "polar-credits-reconcile"
RECOVER_RUN_PREFIX = "polar-credits-recover"


def order_workflow_id(order_id: str) -> str:
    """One id per order, so Temporal refuses a second run (see `safe_key_part`)."""
    return ORDER_WORKFLOW_PREFIX + safe_key_part(order_id)


def allowance_workflow_id(subscription_id: str) -> str:
    """One allowance run per subscription."""
    return ALLOWANCE_WORKFLOW_PREFIX + safe_key_part(subscription_id)


def ledger_customer_key(customer_id: str) -> str:
    """The customer as the ledger run names it (its id's suffix, kept in its state)."""
    return safe_key_part(customer_id)


def ledger_workflow_id(customer_id: str) -> str:
    """One ledger run per customer: grants for one customer are serialised through it."""
    return LEDGER_WORKFLOW_PREFIX + ledger_customer_key(customer_id)


def manual_grant_workflow_id(key: str) -> str:
    return MANUAL_GRANT_PREFIX + operator_key_part(key)


def revoke_workflow_id(grant_id: str) -> str:
    """One revoke run per revoked grant run (`grant_id` is that run's workflow id)."""
    return REVOKE_PREFIX + operator_key_part(grant_id)


def backfill_workflow_id(key: str) -> str:
    """`key` matches OPERATOR_KEY (the API refuses others), so it is used as is."""
    return BACKFILL_PREFIX + key


def preview_workflow_id() -> str:
    """A preview is a throwaway run: a new id each time."""
    return f"{PREVIEW_PREFIX}{uuid.uuid4()}"


def budget_workflow_id(task_queue: str) -> str:
    """One Polar call budget per deployment (task queue)."""
    return BUDGET_PREFIX + task_queue


def registry_workflow_id(task_queue: str) -> str:
    """One rules registry per deployment (task queue): `polar-credits-rules` for the default."""
    if task_queue == DEFAULT_TASK_QUEUE:
        return REGISTRY_WORKFLOW_ID
    return f"{REGISTRY_WORKFLOW_ID}:{task_queue}"


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def reconcile_now_workflow_id(now: datetime) -> str:
    """A reconciliation started at once (beside the schedule's), named for when (UTC)."""
    return f"{RECONCILE_RUN_PREFIX}-now-{_stamp(now)}"


def recover_workflow_id(now: datetime) -> str:
    """A recovery, named for when it was started (UTC)."""
    return f"{RECOVER_RUN_PREFIX}-{_stamp(now)}"


# -- Polar external ids ----------------------------------------------------------------------
# Polar dedupes events on these forever: any retry, re-run or second start maps to one event.

# Orders that credit a subscription period, and the snapshot field that says which period.
PERIOD_REASONS = {
    "subscription_create": ("period", "subscription_period_start"),
    "subscription_cycle": ("period", "subscription_period_start"),
    "subscription_meter_cycle": ("meter-period", "subscription_meter_period_start"),
}


def grant_key(order: OrderFacts) -> str:
    """What a grant is keyed on: the subscription period the order credits (so a second
    order for the same period, a retried invoice or a re-bill, grants nothing), or, for a
    purchase, a proration, or an order whose snapshot does not say the period, the order."""
    kind, attribute = PERIOD_REASONS.get(order.billing_reason, (None, None))
    start = getattr(order, attribute) if attribute else None
    if kind and start and order.subscription_id:
        return f"subscription:{safe_key_part(order.subscription_id)}:{kind}:{start}"
    return f"order:{safe_key_part(order.order_id)}"


def grant_external_id(order: OrderFacts, rule_key: str) -> str:
    """An order grant: business keys only (the rule's stable key, not its id), so any retry,
    and any run after the rule is renamed, maps to the same event."""
    return f"polar-credits:{grant_key(order)}:rule:{rule_key}"


def allowance_external_id(subscription_id: str, rule_key: str, period_start: str) -> str:
    """One allowance period: a second run for the subscription, a reset of its run, a worker
    crash or a renamed rule (same key) maps to the same event."""
    return (
        f"polar-credits:subscription:{safe_key_part(subscription_id)}:allowance:{rule_key}"
        f":period:{period_start}"
    )


def manual_grant_external_id(key: str) -> str:
    """One event per idempotency key, forever."""
    return f"polar-credits:manual:{operator_key_part(key)}"


def revoke_external_id(grant_external_id: str) -> str:
    """One compensating event per grant event, however often the revoke is asked."""
    return f"polar-credits:revoke:{grant_external_id}"


def backfill_external_id(key: str, customer_id: str) -> str:
    """One grant per backfill and customer, whatever the number of runs, retries, crashes or
    pages that list the customer."""
    return f"polar-credits:backfill:{key}:customer:{customer_id}"
