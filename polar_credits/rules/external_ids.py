"""Polar external ids of rule grants: an order's grants keyed on the order or the subscription
period it credits, an allowance period's on (subscription, rule, period start).

Business keys only, never run ids or attempts, so Polar dedupes every retry and re-run.
"""

from __future__ import annotations

from polar_credits.models import OrderFacts, order_key

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
        return f"subscription:{order_key(order.subscription_id)}:{kind}:{start}"
    return f"order:{order_key(order.order_id)}"


def grant_external_id(order: OrderFacts, rule_key: str) -> str:
    """Polar's dedupe key for a grant: business keys only (the rule's stable key, not its
    id), so any retry, and any run after the rule is renamed, maps to the same event."""
    return f"polar-credits:{grant_key(order)}:rule:{rule_key}"


def allowance_external_id(subscription_id: str, rule_key: str, period_start: str) -> str:
    """Polar's dedupe key for one allowance period: a second run for the subscription, a
    reset of its run, a worker crash or a renamed rule (same key) maps to the same event."""
    return (
        f"polar-credits:subscription:{order_key(subscription_id)}:allowance:{rule_key}"
        f":period:{period_start}"
    )
