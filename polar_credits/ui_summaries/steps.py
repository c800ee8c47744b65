"""Summaries of the activities and timers the workflows schedule: one short line each, shown
in the run's event history."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from polar_credits.ui_summaries.text import _plain, _rules, _summary, in_credits, when


def activity_recover_page(what: str, page: int) -> str:
    return f"list {what}, page {page}"


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
