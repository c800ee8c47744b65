"""What a decision may look at, copied from Polar's paid orders."""


from dataclasses import dataclass, field
from typing import Any

# A metadata value: str, int, float or bool, as JSON carries it. Typed Any because Temporal's
# converter tries a union's members in order, and its int() turns True into 1 and 1.5 into 1:
# a rule asking for `true` would never match after the value crossed into a workflow.
MetadataValue = Any


@dataclass
class OrderFacts:
    """What a crediting decision may look at, copied from a paid Polar order."""

    order_id: str
    customer_id: str
    billing_reason: str
    status: str
    product_id: str | None = None
    subscription_id: str | None = None
    subscription_status: str | None = None
    currency: str = "usd"
    subtotal_amount: int = 0
    discount_amount: int = 0
    net_amount: int = 0
    tax_amount: int = 0
    total_amount: int = 0
    refunded_amount: int = 0
    seats: int | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    created_at: str | None = None
    # The order's product's and customer's metadata, only the keys the rules name.
    product_metadata: dict[str, MetadataValue] = field(default_factory=dict)
    customer_metadata: dict[str, MetadataValue] = field(default_factory=dict)
    # The period a subscription order credits, from its subscription snapshot (UTC, to the
    # second): the billing period, and Polar's separate meter period when it has one.
    subscription_period_start: str | None = None
    subscription_meter_period_start: str | None = None
