"""Rules v2, second part, table by table: product and customer metadata conditions, units per
currency unit, and stable rule keys (what an order gets, what is copied into a history, and
what a rules file that cannot work is told). tests/test_rules_v2.py has the first part."""

from __future__ import annotations

from dataclasses import replace

import pytest

from polar_credits.identity import allowance_external_id
from polar_credits.models.allowances import SubscriptionFacts
from polar_credits.models.facts import OrderFacts
from polar_credits.orders import PaidOrder, PolarSubscription, order_facts, subscription_facts
from polar_credits.rules import (
    MetadataKeys,
    RulesError,
    decide_allowance_rules,
    decide_grants,
    explain_order,
    parse_rules,
)

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
    net_amount=2000,
    product_metadata={"family": "api", "tier": 2},
    customer_metadata={"segment": "edu"},
)


def granted(text: str, **order: object) -> list[tuple[str, int]]:
    return [(g.rule_id, g.units) for g in decide_grants(parse_rules(text), replace(ORDER, **order))]


# -- product and customer metadata ---------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "order", "grants"),
    [
        ('product_metadata = { family = "api" }', {}, True),
        ('product_metadata = { family = "storage" }', {}, False),
        ('product_metadata = { family = { in = ["api", "bundle"] } }', {}, True),
        ("product_metadata = { tier = { in = [1, 3] } }", {}, False),
        ('product_metadata = { tier = "2" }', {}, False),  # type-strict, as for metadata
        ("product_metadata = { pwyw = { exists = true } }", {}, False),
        ("product_metadata = { pwyw = { exists = false } }", {}, True),
        ('customer_metadata = { segment = "edu" }', {}, True),
        ('customer_metadata = { segment = { in = ["edu", "nonprofit"] } }', {}, True),
        ('customer_metadata = { segment = "edu" }', {"customer_metadata": {}}, False),
        ("customer_metadata = { partner = { exists = true } }", {}, False),
        (
            "customer_metadata = { partner = { exists = true } }",
            {"customer_metadata": {"partner": "acme"}},
            True,
        ),
        # All conditions must hold, across the three sources.
        (
            'product_metadata = { family = "api" }\ncustomer_metadata = { segment = "edu" }',
            {},
            True,
        ),
        (
            'product_metadata = { family = "api" }\ncustomer_metadata = { segment = "biz" }',
            {},
            False,
        ),
        # Order metadata is not product metadata.
        ('product_metadata = { family = "api" }', {"product_metadata": {}}, False),
    ],
)
def test_product_and_customer_metadata_conditions(
    condition: str, order: dict, grants: bool
) -> None:
    text = rules(f'id = "r"\nunits = 5\n{condition}')
    assert granted(text, **order) == ([("r", 5)] if grants else [])


@pytest.mark.parametrize(
    ("condition", "facts", "applies"),
    [
        ('product_metadata = { family = "api" }', {}, True),
        ('product_metadata = { family = "api" }', {"product_metadata": {}}, False),
        ('customer_metadata = { segment = { in = ["edu"] } }', {}, True),
        ("customer_metadata = { segment = { exists = false } }", {}, False),
    ],
)
def test_cadence_rules_use_product_and_customer_metadata_too(
    condition: str, facts: dict, applies: bool
) -> None:
    text = rules(f'id = "monthly"\nunits = 100\nevery = "1 month"\n{condition}')
    subscription = SubscriptionFacts(
        subscription_id="sub-1",
        customer_id="customer-1",
        product_id="product-1",
        status="active",
        product_metadata={"family": "api"},
        customer_metadata={"segment": "edu"},
    )
    decided = decide_allowance_rules(parse_rules(text), replace(subscription, **facts))
    assert [r.rule_id for r in decided] == (["monthly"] if applies else [])


def test_only_the_metadata_keys_the_rules_name_are_copied_from_product_and_customer() -> None:
    keys = parse_rules(
        rules(
            'id = "a"\nunits = 1\nproduct_metadata = { family = "api" }',
            'id = "b"\nunits = 1\ncustomer_metadata = { segment = { exists = true } }',
            'id = "c"\nunits = 1\nmetadata = { campaign = "x" }',
        )
    ).metadata_keys()
    assert keys == MetadataKeys(
        order=frozenset({"campaign"}),
        product=frozenset({"family"}),
        customer=frozenset({"segment"}),
    )
    order = PaidOrder.model_validate(
        {
            "id": "order-1",
            "customer_id": "customer-1",
            "product_id": "product-1",
            "status": "paid",
            "billing_reason": "purchase",
            "metadata": {"campaign": "x", "family": "order-level"},
            "product": {"id": "product-1", "name": "Pack", "metadata": {"family": "api", "x": 1}},
            "customer": {
                "id": "customer-1",
                "email": "ada@example.com",
                "name": "Ada Lovelace",
                "metadata": {"segment": "edu", "phone": "+44 20 7946 0000"},
            },
        }
    )
    facts = order_facts(order, keys)
    assert (facts.metadata, facts.product_metadata, facts.customer_metadata) == (
        {"campaign": "x"},
        {"family": "api"},
        {"segment": "edu"},
    )
    assert "lovelace" not in repr(facts).lower() and "+44" not in repr(facts)
    # A frozenset of keys (the first releases' allow-list) still means order metadata only.
    assert order_facts(order, frozenset({"campaign"})).customer_metadata == {}
    # The order's own subscription snapshot has no product or customer: the order's stand in.
    sub = subscription_facts(
        PolarSubscription.model_validate(
            {"id": "sub-1", "status": "active", "customer_id": "customer-1"}
        ),
        keys,
        order,
    )
    assert (sub.product_metadata, sub.customer_metadata) == ({"family": "api"}, {"segment": "edu"})


def test_a_subscription_webhook_brings_its_product_and_customer_metadata() -> None:
    keys = MetadataKeys(product=frozenset({"family"}), customer=frozenset({"segment"}))
    subscription = PolarSubscription.model_validate(
        {
            "id": "sub-1",
            "status": "active",
            "customer_id": "customer-1",
            "product_id": "product-1",
            "product": {"metadata": {"family": "api"}},
            "customer": {"email": "ada@example.com", "metadata": {"segment": "edu", "ssn": "x"}},
        }
    )
    facts = subscription_facts(subscription, keys)
    assert (facts.product_metadata, facts.customer_metadata) == (
        {"family": "api"},
        {"segment": "edu"},
    )


def test_an_overlong_named_customer_metadata_value_is_refused_like_order_metadata() -> None:
    keys = MetadataKeys(customer=frozenset({"segment"}))
    order = PaidOrder.model_validate(
        {
            "id": "order-1",
            "customer_id": "customer-1",
            "status": "paid",
            "billing_reason": "purchase",
            "customer": {"metadata": {"segment": "x" * 501, "other": "y" * 900}},
        }
    )
    assert order.refusal(keys) == "customer metadata 'segment' is longer than 500 characters"
    assert order.refusal(MetadataKeys()) is None  # a key no rule names is never looked at


# -- units per currency unit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "order", "units"),
    [
        # $20.00 at 10 units a dollar
        ("units_per_currency_unit = 10\nrounding = 'down'", {}, 200),
        # $12.34 at 1 unit a dollar, each rounding mode
        ("units_per_currency_unit = 1\nrounding = 'down'", {"net_amount": 1234}, 12),
        ("units_per_currency_unit = 1\nrounding = 'up'", {"net_amount": 1234}, 13),
        ("units_per_currency_unit = 1\nrounding = 'nearest'", {"net_amount": 1234}, 12),
        ("units_per_currency_unit = 1\nrounding = 'nearest'", {"net_amount": 1250}, 13),  # half up
        ("units_per_currency_unit = 1\nrounding = 'up'", {"net_amount": 1200}, 12),  # exact
        # decimal rates, without float error: 0.1 × $30.00 is 3, not 2.9999…
        ("units_per_currency_unit = 0.1\nrounding = 'down'", {"net_amount": 3000}, 3),
        ("units_per_currency_unit = '2.5'\nrounding = 'down'", {"net_amount": 999}, 24),
        # zero-decimal currencies: 1500 yen is 1500 currency units
        ("units_per_currency_unit = 0.1\nrounding = 'down'",
         {"currency": "jpy", "net_amount": 1500}, 150),
        ("units_per_currency_unit = 1\nrounding = 'down'", {"currency": "KRW", "net_amount": 1500},
         1500),
        ("units_per_currency_unit = 1\nrounding = 'down'", {"currency": "eur", "net_amount": 1500},
         15),
        # min_units / max_units
        ("units_per_currency_unit = 1\nrounding = 'down'\nmax_units = 15", {}, 15),
        ("units_per_currency_unit = 1\nrounding = 'down'\nmin_units = 25", {}, 25),
        ("units_per_currency_unit = 1\nrounding = 'down'\nmin_units = 5", {"net_amount": 0}, 5),
        # 0 units (a $0 order, or less than one unit rounded down) grants nothing
        ("units_per_currency_unit = 10\nrounding = 'up'", {"net_amount": 0}, 0),
        ("units_per_currency_unit = 1\nrounding = 'down'", {"net_amount": 99}, 0),
        ("units_per_currency_unit = 1\nrounding = 'up'", {"net_amount": 1}, 1),
    ],
)  # fmt: skip
def test_units_per_currency_unit(amount: str, order: dict, units: int) -> None:
    text = rules(f'id = "pwyw"\n{amount}')
    assert granted(text, **order) == ([("pwyw", units)] if units else [])


def test_a_rule_that_comes_to_zero_units_still_stops_the_evaluation() -> None:
    text = rules(
        'id = "pwyw"\nunits_per_currency_unit = 1\nrounding = "down"\npriority = 1\nstop = true',
        'id = "default"\nunits = 3',
    )
    assert granted(text) == [("pwyw", 20)]
    assert granted(text, net_amount=0) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'id = "r"\nunits_per_currency_unit = 10',
            'rule \'r\': units_per_currency_unit needs rounding = "down", "up" or "nearest"',
        ),
        ('id = "r"\nunits_per_currency_unit = 10\nrounding = "banker"', "rule 'r': rounding"),
        ('id = "r"\nunits = 10\nrounding = "down"', "rounding only goes with units_per_currency"),
        ('id = "r"\nunits = 10\nmax_units = 5', "max_units only goes with units_per_currency_unit"),
        (
            'id = "r"\nunits = 1\nunits_per_currency_unit = 10\nrounding = "down"',
            "give exactly one of units, units_per_seat, units_per_currency_unit or top_up_to "
            "(found units, units_per_currency_unit)",
        ),
        (
            'id = "r"\nunits_per_currency_unit = 1\nrounding = "down"\nmin_units = 9\n'
            "max_units = 3",
            "rule 'r': min_units must not exceed max_units",
        ),
        ('id = "r"\nunits_per_currency_unit = 0\nrounding = "down"', "units_per_currency_unit"),
        ('id = "r"\nunits_per_currency_unit = -1\nrounding = "up"', "units_per_currency_unit"),
        ('id = "r"\nunits_per_currency_unit = true\nrounding = "up"', "give a number"),
        ('id = "r"\nunits_per_currency_unit = inf\nrounding = "up"', "finite number"),
        ('id = "r"\nunits_per_currency_unit = "NaN"\nrounding = "up"', "finite number"),
        ('id = "r"\nunits_per_currency_unit = 1e9\nrounding = "up"', "less than or equal"),
        ('id = "r"\nunits_per_currency_unit = "lots"\nrounding = "up"', "give a number"),
        (
            'id = "r"\nunits_per_currency_unit = 1\nrounding = "down"\nevery = "1 month"',
            "units_per_currency_unit applies to orders: a rule with every cannot use it",
        ),
        (
            'id = "r"\nunits_per_currency_unit = 1\nrounding = "down"\nmin_units = 0',
            "rule 'r': min_units",
        ),
        # One per-grant maximum (10^9) for every grant: no rule may ask for more.
        *[
            (body, f"rule 'r': {field}: at most 1000000000, the per-grant maximum")
            for field, body in (
                ("units", 'id = "r"\nunits = 1000000001'),
                ("units_per_seat", 'id = "r"\nunits_per_seat = 1000000001'),
                ("top_up_to", 'id = "r"\ntop_up_to = 1000000001\nevery = "1 month"'),
                (
                    "min_units",
                    'id = "r"\nunits_per_currency_unit = 1\nrounding = "up"\n'
                    "min_units = 1000000001",
                ),
                (
                    "max_units",
                    'id = "r"\nunits_per_currency_unit = 1\nrounding = "up"\n'
                    "max_units = 1000000001",
                ),
            )
        ],
    ],
)
def test_an_amount_that_cannot_work_is_refused(body: str, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(rules(body), "rules.toml")
    assert message in str(err.value)


# -- stable rule keys ----------------------------------------------------------------------


def test_a_rule_without_key_keeps_the_external_ids_it_always_had() -> None:
    [grant] = decide_grants(parse_rules(rules('id = "signup-bonus"\nunits = 10')), ORDER)
    assert grant.external_id == "polar-credits:order:order-1:rule:signup-bonus"
    assert grant.rule_key == "signup-bonus"
    [rule] = decide_allowance_rules(
        parse_rules(rules('id = "monthly"\nunits = 10\nevery = "1 month"')),
        SubscriptionFacts("sub-1", "customer-1", "product-1", "active"),
    )
    assert rule.rule_key == "monthly"
    assert allowance_external_id("sub-1", rule.rule_key, "2027-01-01T00:00:00Z") == (
        "polar-credits:subscription:sub-1:allowance:monthly:period:2027-01-01T00:00:00Z"
    )


def test_renaming_a_rule_that_keeps_its_key_keeps_its_idempotency_keys() -> None:
    before = decide_grants(parse_rules(rules('id = "signup-bonus"\nunits = 10')), ORDER)
    after = decide_grants(
        parse_rules(rules('id = "welcome-credits"\nkey = "signup-bonus"\nunits = 10')), ORDER
    )
    assert [g.external_id for g in after] == [g.external_id for g in before]
    assert (after[0].rule_id, after[0].rule_key) == ("welcome-credits", "signup-bonus")
    cadence = 'every = "1 month"\nunits = 10'
    facts = SubscriptionFacts("sub-1", "customer-1", "product-1", "active")
    [old] = decide_allowance_rules(parse_rules(rules(f'id = "monthly"\n{cadence}')), facts)
    [new] = decide_allowance_rules(
        parse_rules(rules(f'id = "monthly-credits"\nkey = "monthly"\n{cadence}')), facts
    )
    assert new.rule_key == old.rule_key == "monthly"


@pytest.mark.parametrize(
    ("bodies", "message"),
    [
        (
            ('id = "a"\nkey = "k"\nunits = 1', 'id = "b"\nkey = "k"\nunits = 1'),
            "rule 'b': key 'k' is already the key of rule 'a'",
        ),
        # a rule without key is keyed by its id
        (
            ('id = "a"\nunits = 1', 'id = "b"\nkey = "a"\nunits = 1'),
            "rule 'b': key 'a' is already the key of rule 'a'",
        ),
        (('id = "a"\nkey = ""\nunits = 1',), "rule 'a': key"),
    ],
)
def test_rule_keys_are_unique_across_the_file(bodies: tuple[str, ...], message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(rules(*bodies), "rules.toml")
    assert message in str(err.value)


def test_a_key_may_be_another_rules_old_id_once_that_rule_is_renamed_with_its_key() -> None:
    # Swapping names is fine as long as keys stay unique.
    text = rules('id = "b"\nkey = "a"\nunits = 1', 'id = "a"\nkey = "b"\nunits = 2')
    assert {g.rule_key: g.units for g in decide_grants(parse_rules(text), ORDER)} == {
        "a": 1,
        "b": 2,
    }


# -- the verdict's reason ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("", "matched"),
        ('product_metadata = { family = "storage" }', "product_metadata family is 'api', not"),
        ("customer_metadata = { partner = { exists = true } }", "customer_metadata partner is"),
        ('products = ["product-2"]', "product not in products"),
    ],
)
def test_the_verdict_names_the_first_condition_that_fails(condition: str, reason: str) -> None:
    [rule] = parse_rules(rules(f'id = "r"\nunits = 1\n{condition}')).rules
    matched, why = rule.verdict(ORDER)
    assert matched == (reason == "matched") == rule.matches(ORDER)
    assert why.startswith(reason)


def test_metadata_values_keep_their_type_through_temporals_converter() -> None:
    """A `true` must still be true (not 1), and 1.5 not 1, once in a workflow's input."""
    from temporalio.converter import DataConverter

    converter = DataConverter.default.payload_converter
    values = {"flag": True, "count": 1, "ratio": 1.5, "name": "x"}
    facts = replace(ORDER, metadata=values, product_metadata=values, customer_metadata=values)
    [back] = converter.from_payloads(converter.to_payloads([facts]), [OrderFacts])
    for field in ("metadata", "product_metadata", "customer_metadata"):
        assert {k: (v, type(v)) for k, v in getattr(back, field).items()} == {
            k: (v, type(v)) for k, v in values.items()
        }
    text = rules('id = "r"\nunits = 1\nproduct_metadata = { flag = true }')
    assert decide_grants(parse_rules(text), back)


# -- the per-grant maximum -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "order", "units", "held"),
    [
        ('id = "r"\nunits_per_seat = 1000', {"seats": 1_000_000}, 10**9, False),
        ('id = "r"\nunits_per_seat = 1000', {"seats": 1_000_001}, 10**9 + 1000, True),
        ('id = "r"\nunits_per_seat = 2000', {"seats": 2**53}, 2000 * 2**53, True),
        (  # $1,000 at a million units a dollar: exactly the maximum
            'id = "r"\nunits_per_currency_unit = 1000000\nrounding = "down"',
            {"net_amount": 100_000},
            10**9,
            False,
        ),
        (
            'id = "r"\nunits_per_currency_unit = 1000000\nrounding = "down"',
            {"net_amount": 100_001},
            10**9 + 10_000,
            True,
        ),
    ],
)
def test_a_computed_amount_above_the_per_grant_maximum_is_held_not_granted(
    body: str, order: dict, units: int, held: bool
) -> None:
    text = rules(body)
    facts = replace(ORDER, **order)
    decision = explain_order(parse_rules(text), facts)
    preview = explain_order(parse_rules(text), facts, preview=True)
    if not held:
        assert [g.units for g in decision.grants] == [units] and decision.held == []
        return
    assert decision.grants == [] and preview.grants == []
    [record] = decision.held
    assert (record.rule_id, record.units) == ("r", units)
    assert record.reason == (
        f"{units} units is above the per-grant maximum of 1000000000 units: held, nothing "
        "sent to Polar"
    )
    assert decision.verdicts[0].reason == f"held: {record.reason}"
    assert preview.verdicts[0].reason == f"would be held: {record.reason}"
