"""The words the Temporal UI shows for each run: static summaries and details set at start,
summaries of activities and timers, and the current details a run updates at each phase.

One module, so every starter (webhook, reconciliation, rerun, recover, operator API) and every
workflow says the same thing the same way. Pure functions of ids, counts and dates: workflows
import them (they are deterministic), and nothing personal goes in. No customer email or name
is ever passed here, and no metadata value or operator's free-text reason is shown (they may
be personal data): summaries and details are user metadata, which a payload codec encodes
like any payload (temporalio 1.35), yet they are what an operator reads first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from polar_credits.models.facts import OrderFacts

# Ids are abbreviated in summaries: enough to recognise a run in a list, and a summary stays
# one short line. Details carry the full ids.
SHORT_ID_CHARS = 8
# Temporal bounds user metadata; a summary is one line in a list.
MAX_SUMMARY_CHARS = 200
MAX_DETAILS_CHARS = 2_000
MAX_VALUE_CHARS = 120
SEP = " · "

# Workflow id prefixes kept whole when a workflow id is abbreviated ("order-credits-9a41…").
_ID_PREFIXES = (
    "order-credits-",
    "subscription-allowance-",
    "manual-grant-",
    "revoke-",
    "backfill-",
    "customer-ledger-",
)


# -- text helpers ---------------------------------------------------------------------------


def _plain(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """An outside value as one printable line: no control characters, no markdown quoting
    tricks, bounded."""
    text = str(value).encode("unicode_escape", "backslashreplace").decode("ascii")
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: str | None) -> str:
    """An id abbreviated for a summary: its first 8 characters and "…"."""
    if not value:
        return "?"
    text = _plain(value)
    return text if len(text) <= SHORT_ID_CHARS + 1 else text[:SHORT_ID_CHARS] + "…"


def short_workflow_id(workflow_id: str) -> str:
    """A workflow id with its kind kept: "order-credits-9a41…"."""
    for prefix in _ID_PREFIXES:
        if workflow_id.startswith(prefix) and len(workflow_id) > len(prefix):
            return prefix + short(workflow_id[len(prefix) :])
    return short(workflow_id)


def in_credits(units: int | float) -> str:
    n = int(units) if float(units).is_integer() else units
    return f"{n} credit" if n == 1 else f"{n} credits"


def when(moment: datetime | str | None) -> str:
    """A UTC instant as operators read it: "2027-01-07 12:00 UTC"."""
    if moment is None:
        return "?"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return _plain(moment, 40)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _summary(*parts: str | None) -> str:
    text = SEP.join(p for p in parts if p)
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"


def _details(title: str, rows: Iterable[tuple[str, object | None]]) -> str:
    """Markdown: a title, then one bullet per known value (full ids, in code spans)."""
    lines = [f"**{title}**", ""]
    lines += [f"- {label}: `{_plain(value)}`" for label, value in rows if value not in (None, "")]
    text = "\n".join(lines)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 1] + "…"


def _rules(rule_ids: Iterable[str]) -> str | None:
    ids = list(dict.fromkeys(rule_ids))
    if not ids:
        return None
    shown = ", ".join(_plain(i, 40) for i in ids[:3])
    more = f" +{len(ids) - 3}" if len(ids) > 3 else ""
    return f"{'rule' if len(ids) == 1 else 'rules'} {shown}{more}"


# -- static summaries and details, set by the starters ---------------------------------------

# What started a run, in its static details.
VIA_WEBHOOK = "Polar's webhook"
VIA_RECONCILIATION = "reconciliation"
VIA_RERUN = "an operator's rerun"
VIA_OPERATOR_API = "the operator API"
VIA_RECOVER = "recovery from Polar (polar-credits recover)"


class StartText(NamedTuple):
    """A run's `static_summary` (one line, in the list) and `static_details` (markdown, on
    the run's page)."""

    summary: str
    details: str


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


def reconcile_start(*, scheduled: bool) -> StartText:
    how = "scheduled" if scheduled else "on demand"
    summary = _summary("reconciliation", how)
    details = _details(
        "Reconciliation: starts the run of every paid order whose webhook never came",
        [("started", "by the reconciliation schedule" if scheduled else "by an operator")],
    )
    return StartText(summary, details)


def recover_start(since_seconds: float, *, subscriptions: bool) -> StartText:
    window = _duration(since_seconds)
    what = "paid orders and subscriptions" if subscriptions else "paid orders"
    summary = _summary("recovery", f"{what} since {window} ago")
    details = _details(
        "Recovery: rebuilds order and allowance runs from Polar after Temporal's state was lost",
        [
            ("order runs", f"from Polar's paid orders created in the last {window}"),
            (
                "allowance runs",
                "from Polar's live subscriptions"
                if subscriptions
                else "left alone (--orders-only)",
            ),
        ],
    )
    return StartText(summary, details)


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d" if not rest else f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h"


def rules_preview_start(order_id: str | None) -> StartText:
    summary = _summary("rules preview", f"order {short(order_id)}" if order_id else "order facts")
    details = _details(
        "A dry run of the rules on one order: grants nothing, reserves nothing",
        [("order", order_id)],
    )
    return StartText(summary, details)


def rules_registry_start(task_queue: str) -> StartText:
    summary = _summary("rules registry", f"task queue {_plain(task_queue, 60)}")
    details = _details(
        "Every rule key an accepted rules file ever had (workers check it at start-up)",
        [("task queue", task_queue)],
    )
    return StartText(summary, details)


def ledger_start(customer_id: str) -> StartText:
    summary = _summary("customer ledger", f"customer {short(customer_id)}")
    details = _details(
        "A customer's per-customer caps (max_units_per_customer), served one order at a time",
        [("customer", customer_id)],
    )
    return StartText(summary, details)


def budget_start(task_queue: str, per_minute: int) -> StartText:
    summary = _summary("Polar call budget", f"{per_minute}/min", _plain(task_queue, 60))
    details = _details(
        "The Polar rate-limit share every worker of this task queue paces its calls by",
        [("task queue", task_queue), ("calls a minute", per_minute)],
    )
    return StartText(summary, details)


# -- current details, set by the workflows at each phase -------------------------------------


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


def reconcile_progress(page: int, orders: int, started: int) -> str:
    return _summary(
        f"listing{SEP}page {page}", f"{orders} paid orders seen, {started} runs started"
    )


def recover_progress(phase: str, page: int, seen: int, started: int) -> str:
    what = "subscriptions" if phase == "subscriptions" else "paid orders"
    return _summary(f"listing {what}{SEP}page {page}", f"{seen} seen, {started} runs started")


def recover_done(orders_started: int, allowances_started: int, complete: bool) -> str:
    return _summary(
        f"done{SEP}{orders_started} order runs and {allowances_started} allowance runs started",
        None if complete else "incomplete (page limit): run it again",
    )


def activity_recover_page(what: str, page: int) -> str:
    return f"list {what}, page {page}"


def reconcile_done(orders: int, started: int, already: int, complete: bool) -> str:
    return _summary(
        f"done{SEP}{orders} paid orders seen",
        f"{started} repaired (runs started), {already} already had a run",
        None if complete else "more next time (page limit)",
    )


def ledger_current(customer_key: str, rule_keys: int, runs: int) -> str:
    """A ledger continued as new has no static summary (continue-as-new takes none in
    temporalio 1.35): its current details say what it is."""
    return _summary(
        f"customer ledger {short(customer_key)}",
        f"caps held for {rule_keys} rule key{'s' if rule_keys != 1 else ''}",
        f"run {runs}",
    )


def budget_current(per_minute: int, permits: int, throttles: int) -> str:
    return _summary(
        f"Polar call budget {per_minute}/min",
        f"{permits} permits, {throttles} x 429 so far",
    )


def registry_current(keys: int, versions: int) -> str:
    return _summary(
        "rules registry",
        f"{keys} rule key{'s' if keys != 1 else ''}",
        f"{versions} accepted file version{'s' if versions != 1 else ''} kept",
    )


# -- summaries of activities and timers --------------------------------------------------------


def activity_decide() -> str:
    return "apply the rules"


def activity_first_order() -> str:
    return "look up the customer's first order"


def activity_reserve(units: int) -> str:
    return f"reserve up to {in_credits(units)} under per-customer caps"


def activity_release(units: int) -> str:
    return f"give back {in_credits(units)} reserved under caps"


def activity_ingest(units: int, events: int = 1) -> str:
    what = f"ingest {in_credits(units)}"
    return what if events == 1 else f"{what} in {events} events"


def activity_grant_allowance(units: int | None, rule_id: str, period: str) -> str:
    amount = in_credits(units) if units is not None else "a top-up"
    return _summary(f"grant {amount} for the period from {when(period)}", _rules([rule_id]))


def activity_take_back(units: int) -> str:
    return f"take back {in_credits(units)}"


def activity_verify(meters: Iterable[str]) -> str:
    names = ", ".join(_plain(m, 40) for m in meters)
    return f"verify the balance on {names}"


def activity_read_meter(meter: str) -> str:
    return f"read the balance on {_plain(meter, 80)}"


def activity_grant_page(page: int, units: int) -> str:
    return f"grant {in_credits(units)} to each customer of page {page}"


def activity_reconcile_page(page: int) -> str:
    return f"list paid orders, page {page}, and start the missing runs"


def activity_watermark() -> str:
    return "find where the last reconciliation stopped"


def activity_fetch_order() -> str:
    return "read the order from Polar"


def activity_read_caps() -> str:
    return "read the customer's per-customer caps (reserves nothing)"


def timer_next_check() -> str:
    return "wait before the next balance check"


def timer_next_period(at: datetime) -> str:
    return f"next period {when(at)}"


def timer_subscription_ends(at: datetime) -> str:
    return f"the subscription ends {when(at)}"
