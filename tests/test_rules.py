"""The rules file: the documented example works, mistakes are named, decisions are right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_credits.models import OrderFacts
from polar_credits.orders import PaidOrder, order_facts
from polar_credits.rules import RulesError, decide_grants, load_rules, parse_rules

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
