"""What an order run and a rules preview show: their start text, and the order run's current
details at each phase (deciding, granting, verifying, done)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from polar_credits.ui_summaries.text import (
    SEP,
    StartText,
    _details,
    _plain,
    _rules,
    _summary,
    in_credits,
    short,
)

if TYPE_CHECKING:
    from polar_credits.models.facts import OrderFacts


def order_run(facts: OrderFacts, *, via: str) -> StartText:
    """The order run's start text from the facts its input carries."""
    return order_start(
        facts.order_id,
        facts.customer_id,
        facts.billing_reason,
        facts.product_id,
        facts.subscription_id,
        via=via,
    )


def order_start(
    order_id: str,
    customer_id: str,
    billing_reason: str,
    product_id: str | None,
    subscription_id: str | None,
    *,
    via: str,
) -> StartText:
    """An order run, before any decision: "order 9a41… · purchase · product 0b1f…".
    `via`: what started it (the webhook, reconciliation, an operator's rerun)."""
    summary = _summary(
        f"order {short(order_id)}",
        _plain(billing_reason, 40),
        f"product {short(product_id)}" if product_id else None,
        f"subscription {short(subscription_id)}" if subscription_id else None,
    )
    details = _details(
        f"Credits for one paid order (started by {via})",
        [
            ("order", order_id),
            ("customer", customer_id),
            ("product", product_id),
            ("subscription", subscription_id),
            ("billing reason", billing_reason),
        ],
    )
    return StartText(summary, details)


def rules_preview_start(order_id: str | None) -> StartText:
    summary = _summary("rules preview", f"order {short(order_id)}" if order_id else "order facts")
    details = _details(
        "A dry run of the rules on one order: grants nothing, reserves nothing",
        [("order", order_id)],
    )
    return StartText(summary, details)


# -- current details, set by the order run at each phase --------------------------------------


def order_deciding(order_id: str) -> str:
    return f"deciding{SEP}applying the rules to order {short(order_id)}"


def order_granting(units: int, rule_ids: Iterable[str]) -> str:
    return _summary(f"granting {in_credits(units)}", _rules(rule_ids))


def order_verifying(units: int) -> str:
    return f"verifying{SEP}granted {in_credits(units)}{SEP}waiting for Polar's balance to show it"


def order_done(status: str, units: int = 0, rule_ids: Iterable[str] = ()) -> str:
    """The outcome, by the run's credit status."""
    if status == "verified":
        return _summary(f"done{SEP}granted {in_credits(units)}{SEP}verified", _rules(rule_ids))
    if status == "unverified":
        return _summary(
            f"done{SEP}granted {in_credits(units)}{SEP}unverified (the balance did not show it in "
            "time; the grant stands)",
            _rules(rule_ids),
        )
    if status == "no_rule":
        return f"done{SEP}no rule matched{SEP}nothing granted"
    if status == "already_granted":
        return f"done{SEP}already granted (Polar held every grant of this period){SEP}nothing new"
    if status == "failed":
        return f"failed{SEP}nothing granted{SEP}the reason is in the run's failure"
    if status == "held_over_max":
        return (
            f"done{SEP}held: the amount is above the per-grant maximum{SEP}nothing sent to "
            "Polar (see the decision)"
        )
    return _summary(f"done{SEP}{_plain(status, 40)}")
