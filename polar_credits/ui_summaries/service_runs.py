"""What the service's own runs show (reconciliation, recovery, rules registry, customer ledger,
Polar call budget): their start text and their current details."""

from __future__ import annotations

from polar_credits.ui_summaries.text import SEP, StartText, _details, _plain, _summary, short


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


# -- current details, set by the service's runs ----------------------------------------------


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
