"""The decision record: why an order got what it got (polar_credits/rules/engine.py)."""


from dataclasses import dataclass, field

from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant


@dataclass
class FirstOrderFact:
    """Whether the order is the customer's first paid order for its product, as Polar's
    Orders API answered (earlier = older `created_at`, or the same one and a smaller id)."""

    first: bool
    earlier_order_id: str | None = None
    earlier_created_at: str | None = None

    def describe(self) -> str:
        if self.first:
            return "first paid order for this product: yes (no earlier paid order)"
        return (
            f"first paid order for this product: no: earlier order {self.earlier_order_id} "
            f"at {self.earlier_created_at}"
        )


@dataclass
class RuleVerdict:
    """One rule's verdict on one order, with a one-line reason."""

    rule_id: str
    key: str
    matched: bool
    reason: str
    units: int = 0  # granted by this rule to this order (after its per-customer cap)
    # max_units_per_customer, and what the rule had granted the customer before this order.
    cap: int | None = None
    granted_before: int | None = None


@dataclass
class HeldGrant:
    """An amount the rules computed above the per-grant maximum: recorded, never sent."""

    rule_id: str
    units: int  # the amount as computed
    reason: str
    period_start: str | None = None  # an allowance period


@dataclass
class OrderDecision:
    """The decision record: the rules version, each rule's verdict, the facts looked up,
    and the resulting grants. Recorded in the order run's history and its `state`."""

    order_id: str
    rules_version: str
    verdicts: list[RuleVerdict] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    first_order: FirstOrderFact | None = None
    # Facts a rule needs that are not looked up yet ("first_order"): look them up, decide again.
    needs: list[str] = field(default_factory=list)
    # A preview: nothing granted, nothing reserved; caps shown as they stand now.
    preview: bool = False
    # Grants above the per-grant maximum: held here, not in `grants`, never sent.
    held: list[HeldGrant] = field(default_factory=list)


@dataclass
class DecideOrderInput:
    order: OrderFacts
    first_order: FirstOrderFact | None = None
    preview: bool = False


@dataclass
class FirstOrderInput:
    order_id: str
    customer_id: str
    product_id: str | None
    created_at: str | None
