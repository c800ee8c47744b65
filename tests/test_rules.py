"""The rules file: the documented example works, mistakes are named, decisions are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_credits.identity import allowance_external_id
from polar_credits.models.allowances import SubscriptionFacts
from polar_credits.models.facts import OrderFacts
from polar_credits.orders import PaidOrder, order_facts
from polar_credits.rules import (
    RulesError,
    decide_allowance_rules,
    decide_grants,
    load_rules,
    parse_rules,
)

ROOT = Path(__file__).resolve().parents[1]

README_EXAMPLE = """
[meters.api_calls]
id = "<Polar meter id>"        # used to verify the balance
event_name = "api_usage"       # name of the events ingested for this meter
property = "units"             # the metadata key the meter sums

[[rules]]
id = "signup-bonus"
meter = "api_calls"
units = 10
products = ["<Polar product id>"]                 # omit = any product
billing_reasons = ["purchase", "subscription_create"]  # omit = purchase only
"""

METER = '[meters.api_calls]\nid = "m1"\nevent_name = "api_usage"\n'


def order(**overrides) -> OrderFacts:
    fields = dict(
        order_id="ord_1",
        customer_id="cus_1",
        billing_reason="purchase",
        status="paid",
        product_id="<Polar product id>",
    )
    fields.update(overrides)
    return OrderFacts(**fields)


def test_the_documented_example_grants_ten_units_on_purchase() -> None:
    rules = parse_rules(README_EXAMPLE)
    [grant] = decide_grants(rules, order())
    assert (grant.rule_id, grant.meter_id, grant.units) == ("signup-bonus", "<Polar meter id>", 10)
    assert grant.event_name == "api_usage" and grant.property == "units"
    assert grant.external_id == "polar-credits:order:ord_1:rule:signup-bonus"


def test_the_readme_shows_the_same_example() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'id = "signup-bonus"' in readme and "[meters.api_calls]" in readme


def test_external_id_depends_only_on_order_and_rule() -> None:
    rules = parse_rules(README_EXAMPLE)
    first = decide_grants(rules, order(total_amount=100))
    again = decide_grants(rules, order(total_amount=999, metadata={"x": 1}))
    assert [g.external_id for g in first] == [g.external_id for g in again]


@pytest.mark.parametrize(
    ("changes", "granted"),
    [
        ({}, True),
        ({"billing_reason": "subscription_create"}, True),
        ({"billing_reason": "subscription_cycle"}, False),
        ({"product_id": "other"}, False),
        ({"status": "pending"}, False),
    ],
)
def test_rule_matching(changes: dict, granted: bool) -> None:
    assert bool(decide_grants(parse_rules(README_EXAMPLE), order(**changes))) is granted


def test_omitted_products_match_any_and_omitted_reasons_mean_purchase_only() -> None:
    rules = parse_rules(METER + '[[rules]]\nid = "any"\nmeter = "api_calls"\nunits = 3\n')
    assert decide_grants(rules, order(product_id="whatever"))[0].units == 3
    assert decide_grants(rules, order(billing_reason="subscription_create")) == []


def test_several_matching_rules_are_several_grants() -> None:
    rules = parse_rules(
        METER
        + '[[rules]]\nid = "a"\nmeter = "api_calls"\nunits = 3\n'
        + '[[rules]]\nid = "b"\nmeter = "api_calls"\nunits = 4\n'
    )
    grants = decide_grants(rules, order())
    assert [(g.rule_id, g.units) for g in grants] == [("a", 3), ("b", 4)]
    assert len({g.external_id for g in grants}) == 2


def test_final_invoice_of_a_canceled_subscription_grants_no_new_cycle() -> None:
    rules = parse_rules(
        METER
        + '[[rules]]\nid = "cycle"\nmeter = "api_calls"\nunits = 5\n'
        + 'billing_reasons = ["subscription_cycle"]\n'
    )
    assert decide_grants(rules, order(billing_reason="subscription_cycle"))
    canceled = order(billing_reason="subscription_cycle", subscription_status="canceled")
    assert decide_grants(rules, canceled) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "credits"\nunits = 5\n',
            "rules.toml: rule 'r1': unknown meter 'credits' (meters defined: api_calls)",
        ),
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = 0\n',
            "rules.toml: rule 'r1': units: Input should be greater than 0",
        ),
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = -5\n',
            "rules.toml: rule 'r1': units: Input should be greater than 0",
        ),
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = "10"\n',
            "rules.toml: rule 'r1': units: Input should be a valid integer",
        ),
        (
            METER
            + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = 1\n'
            + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = 2\n',
            "rules.toml: rule 'r1': duplicate rule id",
        ),
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = 1\nproduct = ["p"]\n',
            "rules.toml: rule 'r1': product: unknown key (check the spelling)",
        ),
        (
            METER + '[[rules]]\nid = "r1"\nmeter = "api_calls"\nunits = 1\n'
            'billing_reasons = ["renewal"]\n',
            "rules.toml: rule 'r1': billing_reasons.0: Input should be 'purchase'",
        ),
        (
            '[meters.api_calls]\nevent_name = "api_usage"\n[[rules]]\nid = "r"\n'
            'meter = "api_calls"\nunits = 1\n',
            "rules.toml: meter 'api_calls': id: Field required",
        ),
        ("[[rules]\n", "rules.toml: not valid TOML"),
    ],
)
def test_rules_file_errors_name_file_rule_and_problem(text: str, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(text, "rules.toml")
    assert str(err.value).startswith(message), str(err.value)


def test_missing_rules_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "nope.toml")


def _run(module_args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
    return subprocess.run(
        [sys.executable, *module_args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_refuses_to_start_on_a_bad_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(METER + '[[rules]]\nid = "bonus"\nmeter = "credits"\nunits = 5\n')
    done = _run(
        ["worker.py"],
        {"POLAR_ACCESS_TOKEN": "polar_oat_x", "CREDITS_RULES_FILE": str(rules)},
    )
    assert done.returncode == 2
    assert f"{rules}: rule 'bonus': unknown meter 'credits'" in done.stderr


def test_worker_names_a_missing_setting() -> None:
    done = _run(["worker.py"], {"CREDITS_RULES_FILE": "x.toml"})
    assert done.returncode == 2
    assert "POLAR_ACCESS_TOKEN is not set" in done.stderr


def test_api_names_a_missing_webhook_secret_and_never_prints_the_token() -> None:
    done = _run(["-m", "api"], {"POLAR_ACCESS_TOKEN": "polar_oat_secret_value"})
    assert done.returncode == 2
    assert "POLAR_WEBHOOK_SECRET is not set" in done.stderr
    assert "polar_oat_secret_value" not in done.stderr + done.stdout


def test_invalid_setting_is_named() -> None:
    done = _run(["-m", "api"], {"POLAR_WEBHOOK_SECRET": "whsec_x", "POLAR_SERVER": "staging"})
    assert done.returncode == 2
    assert "POLAR_SERVER" in done.stderr


CYCLE_RULES = (
    METER
    + """
[[rules]]
id = "allowance"
meter = "api_calls"
units = 250
billing_reasons = ["subscription_create", "subscription_cycle", "subscription_meter_cycle"]
"""
)


def cycle_order(order_id: str, **snapshot: object) -> OrderFacts:
    """A subscription order as the API reads it from Polar's payload."""
    return order_facts(
        PaidOrder.model_validate(
            {
                "id": order_id,
                "customer_id": "cus_1",
                "status": "paid",
                "billing_reason": snapshot.pop("billing_reason", "subscription_cycle"),
                "subscription_id": "sub_1",
                "subscription": snapshot or None,
            }
        )
    )


def test_a_cycle_grant_is_keyed_on_the_subscription_period_not_the_order() -> None:
    rules = parse_rules(CYCLE_RULES)
    [first] = decide_grants(
        rules, cycle_order("ord_1", current_period_start="2026-02-01T00:00:00Z")
    )
    # The same instant spelled another way, by another order: the same key.
    [rebill] = decide_grants(
        rules, cycle_order("ord_2", current_period_start="2026-02-01T01:00:00+01:00")
    )
    [next_period] = decide_grants(
        rules, cycle_order("ord_3", current_period_start="2026-03-01T00:00:00.000000Z")
    )
    assert first.external_id == (
        "polar-credits:subscription:sub_1:period:2026-02-01T00:00:00Z:rule:allowance"
    )
    assert rebill.external_id == first.external_id
    assert next_period.external_id != first.external_id


def test_a_meter_cycle_grant_is_keyed_on_the_meter_period() -> None:
    rules = parse_rules(CYCLE_RULES)
    [grant] = decide_grants(
        rules,
        cycle_order(
            "ord_1",
            billing_reason="subscription_meter_cycle",
            current_period_start="2026-01-01T00:00:00Z",
            current_meter_period_start="2026-02-01T00:00:00Z",
        ),
    )
    assert ":meter-period:2026-02-01T00:00:00Z:" in grant.external_id


def test_without_the_period_in_the_snapshot_a_grant_is_keyed_on_the_order() -> None:
    rules = parse_rules(CYCLE_RULES)
    [grant] = decide_grants(rules, cycle_order("ord_9"))
    assert grant.external_id == "polar-credits:order:ord_9:rule:allowance"


def test_a_rule_may_refuse_trials() -> None:
    rules = parse_rules(CYCLE_RULES.replace("units = 250", "units = 250\nduring_trial = false"))
    trial = cycle_order(
        "ord_1",
        billing_reason="subscription_create",
        status="trialing",
        current_period_start="2026-01-01T00:00:00Z",
    )
    assert decide_grants(rules, trial) == []
    paid = cycle_order("ord_2", status="active", current_period_start="2026-01-15T00:00:00Z")
    assert len(decide_grants(rules, paid)) == 1
    # By default a rule grants during a trial too, as before.
    assert len(decide_grants(parse_rules(CYCLE_RULES), trial)) == 1


# -- cadence rules: every, units_per_seat, top_up_to, rollover_cap ---------------------------


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # str, int, bool and lists of them are spelled alike in TOML


def rules_text(*rules: dict) -> str:
    """A rules file with the `api_calls` meter and these rules (id "r" unless given)."""
    text = METER
    for rule in rules:
        text += "[[rules]]\n" + "".join(
            f"{k} = {_toml(v)}\n" for k, v in {"id": "r", "meter": "api_calls", **rule}.items()
        )
    return text


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"units": 5, "units_per_seat": 2},
            "rule 'r': give exactly one of units, units_per_seat, units_per_currency_unit or "
            "top_up_to (found units, units_per_seat)",
        ),
        (
            {"units": 5, "top_up_to": 100, "every": "1 month"},
            "rule 'r': give exactly one of units, units_per_seat, units_per_currency_unit or "
            "top_up_to (found units, top_up_to)",
        ),
        (
            {"every": "1 month"},
            "rule 'r': give exactly one of units, units_per_seat, units_per_currency_unit or "
            "top_up_to",
        ),
        ({"top_up_to": 100}, "rule 'r': top_up_to needs a cadence: add every = \"1 month\""),
        (
            {"units": 5, "rollover_cap": 50},
            "rule 'r': rollover_cap needs a cadence: add every = \"1 month\"",
        ),
        ({"units": 5, "rollover_cap": 0}, "rule 'r': rollover_cap needs a cadence"),
        (
            {"units": 5, "every": "1 month", "billing_reasons": ["subscription_cycle"]},
            "rule 'r': a rule with every grants on its own timer, not on orders:"
            " remove billing_reasons",
        ),
        (
            {"units": 5, "every": "1 month", "billing_reasons": ["purchase"]},
            "rule 'r': a rule with every grants on its own timer",
        ),
        (
            {"top_up_to": 100, "rollover_cap": 50, "every": "1 month"},
            "rule 'r': top_up_to already caps the balance: remove rollover_cap",
        ),
        (
            {"units": 5, "every": "1 fortnight"},
            "rule 'r': '1 fortnight' is not a cadence: write a count and a unit",
        ),
        ({"units": 5, "every": "0 months"}, "rule 'r': '0 months' is not a cadence"),
        ({"units": 5, "every": ""}, "rule 'r': '' is not a cadence"),
        ({"units": 5, "every": 1}, "rule 'r': every: Input should be a valid string"),
        ({"units_per_seat": 0}, "rule 'r': units_per_seat: Input should be greater than 0"),
        (
            {"top_up_to": 0, "every": "1 month"},
            "rule 'r': top_up_to: Input should be greater than 0",
        ),
        (
            {"units": 5, "every": "1 month", "rollover_cap": -1},
            "rule 'r': rollover_cap: Input should be greater than or equal to 0",
        ),
    ],
)
def test_cadence_rule_mistakes_are_named(rule: dict, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(rules_text(rule), "rules.toml")
    assert str(err.value).startswith(f"rules.toml: {message}"), str(err.value)


def test_a_bad_cadence_names_the_rule_among_several() -> None:
    text = rules_text({"id": "ok", "units": 1}, {"id": "monthly", "units": 5, "every": "month"})
    with pytest.raises(RulesError, match=r"^<rules>: rule 'monthly': 'month' is not a cadence"):
        parse_rules(text)


@pytest.mark.parametrize(
    "rule",
    [
        {"units": 5, "every": "1 month"},
        {"units_per_seat": 5, "every": "2 weeks"},
        {"top_up_to": 100, "every": "1 month", "during_trial": False},
        {"units": 100, "every": "1 year", "rollover_cap": 0},
        {"units_per_seat": 10, "every": "1 month", "rollover_cap": 50, "products": ["p1"]},
        {"units_per_seat": 3},
        {"units_per_seat": 3, "billing_reasons": ["subscription_create"]},
    ],
)
def test_valid_cadence_and_per_seat_rules_load(rule: dict) -> None:
    assert parse_rules(rules_text(rule)).rules[0].id == "r"


def test_a_units_only_rules_file_still_loads_and_grants_as_before() -> None:
    rules = parse_rules(README_EXAMPLE)
    assert not rules.has_cadence_rules()
    assert not rules.cadence_product("<Polar product id>")
    [grant] = decide_grants(rules, order(billing_reason="subscription_create"))
    assert grant.units == 10


@pytest.mark.parametrize(
    "billing_reason",
    ["purchase", "subscription_create", "subscription_cycle", "subscription_meter_cycle"],
)
def test_orders_never_grant_for_cadence_rules(billing_reason: str) -> None:
    rules = parse_rules(
        rules_text(
            {"id": "monthly", "units": 500, "every": "1 month"},
            {"id": "seats", "units_per_seat": 5, "every": "1 month"},
            {"id": "topup", "top_up_to": 100, "every": "1 week"},
            {"id": "bonus", "units": 10, "billing_reasons": [billing_reason]},
        )
    )
    granted = decide_grants(rules, order(billing_reason=billing_reason, seats=3))
    assert [(g.rule_id, g.units) for g in granted] == [("bonus", 10)]


@pytest.mark.parametrize(("seats", "units"), [(None, 25), (1, 25), (4, 100), (40, 1000)])
def test_per_seat_order_grants_multiply_the_seats_bought(seats: int | None, units: int) -> None:
    rules = parse_rules(rules_text({"units_per_seat": 25}))
    [grant] = decide_grants(rules, order(seats=seats))
    assert grant.units == units


def subscription(**overrides: object) -> SubscriptionFacts:
    fields: dict = dict(
        subscription_id="sub_1", customer_id="cus_1", product_id="p1", status="active"
    )
    fields.update(overrides)
    return SubscriptionFacts(**fields)


def allowance_ids(rules_toml: str, **facts: object) -> list[str]:
    return [
        r.rule_id for r in decide_allowance_rules(parse_rules(rules_toml), subscription(**facts))
    ]


@pytest.mark.parametrize(
    ("products", "product_id", "applies"),
    [
        (["p1"], "p1", True),
        (["p1", "p2"], "p2", True),
        (["p1"], "p3", False),
        (["p1"], None, False),
        (None, "p3", True),  # a rule without products applies to every subscription
        (None, None, True),
    ],
)
def test_allowance_rules_match_the_subscription_product(
    products: list[str] | None, product_id: str | None, applies: bool
) -> None:
    rule = {"units": 5, "every": "1 month"} | ({"products": products} if products else {})
    assert allowance_ids(rules_text(rule), product_id=product_id) == (["r"] if applies else [])


@pytest.mark.parametrize(
    ("during_trial", "status", "applies"),
    [
        (False, "trialing", False),
        (False, "active", True),
        (False, "past_due", True),
        (True, "trialing", True),
        (None, "trialing", True),  # by default a rule applies during a trial too
    ],
)
def test_allowance_rules_may_refuse_trials(
    during_trial: bool | None, status: str, applies: bool
) -> None:
    rule = {"units": 5, "every": "1 month"}
    if during_trial is not None:
        rule["during_trial"] = during_trial
    assert allowance_ids(rules_text(rule), status=status) == (["r"] if applies else [])


@pytest.mark.parametrize(
    ("wanted", "metadata", "applies"),
    [
        ({"plan": "pro"}, {"plan": "pro"}, True),
        ({"plan": "pro"}, {"plan": "pro", "other": 1}, True),
        ({"plan": "pro"}, {"plan": "basic"}, False),
        ({"plan": "pro"}, {}, False),
        ({"plan": "pro", "tier": 2}, {"plan": "pro", "tier": 2}, True),
        ({"plan": "pro", "tier": 2}, {"plan": "pro", "tier": 3}, False),
        ({"beta": True}, {"beta": True}, True),
        ({"beta": True}, {"beta": 1}, False),  # true is not 1
        ({"tier": 1}, {"tier": True}, False),
        ({"tier": 5}, {"tier": "5"}, False),
        ({"tier": 5}, {"tier": 5.0}, False),
    ],
)
def test_allowance_rules_match_metadata_like_order_rules(
    wanted: dict, metadata: dict, applies: bool
) -> None:
    text = rules_text({"units": 5, "every": "1 month", "metadata": wanted})
    assert allowance_ids(text, metadata=metadata) == (["r"] if applies else [])
    # The same rule without `every` decides an order with that metadata the same way.
    order_rule = parse_rules(rules_text({"units": 5, "metadata": wanted}))
    assert bool(decide_grants(order_rule, order(metadata=metadata))) is applies


@pytest.mark.parametrize(("seats", "units"), [(None, 10), (1, 10), (7, 70)])
def test_per_seat_allowance_multiplies_the_subscription_seats(
    seats: int | None, units: int
) -> None:
    rules = parse_rules(rules_text({"units_per_seat": 10, "every": "1 month"}))
    [rule] = decide_allowance_rules(rules, subscription(seats=seats))
    assert rule.units == units


@pytest.mark.parametrize(
    ("rule", "units", "top_up_to", "rollover_cap"),
    [
        ({"units": 500}, 500, None, None),
        ({"top_up_to": 1000}, None, 1000, None),
        ({"units": 500, "rollover_cap": 250}, 500, None, 250),
        ({"units": 500, "rollover_cap": 0}, 500, None, 0),
        ({"units_per_seat": 100, "rollover_cap": 50}, 300, None, 50),
    ],
)
def test_allowance_rules_carry_the_amount_and_caps(
    rule: dict, units: int | None, top_up_to: int | None, rollover_cap: int | None
) -> None:
    rules = parse_rules(rules_text({"every": "1 month", **rule}))
    [decided] = decide_allowance_rules(rules, subscription(seats=3))
    assert (decided.units, decided.top_up_to, decided.rollover_cap) == (
        units,
        top_up_to,
        rollover_cap,
    )
    assert (decided.meter, decided.meter_id, decided.event_name, decided.property) == (
        "api_calls",
        "m1",
        "api_usage",
        "units",
    )


@pytest.mark.parametrize(
    ("every", "normalised"),
    [
        ("1 month", "1 month"),
        ("1 months", "1 month"),
        ("2 week", "2 weeks"),
        (" 1   year ", "1 year"),
        ("30 days", "30 days"),
    ],
)
def test_allowance_cadence_is_normalised(every: str, normalised: str) -> None:
    rules = parse_rules(rules_text({"units": 5, "every": every}))
    assert decide_allowance_rules(rules, subscription())[0].every == normalised


def test_order_rules_are_not_allowance_rules() -> None:
    text = rules_text(
        {"id": "bonus", "units": 10},
        {"id": "monthly", "units": 500, "every": "1 month"},
        {"id": "other-product", "units": 5, "every": "1 month", "products": ["p9"]},
    )
    assert allowance_ids(text) == ["monthly"]


@pytest.mark.parametrize(
    ("rules", "has_cadence", "runs_for"),
    [
        ([{"units": 5}], False, {"p1": False, "p2": False, None: False}),
        ([{"units": 5, "every": "1 month"}], True, {"p1": True, "p2": True, None: True}),
        (
            [{"units": 5, "every": "1 month", "products": ["p1"]}],
            True,
            {"p1": True, "p2": False, None: False},
        ),
        (
            [
                {"id": "a", "units": 5, "products": ["p2"]},
                {"id": "b", "units": 5, "every": "1 day", "products": ["p1"]},
            ],
            True,
            {"p1": True, "p2": False, None: False},
        ),
    ],
)
def test_which_products_have_an_allowance_run(
    rules: list[dict], has_cadence: bool, runs_for: dict
) -> None:
    parsed = parse_rules(rules_text(*rules))
    assert parsed.has_cadence_rules() is has_cadence
    assert {p: parsed.cadence_product(p) for p in runs_for} == runs_for


def test_allowance_external_id_is_deterministic_and_distinct_per_period() -> None:
    periods = ["2027-01-31T10:00:00Z", "2027-02-28T10:00:00Z"]
    keys = [
        (sub, rule, period)
        for sub in ("sub_1", "sub_2")
        for rule in ("monthly", "seats")
        for period in periods
    ]
    ids = [allowance_external_id(*key) for key in keys]
    assert ids == [allowance_external_id(*key) for key in keys]
    assert len(set(ids)) == len(keys)
    assert ids[0] == (
        "polar-credits:subscription:sub_1:allowance:monthly:period:2027-01-31T10:00:00Z"
    )


def test_allowance_external_id_of_an_odd_subscription_id_is_hashed() -> None:
    odd = allowance_external_id("sub\n" + "x" * 300, "monthly", "2027-01-31T10:00:00Z")
    assert odd.isprintable() and len(odd) < 200
    assert odd != allowance_external_id("sub\n" + "y" * 300, "monthly", "2027-01-31T10:00:00Z")
