"""Which dropped rule keys the worker's start-up check asks about, table by table (whether
they granted is Temporal visibility's answer: tests/e2e/test_rule_keys.py)."""

from __future__ import annotations

import pytest

from polar_credits.identity import registry_workflow_id
from polar_credits.rule_keys import (
    RegisteredKey,
    RegistryState,
    accepted_rules,
    granted_query,
    takeovers,
)
from polar_credits.rules import parse_rules

METER = '[meters.api_calls]\nid = "meter-1"\nevent_name = "api_usage"\n'


def rules(*bodies: str):
    return parse_rules(
        METER + "".join(f'\n[[rules]]\nmeter = "api_calls"\n{body}\n' for body in bodies)
    )


def registry(*bodies: str) -> RegistryState:
    state = RegistryState()
    state.accept(accepted_rules(rules(*bodies)))
    return state


@pytest.mark.parametrize(
    ("before", "after", "found"),
    [
        # renamed without its key, same products: taken over
        ('id = "a"\nunits = 1\nproducts = ["p1"]', 'id = "b"\nunits = 1\nproducts = ["p1"]', "b"),
        # renamed keeping its key: nothing dropped
        (
            'id = "a"\nunits = 1\nproducts = ["p1"]',
            'id = "b"\nkey = "a"\nunits = 1\nproducts = ["p1"]',
            None,
        ),
        # the new rule grants for other products only: nobody takes over
        ('id = "a"\nunits = 1\nproducts = ["p1"]', 'id = "b"\nunits = 1\nproducts = ["p2"]', None),
        # some products shared
        (
            'id = "a"\nunits = 1\nproducts = ["p1", "p2"]',
            'id = "b"\nunits = 1\nproducts = ["p2", "p3"]',
            "b",
        ),
        # a rule for every product takes over any product, and is taken over by any rule
        ('id = "a"\nunits = 1\nproducts = ["p1"]', 'id = "b"\nunits = 1', "b"),
        ('id = "a"\nunits = 1', 'id = "b"\nunits = 1\nproducts = ["p9"]', "b"),
        # an order rule does not take over a cadence rule's products, nor the reverse
        (
            'id = "a"\nunits = 1\nevery = "1 month"\nproducts = ["p1"]',
            'id = "b"\nunits = 1\nproducts = ["p1"]',
            None,
        ),
        (
            'id = "a"\nunits = 1\nevery = "1 month"\nproducts = ["p1"]',
            'id = "b"\nunits = 1\nevery = "1 month"\nproducts = ["p1"]',
            "b",
        ),
    ],
)
def test_a_dropped_key_is_a_takeover_when_a_rule_of_its_kind_shares_its_products(
    before: str, after: str, found: str | None
) -> None:
    taken = takeovers(registry(before), rules(after))
    assert [t.rule_id for t in taken] == ([found] if found else [])


def test_the_registry_remembers_every_key_ever_accepted_and_when() -> None:
    state = registry('id = "a"\nunits = 1')
    first = state.keys["a"].first_version
    state.accept(accepted_rules(rules('id = "b"\nunits = 1\nproducts = ["p1"]')))
    state.accept(accepted_rules(rules('id = "renamed"\nkey = "a"\nunits = 2')))
    assert sorted(state.keys) == ["a", "b"]
    assert state.keys["a"].rule_id == "renamed" and state.keys["a"].first_version == first
    assert state.keys["a"].last_version != first
    assert RegistryState.from_memo(state.memo()).keys == state.keys


def test_the_visibility_queries_are_scoped_to_the_deployment() -> None:
    order = RegisteredKey(kind="order", products=["p1"], rule_id="a")
    assert granted_query("it's", order, "q") == "TaskQueue = 'q' AND CreditRuleKeys = 'it\\'s'"
    cadence = RegisteredKey(kind="cadence", products=["p1", "p2"], rule_id="m")
    assert granted_query("m", cadence, "q") == (
        "TaskQueue = 'q' AND WorkflowType = 'SubscriptionAllowanceWorkflow' AND CreditUnits > 0"
        " AND PolarProductId IN ('p1', 'p2')"
    )
    assert registry_workflow_id("polar-credits") == "polar-credits-rules"
    assert registry_workflow_id("staging") == "polar-credits-rules:staging"
