"""Rules v2 conditions and precedence, table by table: what an order gets, and what a rules
file that cannot work is told. Existing rules files keep their meaning (tests/test_rules.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from polar_credits.models.facts import OrderFacts
from polar_credits.rules import RulesError, decide_grants, parse_rules

METER = '[meters.api_calls]\nid = "meter-1"\nevent_name = "api_usage"\n'


def rules(*bodies: str) -> str:
    return METER + "".join(f'\n[[rules]]\nmeter = "api_calls"\n{body}\n' for body in bodies)


ORDER = OrderFacts(
    order_id="order-1",
    customer_id="customer-1",
    billing_reason="purchase",
    status="paid",
    product_id="product-1",
    currency="usd",
    subtotal_amount=2000,
    discount_amount=0,
    net_amount=2000,
    total_amount=2400,
    created_at="2026-12-10T12:00:00+00:00",
    metadata={"campaign": "launch", "tier": 2},
)


def granted(text: str, **order: object) -> list[str]:
    return [g.rule_id for g in decide_grants(parse_rules(text), replace(ORDER, **order))]


@pytest.mark.parametrize(
    ("condition", "order", "grants"),
    [
        # metadata: a value (equality), one of several, present or absent
        ('metadata = { campaign = { in = ["launch", "spring"] } }', {}, True),
        ('metadata = { campaign = { in = ["spring", "autumn"] } }', {}, False),
        ("metadata = { tier = { in = [1, 2] } }", {}, True),
        ('metadata = { tier = { in = ["2"] } }', {}, False),  # type-strict: 2 is not "2"
        ("metadata = { campaign = { exists = true } }", {}, True),
        ("metadata = { campaign = { exists = true } }", {"metadata": {}}, False),
        ("metadata = { referrer = { exists = false } }", {}, True),
        ("metadata = { campaign = { exists = false } }", {}, False),
        # currency, compared without regard to case
        ('currencies = ["usd", "eur"]', {}, True),
        ('currencies = ["EUR"]', {"currency": "eur"}, True),
        ('currencies = ["eur"]', {}, False),
        # the net amount paid, in cents of the order's currency
        ("min_net_amount = 2000", {}, True),
        ("min_net_amount = 2001", {}, False),
        ("min_net_amount = 0", {"net_amount": 0}, True),
        # a discount present or not
        ("discounted = true", {"discount_amount": 500}, True),
        ("discounted = true", {}, False),
        ("discounted = false", {}, True),
        ("discounted = false", {"discount_amount": 1}, False),
        # the validity window, judged on the order's own created_at, end excluded
        ("active_from = 2026-12-01T00:00:00Z", {}, True),
        ("active_from = 2026-12-11T00:00:00Z", {}, False),
        ("active_until = 2026-12-10T12:00:00Z", {}, False),
        ("active_until = 2026-12-10T12:00:01Z", {}, True),
        (
            "active_from = 2026-12-01T00:00:00+01:00\nactive_until = 2027-01-01T00:00:00Z",
            {},
            True,
        ),
        ("active_from = 2026-12-01T00:00:00Z", {"created_at": None}, False),
        # an order stamped without a zone is read as UTC
        ("active_until = 2026-12-10T12:00:01Z", {"created_at": "2026-12-10T12:00:00"}, True),
    ],
)
def test_each_condition_decides_whether_the_rule_grants(
    condition: str, order: dict, grants: bool
) -> None:
    text = rules(f'id = "r"\nunits = 5\n{condition}')
    assert granted(text, **order) == (["r"] if grants else [])


def test_rules_are_evaluated_by_priority_and_stop_ends_the_evaluation() -> None:
    text = rules(
        'id = "default"\nunits = 10',
        'id = "promotion"\nunits = 50\npriority = 10\nstop = true\n'
        'metadata = { campaign = "launch" }',
        'id = "loyalty"\nunits = 5\npriority = 5',
    )
    # The promotion replaces the default (and everything below it) when it matches ...
    assert granted(text) == ["promotion"]
    # ... and otherwise the rest apply, highest priority first, then in file order.
    assert granted(text, metadata={}) == ["loyalty", "default"]


def test_a_stop_rule_that_does_not_match_stops_nothing() -> None:
    text = rules('id = "vip"\nunits = 99\nstop = true\ncurrencies = ["eur"]', 'id = "b"\nunits = 1')
    assert granted(text) == ["b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'id = "r"\nunits = 1\nmetadata = { campaign = { in = [] } }',
            "rule 'r': metadata: campaign: in needs at least one value",
        ),
        (
            'id = "r"\nunits = 1\nmetadata = { campaign = { in = ["a"], exists = true } }',
            "rule 'r': metadata: campaign: a metadata condition is a value, { in = [...] } or "
            "{ exists = ... }",
        ),
        (
            'id = "r"\nunits = 1\nmetadata = { campaign = { like = "a%" } }',
            "rule 'r': metadata: campaign: unknown condition 'like' (use in or exists)",
        ),
        (
            'id = "r"\nunits = 1\nmetadata = { campaign = { in = [1.5] } }',
            "rule 'r': metadata: campaign: in takes strings, whole numbers or booleans",
        ),
        (
            'id = "r"\nunits = 1\nmetadata = { campaign = 1.5 }',
            "rule 'r': metadata: campaign: give a string, a whole number, a boolean",
        ),
        ('id = "r"\nunits = 1\ncurrencies = ["dollars"]', "rule 'r': currencies.0"),
        ('id = "r"\nunits = 1\nmin_net_amount = -1', "rule 'r': min_net_amount"),
        (
            'id = "r"\nunits = 1\nactive_from = 2026-12-01T00:00:00',
            "active_from needs a time zone, e.g. 2026-12-01T00:00:00Z",
        ),
        (
            'id = "r"\nunits = 1\nactive_from = 2027-01-01T00:00:00Z\n'
            "active_until = 2026-01-01T00:00:00Z",
            "active_from must be before active_until",
        ),
        (
            'id = "r"\nunits = 1\nevery = "1 month"\nmin_net_amount = 100',
            "min_net_amount applies to orders: a rule with every cannot use it",
        ),
        ('id = "r"\nunits = 1\npriority = "high"', "rule 'r': priority"),
        ('id = "r"\nunits = 1\nstop = "yes"', "rule 'r': stop"),
    ],
)
def test_a_condition_that_cannot_work_is_refused_with_the_rule_named(
    body: str, message: str
) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(rules(body), "rules.toml")
    assert message in str(err.value)


def test_the_keys_of_metadata_conditions_are_the_only_metadata_copied() -> None:
    text = rules(
        'id = "a"\nunits = 1\nmetadata = { campaign = { in = ["x"] }, ref = { exists = true } }',
        'id = "b"\nunits = 1\nmetadata = { tier = 2 }',
    )
    assert parse_rules(text).metadata_keys().order == {"campaign", "ref", "tier"}
