"""What a subscription's allowance run shows: its start text, and its current details (what it
waits for, deciding, granting, done)."""

from __future__ import annotations

from datetime import datetime

from polar_credits.ui_summaries.text import (
    SEP,
    StartText,
    _details,
    _plain,
    _rules,
    _summary,
    in_credits,
    short,
    when,
)


def allowance_start(
    subscription_id: str, customer_id: str, product_id: str | None, *, via: str
) -> StartText:
    summary = _summary(
        "allowance",
        f"subscription {short(subscription_id)}",
        f"product {short(product_id)}" if product_id else None,
    )
    details = _details(
        f"A subscription's allowance on its own cadence (started by {via})",
        [("subscription", subscription_id), ("customer", customer_id), ("product", product_id)],
    )
    return StartText(summary, details)


# -- current details, set by the allowance run at each phase ----------------------------------


def allowance_waiting(
    status: str,
    *,
    grant_at: datetime | None = None,
    until: datetime | None = None,
    why: str | None = None,
    grants_total: int = 0,
    units_total: int = 0,
    held_total: int = 0,
    refused_total: int = 0,
) -> str:
    """What the allowance run waits for, by its status (AllowanceStatus values), and what
    needs an operator's eye (periods held over the maximum, messages refused)."""
    so_far = (
        f"{grants_total} period{'s' if grants_total != 1 else ''} granted, "
        f"{in_credits(units_total)} in all"
        if grants_total
        else None
    )
    held = (
        f"{held_total} period{'s' if held_total != 1 else ''} held over the per-grant maximum"
        if held_total
        else None
    )
    refused = (
        f"{refused_total} message{'s' if refused_total != 1 else ''} refused: another "
        "customer than the subscription's"
        if refused_total
        else None
    )
    if status == "waiting_for_payment":
        head = f"held: not paid{SEP}waiting for the subscription's first paid order"
    elif status == "held":
        head = f"held: {_plain(why, 120)}" if why else "held"
    elif status == "paused":
        head = f"paused{SEP}periods due while paused are skipped"
    elif status == "ending":
        head = f"ending{SEP}no grant from {when(until)}"
    elif status == "held_over_max":
        head = f"held over the per-grant maximum{SEP}nothing sent{SEP}next period {when(grant_at)}"
    elif grant_at is not None:
        head = f"waiting for the next period{SEP}{when(grant_at)}"
    else:
        head = f"{_plain(status, 40)}{SEP}no cadence rule applies now"
    return _summary(head, so_far, held, refused)


def allowance_deciding() -> str:
    return f"deciding{SEP}reading which cadence rules apply"


def allowance_granting(units: int | None, rule_id: str, period: str) -> str:
    amount = in_credits(units) if units is not None else "a top-up"
    return _summary(f"granting {amount}", f"period {when(period)}", _rules([rule_id]))


def allowance_done(why: str, grants_total: int, units_total: int) -> str:
    return _summary(
        f"done{SEP}{_plain(why, 80)}",
        f"{grants_total} period{'s' if grants_total != 1 else ''} granted, "
        f"{in_credits(units_total)} in all",
    )
