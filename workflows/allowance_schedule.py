"""The allowance run's schedule, computed without side effects: which subscription snapshot
stands, when the subscription ends, and which rule's period falls due next.

Pure functions of the run's state and the time it passes in (never the clock): the same
inputs give the same answers on replay.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits.cadence import parse_cadence
    from polar_credits.models.allowances import AllowanceRule, AllowanceState, SubscriptionFacts

# Statuses that end the run; others grant (in good standing), hold or skip a due period.
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired", "unpaid"})


def ended(facts: SubscriptionFacts) -> bool:
    return facts.ended_at is not None or facts.status in ENDED_STATUSES


def ends_at(facts: SubscriptionFacts) -> datetime | None:
    """When a subscription canceled at period end stops: no grant at or after it."""
    if not facts.cancel_at_period_end:
        return None
    end = facts.ends_at or facts.current_period_end
    return parse_time(end) if end else None


def newer(incoming: SubscriptionFacts, current: SubscriptionFacts) -> bool:
    """Whether `incoming` replaces `current`: never over an ended subscription; an ended one
    always; otherwise by Polar's `modified_at` (the same moment: the later arrival)."""
    if ended(current):
        return False
    if ended(incoming):
        return True
    if incoming.modified_at is None or current.modified_at is None:
        return current.modified_at is None
    return parse_time(incoming.modified_at) >= parse_time(current.modified_at)


def decision_fields(facts: SubscriptionFacts) -> tuple[object, ...]:
    """What the cadence rules look at: a change in any of these re-decides them."""
    return (
        facts.product_id,
        facts.seats,
        facts.status == "trialing",
        sorted(facts.metadata.items()),
    )


def periods_from_now(
    rules: list[AllowanceRule],
    next_period: dict[str, int],
    anchor: datetime,
    now: datetime,
    at_once: bool,
) -> dict[str, int]:
    """Each applying rule's next period: a rule already scheduled keeps its own; a new one
    starts with the period holding now (`at_once`: at first, or when a trial converts) or
    the next one (a rule that starts to apply later, after a product change)."""
    kept = {}
    for rule in rules:
        if rule.rule_id in next_period:
            kept[rule.rule_id] = next_period[rule.rule_id]
            continue
        cadence = parse_cadence(rule.every)
        index = cadence.index_at(anchor, now)
        if not at_once and cadence.start(anchor, index) < now:
            index += 1
        kept[rule.rule_id] = index
    return kept


def next_due(
    rules: list[AllowanceRule], next_period: dict[str, int], anchor: datetime
) -> tuple[AllowanceRule | None, int, datetime | None]:
    """The rule whose next period starts first, that period's index and its start."""
    best: tuple[AllowanceRule | None, int, datetime | None] = (None, 0, None)
    for rule in rules:
        index = next_period.get(rule.rule_id)
        if index is None:
            continue
        start = parse_cadence(rule.every).start(anchor, index)
        if best[2] is None or start < best[2]:
            best = (rule, index, start)
    return best


def meter_of(state: AllowanceState, rule_id: str) -> str | None:
    return next((r.meter_id for r in state.rules if r.rule_id == rule_id), None)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def stamp(moment: datetime) -> str:
    """A period start as grant keys spell it: UTC, to the second."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
