"""Every id and every Polar event the service builds, pinned with literal strings.

The expected values were computed from the code before the ids moved into
polar_credits/identity.py and polar_credits/events.py: a change here is a change of ids that
running workflows, Temporal's id dedupe and Polar's external_id dedupe (forever) rely on.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from polar_credits.backfills import BackfillMeter, BackfillPageInput
from polar_credits.events import (
    allowance_event,
    backfill_event,
    grant_event,
    manual_grant_event,
    revoke_events,
)
from polar_credits.identity import (
    RECONCILE_SCHEDULE_ID,
    allowance_external_id,
    allowance_workflow_id,
    backfill_external_id,
    backfill_workflow_id,
    budget_workflow_id,
    grant_external_id,
    ledger_customer_key,
    ledger_workflow_id,
    manual_grant_external_id,
    manual_grant_workflow_id,
    operator_key_part,
    order_workflow_id,
    preview_workflow_id,
    reconcile_now_workflow_id,
    recover_workflow_id,
    registry_workflow_id,
    revoke_external_id,
    revoke_workflow_id,
    safe_key_part,
)
from polar_credits.models.allowances import AllowanceGrantInput, AllowanceRule
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant
from polar_credits.operator_grants import (
    GrantMeter,
    ManualGrantIngestInput,
    RevokeIngestInput,
    RevokePlanned,
)

LONG = "o" * 201  # one past the longest Polar id used as is
UNSAFE = "ord\n1"  # a newline does not belong in an id
LONG_SHA = "sha256-d25b49c97433a0dd6668986ad95906e3825a5334a52fca65c41effc03d30c760"
UNSAFE_SHA = "sha256-220e78fec75383d0f784080680e87674ffd26e3c2c0b0f5ab9e946d3e506619c"
SPACE_SHA = "sha256-c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d65"
PROMO_SPACE_SHA = "sha256-090ceca920725dae27d622d4e98c812697684312a732f6be7ef7b53ac4764c83"
START = "2026-01-01T00:00:00Z"


def order(order_id: str = "ord_1", reason: str = "purchase", **facts: str) -> OrderFacts:
    return OrderFacts(
        order_id=order_id, customer_id="cus_1", billing_reason=reason, status="paid", **facts
    )


IDS = [
    # Polar ids (orders, subscriptions, customers): plain up to 200 printable characters.
    (safe_key_part("ord_1"), "ord_1"),
    (safe_key_part("o" * 200), "o" * 200),
    (safe_key_part("a b"), "a b"),
    (safe_key_part(LONG), LONG_SHA),
    (safe_key_part(UNSAFE), UNSAFE_SHA),
    # Operator keys and grant ids: plain only when OPERATOR_KEY-safe (no spaces, <= 100).
    (operator_key_part("k-1"), "k-1"),
    (operator_key_part("a b"), SPACE_SHA),
    (
        operator_key_part("k" * 101),
        "sha256-dec651a2cfdb388ffb5e01b69d4d79971b0a7af493a0865bb40784c545621354",
    ),
    (operator_key_part(UNSAFE), UNSAFE_SHA),
    # Workflow ids.
    (order_workflow_id("ord_1"), "order-credits-ord_1"),
    (order_workflow_id(LONG), "order-credits-" + LONG_SHA),
    (order_workflow_id(UNSAFE), "order-credits-" + UNSAFE_SHA),
    (allowance_workflow_id("sub_1"), "subscription-allowance-sub_1"),
    (ledger_workflow_id("cus_1"), "customer-ledger-cus_1"),
    (ledger_customer_key("cus_1"), "cus_1"),
    (manual_grant_workflow_id("promo-1"), "manual-grant-promo-1"),
    (manual_grant_workflow_id("promo 1"), "manual-grant-" + PROMO_SPACE_SHA),
    (revoke_workflow_id("order-credits-ord_1"), "revoke-order-credits-ord_1"),
    (
        revoke_workflow_id("manual-grant-" + "k" * 100),
        "revoke-sha256-e8f4fd3a83ca0bc74776f25829136f3ac7cd582ec1cca57b8dd7d343ef71d5dd",
    ),
    (backfill_workflow_id("spring-2026"), "backfill-spring-2026"),
    (budget_workflow_id("polar-credits"), "polar-credits-budget-polar-credits"),
    (registry_workflow_id("polar-credits"), "polar-credits-rules"),
    (registry_workflow_id("q2"), "polar-credits-rules:q2"),
    (RECONCILE_SCHEDULE_ID, "polar-credits-reconcile"),
    (
        reconcile_now_workflow_id(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        "polar-credits-reconcile-now-20260102T030405.000006Z",
    ),
    (
        recover_workflow_id(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        "polar-credits-recover-20260102T030405.000006Z",
    ),
    # Polar external ids.
    (grant_external_id(order(), "welcome"), "polar-credits:order:ord_1:rule:welcome"),
    (
        grant_external_id(
            order(
                "ord_2",
                "subscription_cycle",
                subscription_id="sub_1",
                subscription_period_start=START,
            ),
            "monthly",
        ),
        "polar-credits:subscription:sub_1:period:2026-01-01T00:00:00Z:rule:monthly",
    ),
    (
        grant_external_id(
            order(
                "ord_3",
                "subscription_meter_cycle",
                subscription_id="sub_1",
                subscription_meter_period_start=START,
            ),
            "metered",
        ),
        "polar-credits:subscription:sub_1:meter-period:2026-01-01T00:00:00Z:rule:metered",
    ),
    (
        # A cycle order whose snapshot does not say its period: keyed on the order.
        grant_external_id(order("ord_4", "subscription_cycle", subscription_id="sub_1"), "m"),
        "polar-credits:order:ord_4:rule:m",
    ),
    (grant_external_id(order(LONG), "welcome"), f"polar-credits:order:{LONG_SHA}:rule:welcome"),
    (
        allowance_external_id("sub_1", "monthly", START),
        "polar-credits:subscription:sub_1:allowance:monthly:period:2026-01-01T00:00:00Z",
    ),
    (
        allowance_external_id("sub\n1", "monthly", START),
        "polar-credits:subscription:"
        "sha256-6c73c03f7f42f33204dab82a74b8fba8242cb554bcddedd259a87a139f42cd80"
        ":allowance:monthly:period:2026-01-01T00:00:00Z",
    ),
    (manual_grant_external_id("promo-1"), "polar-credits:manual:promo-1"),
    (manual_grant_external_id("promo 1"), "polar-credits:manual:" + PROMO_SPACE_SHA),
    (
        revoke_external_id("polar-credits:order:ord_1:rule:welcome"),
        "polar-credits:revoke:polar-credits:order:ord_1:rule:welcome",
    ),
    (
        backfill_external_id("spring-2026", "cus_1"),
        "polar-credits:backfill:spring-2026:customer:cus_1",
    ),
]


@pytest.mark.parametrize(("built", "expected"), IDS, ids=[expected for _, expected in IDS])
def test_id(built: str, expected: str) -> None:
    assert built == expected


def test_preview_ids_are_new_each_time() -> None:
    first, second = preview_workflow_id(), preview_workflow_id()
    assert first != second
    assert re.fullmatch(r"rules-preview-[0-9a-f-]{36}", first)


METER = GrantMeter(name="api", meter_id="m_1", event_name="credits", property="units")
MANUAL_EXTERNAL_ID = "polar-credits:manual:promo-1"

EVENTS = [
    (
        [
            grant_event(
                Grant(
                    rule_id="welcome-rule",
                    meter="api",
                    meter_id="m_1",
                    event_name="credits",
                    property="units",
                    units=10,
                    customer_id="cus_1",
                    order_id="ord_1",
                    external_id="polar-credits:order:ord_1:rule:welcome",
                    reason="purchase",
                    rule_key="welcome",
                )
            ),
            grant_event(
                Grant(
                    rule_id="r",
                    meter="api",
                    meter_id="m_1",
                    event_name="credits",
                    property="units",
                    units=1,
                    customer_id="cus_1",
                    order_id=LONG,
                    external_id="x",
                    reason="purchase",
                )
            ),
        ],
        '[{"name": "credits", "customer_id": "cus_1", "external_id": '
        '"polar-credits:order:ord_1:rule:welcome", "metadata": {"units": -10, "rule_id": '
        '"welcome-rule", "order_id": "ord_1", "reason": "purchase", "source": "polar-credits"}}, '
        '{"name": "credits", "customer_id": "cus_1", "external_id": "x", "metadata": '
        f'{{"units": -1, "rule_id": "r", "order_id": "{LONG_SHA}", "reason": "purchase", '
        '"source": "polar-credits"}}]',
    ),
    (
        [
            allowance_event(
                AllowanceGrantInput(
                    subscription_id="sub_1",
                    customer_id="cus_1",
                    rule=AllowanceRule(
                        rule_id="monthly",
                        every="1 month",
                        meter="api",
                        meter_id="m_1",
                        event_name="credits",
                        property="units",
                        units=100,
                        rule_key="monthly",
                    ),
                    period_start=START,
                ),
                100,
                "polar-credits:subscription:sub_1:allowance:monthly:period:2026-01-01T00:00:00Z",
            )
        ],
        '[{"name": "credits", "customer_id": "cus_1", "external_id": '
        '"polar-credits:subscription:sub_1:allowance:monthly:period:2026-01-01T00:00:00Z", '
        '"metadata": {"units": -100, "rule_id": "monthly", "subscription_id": "sub_1", '
        '"period_start": "2026-01-01T00:00:00Z", "reason": "allowance", '
        '"source": "polar-credits"}}]',
    ),
    (
        [
            manual_grant_event(
                ManualGrantIngestInput(
                    customer_id="cus_1",
                    meter=METER,
                    units=25,
                    reason="goodwill",
                    external_id=MANUAL_EXTERNAL_ID,
                    key="promo-1",
                )
            )
        ],
        '[{"name": "credits", "customer_id": "cus_1", "external_id": '
        '"polar-credits:manual:promo-1", "metadata": {"units": -25, "reason": "goodwill", '
        '"source": "polar-credits", "grant": "manual"}}]',
    ),
    (
        revoke_events(
            RevokeIngestInput(
                customer_id="cus_1",
                grant_id="manual-grant-promo-1",
                reason="mistake",
                events=[
                    RevokePlanned(
                        grant_external_id=MANUAL_EXTERNAL_ID,
                        external_id=revoke_external_id(MANUAL_EXTERNAL_ID),
                        meter=METER,
                        units=25,
                    )
                ],
            )
        ),
        '[{"name": "credits", "customer_id": "cus_1", "external_id": '
        '"polar-credits:revoke:polar-credits:manual:promo-1", "metadata": {"units": 25, '
        '"reason": "mistake", "source": "polar-credits", '
        '"revokes": "polar-credits:manual:promo-1"}}]',
    ),
    (
        [
            backfill_event(
                BackfillPageInput(
                    key="spring-2026",
                    target="customers",
                    meter=BackfillMeter(
                        name="api", meter_id="m_1", event_name="credits", property="units"
                    ),
                    units=5,
                    reason="spring promo",
                    page=1,
                    customer_ids=["cus_1"],
                ),
                "cus_1",
            )
        ],
        '[{"name": "credits", "customer_id": "cus_1", "external_id": '
        '"polar-credits:backfill:spring-2026:customer:cus_1", "metadata": {"units": -5, '
        '"backfill": "spring-2026", "reason": "spring promo", "source": "polar-credits"}}]',
    ),
]


@pytest.mark.parametrize(
    ("built", "expected"), EVENTS, ids=["order", "allowance", "manual", "revoke", "backfill"]
)
def test_event(built: list[dict], expected: str) -> None:
    # As JSON, so the order of the fields is pinned too (it is the body Polar receives).
    assert json.dumps(built) == expected
