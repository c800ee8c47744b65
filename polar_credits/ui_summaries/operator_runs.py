"""What an operator's runs show (manual grant, revoke, backfill): their start text and their
current details at each phase."""

from __future__ import annotations

from polar_credits.ui_summaries.orders import order_done, order_verifying
from polar_credits.ui_summaries.text import (
    SEP,
    StartText,
    _details,
    _plain,
    _summary,
    in_credits,
    short,
    short_workflow_id,
)


def manual_grant_start(
    key: str, customer_id: str, meter: str, units: int, *, via: str
) -> StartText:
    """The operator's reason is left out: free text may name a person."""
    summary = _summary(
        f"manual grant {in_credits(units)}", f"meter {_plain(meter, 40)}", f"key {short(key)}"
    )
    details = _details(
        f"An operator's manual grant (started by {via})",
        [("idempotency key", key), ("customer", customer_id), ("meter", meter), ("units", units)],
    )
    return StartText(summary, details)


def revoke_start(
    grant_id: str, customer_id: str, units: int | None, allow_negative: bool, *, via: str
) -> StartText:
    summary = _summary(
        f"revoke of {short_workflow_id(grant_id)}",
        in_credits(units) if units is not None else "all it granted",
        "may go negative" if allow_negative else "capped at the balance",
    )
    details = _details(
        f"Taking a grant back (started by {via})",
        [
            ("grant", grant_id),
            ("customer", customer_id),
            ("units", units if units is not None else "everything the grant granted"),
            ("balance may go negative", "yes" if allow_negative else "no"),
        ],
    )
    return StartText(summary, details)


def backfill_start(
    key: str,
    target: str,
    meter: str,
    units: int,
    product_id: str | None,
    customers_listed: int | None,
    *,
    via: str,
) -> StartText:
    if product_id:
        whom = f"product {short(product_id)}"
    elif customers_listed is not None:
        whom = f"{customers_listed} listed customers"
    else:
        whom = _plain(target, 40).replace("_", " ")
    summary = _summary(
        f"backfill {short(key)}", f"{in_credits(units)} each", f"meter {_plain(meter, 40)}", whom
    )
    details = _details(
        f"A backfill: one grant to each customer of a target (started by {via})",
        [
            ("key", key),
            ("target", target),
            ("product", product_id),
            ("customers listed", customers_listed),
            ("meter", meter),
            ("units each", units),
        ],
    )
    return StartText(summary, details)


# -- current details, set by the operator's runs at each phase --------------------------------


def manual_granting(units: int) -> str:
    return f"granting {in_credits(units)}"


def manual_verifying(units: int) -> str:
    return order_verifying(units)


def manual_done(status: str, units: int) -> str:
    return order_done(status, units)


def revoke_reading() -> str:
    return f"reading{SEP}the customer's balance, to cap the revoke"


def revoke_revoking(units: int, capped: bool) -> str:
    return _summary(f"revoking {in_credits(units)}", "capped at the balance" if capped else None)


def revoke_done(status: str, units: int, capped: bool) -> str:
    if status == "revoked":
        return _summary(
            f"done{SEP}revoked {in_credits(units)}", "capped at the balance" if capped else None
        )
    if status == "nothing_to_revoke":
        return f"done{SEP}nothing to revoke (the balance is used up)"
    if status == "failed":
        return f"failed{SEP}nothing revoked{SEP}the reason is in the run's failure"
    return _summary(f"done{SEP}{_plain(status, 40)}")


def backfill_progress(
    page: int, customers_seen: int, granted: int, already: int, rejected: int, runs: int
) -> str:
    return _summary(
        f"granting{SEP}page {page}",
        f"{customers_seen} customers seen, {granted} granted, {already} already granted, "
        f"{rejected} rejected",
        f"run {runs}" if runs > 1 else None,
    )


def backfill_done(customers_seen: int, granted: int, already: int, rejected: int) -> str:
    return _summary(
        f"done{SEP}{customers_seen} customers",
        f"{granted} granted, {already} already granted, {rejected} rejected",
    )
