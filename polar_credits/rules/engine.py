"""The decision engine: from an order's facts, the rules and what was looked up (the
first-order fact, the customer's caps), which grants the order gets and why.

This is where an order's credits are decided. `grant_refusal` says whether an order may
grant at all; `explain_order` keeps every rule's verdict with a one-line reason (the
decision record an order run and a preview show); `decide_grants` is the same decision as a
bare list, for the first release's runs. A cadence rule's applicability to a subscription is
`decide_allowance_rules`. Workflows run the engine through activities
(workflows/deciding.py), so a run's decision is recorded in its history.
"""

from __future__ import annotations

from dataclasses import replace

from polar_credits.cadence import parse_cadence
from polar_credits.grant_limit import held_reason, over_max
from polar_credits.identity import grant_external_id
from polar_credits.models.allowances import AllowanceRule, SubscriptionFacts
from polar_credits.models.decisions import FirstOrderFact, HeldGrant, OrderDecision, RuleVerdict
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant
from polar_credits.models.ledger import CapOutcome, CapReservation
from polar_credits.rules.amounts import fixed_units, order_units
from polar_credits.rules.matching import applies_to_subscription
from polar_credits.rules.schema import Rule, RulesFile

GRANTING_STATUSES = ("paid", "partially_refunded", "refunded")
FIRST_ORDER = "first_order"


def grant_refusal(order: OrderFacts) -> str | None:
    """Why no rule may grant on this order at all, or None. A decision about a readable
    order (unlike `PaidOrder.refusal`, which says a payload can never be processed)."""
    if order.status not in GRANTING_STATUSES:
        return f"order status {order.status}: only paid orders grant"
    # Polar publishes a canceled subscription's final invoice as a cycle order: no new cycle.
    if order.billing_reason == "subscription_cycle" and order.subscription_status == "canceled":
        return "final invoice of a canceled subscription: no new cycle"
    return None


def needs_first_order(rules: RulesFile, order: OrderFacts) -> bool:
    """Whether deciding this order needs the first-order lookup: some rule with a
    `first_order` condition matches it on every other condition."""
    if grant_refusal(order):
        return False
    return any(rule.first_order is not None and rule.matches(order) for rule in rules.rules)


def explain_order(
    rules: RulesFile,
    order: OrderFacts,
    first_order: FirstOrderFact | None = None,
    *,
    preview: bool = False,
) -> OrderDecision:
    """Every rule's verdict, in precedence order, and the grants they make. When a rule needs
    the first-order fact and it is not given, the decision only says so (`needs`). A grant
    above the per-grant maximum is held (`held`), not among the grants."""
    decision = OrderDecision(
        order_id=order.order_id,
        rules_version=rules.version,
        first_order=first_order,
        preview=preview,
    )
    if first_order is None and needs_first_order(rules, order):
        decision.needs = [FIRST_ORDER]
        return decision
    refusal = grant_refusal(order)
    stopped_by: str | None = None
    for rule in rules.by_precedence():
        verdict = RuleVerdict(
            rule_id=rule.id,
            key=rule.stable_key,
            matched=False,
            reason="",
            cap=rule.max_units_per_customer,
        )
        decision.verdicts.append(verdict)
        if refusal:
            verdict.reason = refusal
            continue
        if stopped_by is not None:
            verdict.reason = f"skipped: an earlier rule with stop matched ({stopped_by})"
            continue
        matched, reason = rule.verdict(order)
        if not matched:
            verdict.reason = reason
            continue
        if rule.first_order is not None:
            assert first_order is not None
            if first_order.first != rule.first_order:
                verdict.reason = _first_order_reason(rule.first_order, first_order)
                continue
        verdict.matched = True
        grant = _grant(rules, rule, order)
        units = grant.units if grant else 0
        verdict.units = units
        verdict.reason = f"matched: {units} units" if units else "matched: 0 units, no grant"
        if over_max(units):
            # Units per seat × a huge seat count, say: held where an operator sees it (this
            # record, the run's status), never sent to Polar.
            reason = held_reason(units)
            verdict.units = 0
            verdict.reason = f"{'would be held' if decision.preview else 'held'}: {reason}"
            decision.held.append(HeldGrant(rule_id=rule.id, units=units, reason=reason))
            grant = None
        if grant is not None:
            decision.grants.append(grant)
        if rule.stop:
            stopped_by = rule.id
    return decision


def decide_grants(rules: RulesFile, order: OrderFacts) -> list[Grant]:
    """The grants alone, as the first release decided them: no first-order condition judged,
    no per-grant maximum (its runs replay on this)."""
    if grant_refusal(order):
        return []
    grants = []
    for rule in rules.by_precedence():
        if not rule.matches(order):
            continue
        grant = _grant(rules, rule, order)
        if grant is not None:
            grants.append(grant)
        if rule.stop:
            break
    return grants


def decide_allowance_rules(rules: RulesFile, facts: SubscriptionFacts) -> list[AllowanceRule]:
    """The cadence rules that apply to the subscription as it is now (its product, seats,
    metadata and trial state)."""
    decided = []
    for rule in rules.rules:
        if not applies_to_subscription(rule, facts):
            continue
        meter = rules.meters[rule.meter]
        decided.append(
            AllowanceRule(
                rule_id=rule.id,
                every=str(parse_cadence(rule.every or "")),  # applies_to_subscription: set
                meter=rule.meter,
                meter_id=meter.id,
                event_name=meter.event_name,
                property=meter.property,
                units=fixed_units(rule, facts.seats),
                top_up_to=rule.top_up_to,
                rollover_cap=rule.rollover_cap,
                rule_key=rule.stable_key,
            )
        )
    return decided


# -- per-customer caps: what the ledger is asked, and what it allowed ------------------------


def cap_reservations(decision: OrderDecision) -> list[CapReservation]:
    """What the capped rules of a decision want from the customer's ledger."""
    caps = {verdict.rule_id: verdict.cap for verdict in decision.verdicts}
    return [
        CapReservation(
            rule_key=grant_key_of(grant),
            grant_id=grant.external_id,
            units=grant.units,
            cap=cap,
        )
        for grant in decision.grants
        if (cap := caps.get(grant.rule_id)) is not None
    ]


def apply_caps(decision: OrderDecision, outcomes: list[CapOutcome]) -> OrderDecision:
    """The decision with each capped grant cut to what the ledger allowed (a grant cut to 0
    is dropped) and the cap in its rule's verdict."""
    by_grant = {outcome.grant_id: outcome for outcome in outcomes}
    grants = []
    for grant in decision.grants:
        outcome = by_grant.get(grant.external_id)
        if outcome is None:
            grants.append(grant)
            continue
        verdict = next(v for v in decision.verdicts if v.rule_id == grant.rule_id)
        verdict.granted_before = outcome.granted_before
        verdict.units = outcome.allowed
        verdict.reason = cap_reason(outcome, decision.preview)
        if outcome.allowed > 0:
            grants.append(replace(grant, units=outcome.allowed))
    decision.grants = grants
    return decision


def cap_reason(outcome: CapOutcome, preview: bool = False) -> str:
    before = f"{outcome.granted_before} granted before, max_units_per_customer {outcome.cap}"
    if outcome.allowed == outcome.wanted:
        return f"matched: {outcome.allowed} units (within the cap: {before})"
    verb = "would be capped" if preview else "capped"
    return f"{verb}: {outcome.allowed} of {outcome.wanted} units ({before})"


# -- reading a decision -------------------------------------------------------------------


def grant_key_of(grant: Grant) -> str:
    """The key of the rule that made a grant (grants decided before keys: the rule id)."""
    return grant.rule_key or grant.rule_id


def granted_rule_keys(decision: OrderDecision) -> list[str]:
    """The keys of the rules that granted, for the `CreditRuleKeys` search attribute."""
    return sorted({grant_key_of(grant) for grant in decision.grants})


def describe(decision: OrderDecision) -> list[str]:
    """The decision as lines an operator reads (CLI, logs)."""
    lines = [f"rules version {decision.rules_version}"]
    if decision.first_order is not None:
        lines.append(decision.first_order.describe())
    lines += [f"{v.rule_id}: {v.reason}" for v in decision.verdicts]
    total = sum(g.units for g in decision.grants)
    lines.append(f"grants: {total} units in {len(decision.grants)} grant(s)")
    if decision.held:
        lines.append(f"held over the per-grant maximum: {len(decision.held)} grant(s)")
    return lines


def _grant(rules: RulesFile, rule: Rule, order: OrderFacts) -> Grant | None:
    """A matching rule's grant on the order; None when it comes to 0 units (a $0 order at
    so much per dollar), which grants nothing but still matched (and stops, with stop)."""
    units = order_units(rule, order)
    if units <= 0:
        return None
    meter = rules.meters[rule.meter]
    return Grant(
        rule_id=rule.id,
        meter=rule.meter,
        meter_id=meter.id,
        event_name=meter.event_name,
        property=meter.property,
        units=units,
        customer_id=order.customer_id,
        order_id=order.order_id,
        external_id=grant_external_id(order, rule.stable_key),
        reason=order.billing_reason,
        rule_key=rule.stable_key,
    )


def _first_order_reason(wanted: bool, fact: FirstOrderFact) -> str:
    if wanted:
        return (
            f"first_order = true, but an earlier paid order {fact.earlier_order_id} "
            f"({fact.earlier_created_at}) exists"
        )
    return "first_order = false, but this is the customer's first paid order for the product"
