"""The decision record: each rule's verdict on an order, with a one-line reason, and the grants.

`explain_order` walks the rules the way `decide_grants` does (precedence, stop), but keeps
every rule's verdict. Whether a rule matches is `Rule.verdict` (which `Rule.matches` is made
of) plus the looked-up `first_order` fact, and its grant is `decide_grants`' own for that rule,
so the record can never disagree with what is granted.
"""

from __future__ import annotations

from dataclasses import replace

from polar_credits.grant_limit import held_reason, over_max
from polar_credits.models import (
    CapOutcome,
    CapReservation,
    FirstOrderFact,
    Grant,
    HeldGrant,
    OrderDecision,
    OrderFacts,
    RuleVerdict,
)
from polar_credits.rules import RulesFile, decide_grants

GRANTING_STATUSES = ("paid", "partially_refunded", "refunded")
FIRST_ORDER = "first_order"


def grant_key_of(grant: Grant) -> str:
    """The key of the rule that made a grant (grants decided before keys: the rule id)."""
    return grant.rule_key or grant.rule_id


def needs_first_order(rules: RulesFile, order: OrderFacts) -> bool:
    """Whether deciding this order needs the first-order lookup: some rule with a
    `first_order` condition matches it on every other condition."""
    if _order_refusal(order):
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
    refusal = _order_refusal(order)
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
        matched, reason = rule.verdict(order)  # Rule.matches is verdict(order)[0]
        if not matched:
            verdict.reason = reason
            continue
        if rule.first_order is not None:
            assert first_order is not None
            if first_order.first != rule.first_order:
                verdict.reason = _first_order_reason(rule.first_order, first_order)
                continue
        verdict.matched = True
        grants = decide_grants(rules.model_copy(update={"rules": [rule]}), order)
        units = sum(g.units for g in grants)
        verdict.units = units
        verdict.reason = f"matched: {units} units" if units else "matched: 0 units, no grant"
        if over_max(units):
            # Units per seat × a huge seat count, say: held where an operator sees it (this
            # record, the run's status), never sent to Polar.
            reason = held_reason(units)
            verdict.units = 0
            verdict.reason = f"{'would be held' if decision.preview else 'held'}: {reason}"
            decision.held.append(HeldGrant(rule_id=rule.id, units=units, reason=reason))
            grants = []
        decision.grants.extend(g for g in grants if g.units > 0)
        if rule.stop:
            stopped_by = rule.id
    return decision


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


def cap_outcome(reservation: CapReservation, granted_before: int) -> CapOutcome:
    """What a ledger holding `granted_before` units of the rule allows this reservation."""
    allowed = max(0, min(reservation.units, reservation.cap - granted_before))
    return CapOutcome(
        rule_key=reservation.rule_key,
        grant_id=reservation.grant_id,
        wanted=reservation.units,
        allowed=allowed,
        granted_before=granted_before,
        cap=reservation.cap,
    )


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


# -- reasons ------------------------------------------------------------------------


def _order_refusal(order: OrderFacts) -> str | None:
    """Why no rule can grant on this order at all (decide_grants' own gate)."""
    if order.status not in GRANTING_STATUSES:
        return f"order status {order.status}: only paid orders grant"
    if order.billing_reason == "subscription_cycle" and order.subscription_status == "canceled":
        return "final invoice of a canceled subscription: no new cycle"
    return None


def _first_order_reason(wanted: bool, fact: FirstOrderFact) -> str:
    if wanted:
        return (
            f"first_order = true, but an earlier paid order {fact.earlier_order_id} "
            f"({fact.earlier_created_at}) exists"
        )
    return "first_order = false, but this is the customer's first paid order for the product"
