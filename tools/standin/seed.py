"""Fixed ids and the demo catalogue the stand-in creates at every start.

Seeding is idempotent: rows that already exist are left as they are.
"""

from __future__ import annotations

from tools.standin.store import Store

ORGANIZATION_ID = "0b1f5e6a-0000-4000-8000-000000000001"
DEMO_METER_ID = "0b1f5e6a-0000-4000-8000-00000000a001"
DEMO_METER_NAME = "API calls"
DEMO_EVENT_NAME = "api_usage"
DEMO_PRODUCT_ID = "0b1f5e6a-0000-4000-8000-00000000b001"
DEMO_PRODUCT_NAME = "Starter pack"
DEMO_PRICE_AMOUNT = 1900
# A yearly plan, for the demo rules' monthly allowance (a rule with `every = "1 month"`).
DEMO_YEARLY_PRODUCT_ID = "0b1f5e6a-0000-4000-8000-00000000b002"
DEMO_YEARLY_PRODUCT_NAME = "Pro yearly"
DEMO_YEARLY_PRICE_AMOUNT = 19000


def seed(store: Store) -> None:
    if store.get_meter(DEMO_METER_ID) is None:
        store.create_meter(
            id=DEMO_METER_ID,
            name=DEMO_METER_NAME,
            filter=sum_filter(DEMO_EVENT_NAME),
            aggregation={"func": "sum", "property": "units"},
        )
    if store.get_product(DEMO_PRODUCT_ID) is None:
        store.create_product(
            id=DEMO_PRODUCT_ID,
            name=DEMO_PRODUCT_NAME,
            price_amount=DEMO_PRICE_AMOUNT,
            currency="usd",
            recurring_interval=None,
        )
    if store.get_product(DEMO_YEARLY_PRODUCT_ID) is None:
        store.create_product(
            id=DEMO_YEARLY_PRODUCT_ID,
            name=DEMO_YEARLY_PRODUCT_NAME,
            price_amount=DEMO_YEARLY_PRICE_AMOUNT,
            currency="usd",
            recurring_interval="year",
        )


def sum_filter(event_name: str) -> dict:
    return {
        "conjunction": "and",
        "clauses": [{"property": "name", "operator": "eq", "value": event_name}],
    }
