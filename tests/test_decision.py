"""The decision record, table-driven: each rule's verdict agrees with `Rule.matches`, and its
one-line reason says which condition failed; first_order and per-customer caps."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from polar_credits.models.decisions import FirstOrderFact
from polar_credits.models.facts import OrderFacts
from polar_credits.rules import (
    apply_caps,
    cap_outcome,
    cap_reservations,
    decide_grants,
    explain_order,
    granted_rule_keys,
    load_rules,
    needs_first_order,
    parse_rules,
)

RULES_TEXT = """
[meters.api]
id = "meter-1"
event_name = "api_usage"

[[rules]]
id = "bonus"
meter = "api"
units = 10
products = ["pack"]

[[rules]]
id = "subscriber"
meter = "api"
units = 250
products = ["pro"]
billing_reasons = ["subscription_create", "subscription_cycle"]
during_trial = false

[[rules]]
id = "sale"
meter = "api"
units = 50
products = ["pack"]
metadata = { campaign = { in = ["launch", "spring"] } }
currencies = ["usd"]
min_net_amount = 1000
active_from = 2026-01-01T00:00:00Z
active_until = 2027-01-01T00:00:00Z
priority = 10
stop = true

[[rules]]
id = "coupon"
meter = "api"
units = 3
discounted = true
metadata = { source = { exists = true } }

[[rules]]
id = "welcome"
meter = "api"
units = 100
products = ["pack"]
first_order = true
max_units_per_customer = 150

[[rules]]
id = "monthly"
meter = "api"
units = 5
every = "1 month"
"""
RULES = parse_rules(RULES_TEXT)
FIRST = FirstOrderFact(first=True)
NOT_FIRST = FirstOrderFact(
    first=False, earlier_order_id="order-0", earlier_created_at="2026-03-01T00:00:00+00:00"
)


def order(**changes: object) -> OrderFacts:
    base = OrderFacts(
        order_id="order-1",
        customer_id="customer-1",
        billing_reason="purchase",
        status="paid",
        product_id="pack",
        currency="usd",
        net_amount=2900,
        created_at="2026-06-01T12:00:00+00:00",
        metadata={"campaign": "launch"},
    )
    return replace(base, **changes)


ORDERS = {
    "sale": order(),
    "no campaign": order(metadata={}),
    "other campaign": order(metadata={"campaign": "autumn"}),
    "euro": order(currency="eur"),
    "cheap": order(net_amount=500),
    "before window": order(created_at="2025-12-31T23:59:59+00:00"),
    "after window": order(created_at="2027-01-01T00:00:00+00:00"),
    "no created_at": order(created_at=None),
    "other product": order(product_id="shirt"),
    "renewal": order(billing_reason="subscription_cycle", product_id="pro"),
    "trialing renewal": order(
        billing_reason="subscription_cycle", product_id="pro", subscription_status="trialing"
    ),
    "discounted": order(product_id="shirt", discount_amount=100, metadata={"source": "x"}),
    "discount no source": order(product_id="shirt", discount_amount=100, metadata={}),
    "pending": order(status="pending"),
}


@pytest.mark.parametrize("name", ORDERS)
@pytest.mark.parametrize("fact", [FIRST, NOT_FIRST], ids=["first", "not-first"])
def test_each_verdict_agrees_with_rule_matches(name: str, fact: FirstOrderFact) -> None:
    facts = ORDERS[name]
    decision = explain_order(RULES, facts, fact)
    by_id = {rule.id: rule for rule in RULES.rules}
    stopped = False
    for verdict in decision.verdicts:
        rule = by_id[verdict.rule_id]
        expected = (
            not stopped
            and facts.status == "paid"
            and rule.matches(facts)
            and (rule.first_order is None or rule.first_order == fact.first)
        )
        assert verdict.matched == expected, (name, verdict)
        assert verdict.reason and "\n" not in verdict.reason
        if not stopped and facts.status == "paid" and not rule.matches(facts):
            assert verdict.reason == rule.verdict(facts)[1]  # the rule's own reason
        stopped = stopped or (verdict.matched and rule.stop)
    # Where no first_order rule is in play, the grants are exactly decide_grants'.
    if not needs_first_order(RULES, facts):
        assert decision.grants == decide_grants(RULES, facts)


@pytest.mark.parametrize(
    ("name", "rule_id", "reason"),
    [
        ("sale", "sale", "matched: 50 units"),
        ("sale", "bonus", "skipped: an earlier rule with stop matched (sale)"),
        ("no campaign", "bonus", "matched: 10 units"),
        ("other campaign", "sale", "metadata campaign"),
        ("euro", "sale", "currency eur not in [usd]"),
        ("cheap", "sale", "net amount 500 below min_net_amount 1000"),
        ("before window", "sale", "active_from"),
        ("other product", "bonus", "product not in products"),
        ("renewal", "bonus", "billing reason subscription_cycle not in [purchase]"),
        ("renewal", "subscriber", "matched: 250 units"),
        ("trialing renewal", "subscriber", "during_trial = false"),
        ("discounted", "coupon", "matched: 3 units"),
        ("pending", "bonus", "order status pending: only paid orders grant"),
    ],
)
def test_reasons_name_the_failing_condition(name: str, rule_id: str, reason: str) -> None:
    decision = explain_order(RULES, ORDERS[name], FIRST)
    [verdict] = [v for v in decision.verdicts if v.rule_id == rule_id]
    assert reason in verdict.reason


def test_first_order_is_looked_up_only_when_a_rule_needs_it() -> None:
    assert needs_first_order(RULES, order(metadata={}))
    assert not needs_first_order(RULES, order(product_id="shirt"))
    pending = explain_order(RULES, order(metadata={}))
    assert pending.needs == ["first_order"] and pending.grants == []
    first = explain_order(RULES, order(metadata={}), FIRST)
    assert [(g.rule_id, g.units) for g in first.grants] == [("bonus", 10), ("welcome", 100)]
    again = explain_order(RULES, order(metadata={}), NOT_FIRST)
    [welcome] = [v for v in again.verdicts if v.rule_id == "welcome"]
    assert not welcome.matched
    assert "earlier paid order order-0" in welcome.reason
    assert FIRST.describe() == "first paid order for this product: yes (no earlier paid order)"
    assert NOT_FIRST.describe().startswith("first paid order for this product: no: earlier order")


def test_a_cap_cuts_the_grant_and_says_so() -> None:
    decision = explain_order(RULES, order(metadata={}), FIRST)
    [reservation] = cap_reservations(decision)
    assert (reservation.rule_key, reservation.units, reservation.cap) == ("welcome", 100, 150)
    assert reservation.grant_id == "polar-credits:order:order-1:rule:welcome"
    outcome = cap_outcome(reservation, granted_before=120)
    assert (outcome.allowed, outcome.granted_before) == (30, 120)
    capped = apply_caps(decision, [outcome])
    [welcome] = [v for v in capped.verdicts if v.rule_id == "welcome"]
    assert welcome.reason == (
        "capped: 30 of 100 units (120 granted before, max_units_per_customer 150)"
    )
    assert [(g.rule_id, g.units) for g in capped.grants] == [("bonus", 10), ("welcome", 30)]
    assert granted_rule_keys(capped) == ["bonus", "welcome"]
    # Used up: the grant is dropped, the other rule still grants.
    full = apply_caps(
        explain_order(RULES, order(metadata={}), FIRST), [cap_outcome(reservation, 150)]
    )
    assert [g.rule_id for g in full.grants] == ["bonus"]
    assert "capped: 0 of 100 units" in next(
        v.reason for v in full.verdicts if v.rule_id == "welcome"
    )


def test_rules_version_is_the_hash_of_the_files_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(RULES_TEXT.replace("\n", "\r\n").encode())
    loaded = load_rules(path)
    assert loaded.version == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert explain_order(loaded, order(), FIRST).rules_version == loaded.version
    assert RULES.version != loaded.version  # other bytes, another version


def test_first_order_and_caps_are_for_order_rules_only() -> None:
    from polar_credits.rules import RulesError

    for line in ("first_order = true", "max_units_per_customer = 10"):
        with pytest.raises(RulesError, match="applies to orders"):
            parse_rules(
                '[meters.api]\nid = "m"\nevent_name = "e"\n[[rules]]\nid = "r"\nmeter = "api"\n'
                f'units = 1\nevery = "1 month"\n{line}\n'
            )
