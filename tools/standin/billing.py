"""Subscription lifecycle and refunds as Polar runs them: state changes plus the webhook events
each one emits, in Polar's order (the caller delivers them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.standin import payloads
from tools.standin.clock import Clock
from tools.standin.periods import shift
from tools.standin.store import NotFound, Store


class Impossible(Exception):
    """The transition is not allowed from the current state (HTTP 409)."""


@dataclass
class Outcome:
    subscription: dict[str, Any] | None = None
    order: dict[str, Any] | None = None
    # (webhook type, data) in emission order; data is the resource as it was at that step.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Billing:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- JSON and small steps ------------------------------------------------------------
    def subscription_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        return payloads.subscription_full(
            sub,
            self.store.get_customer(sub["customer_id"]),
            self.store.get_product(sub["product_id"]),
        )

    def order_json(self, order: dict[str, Any]) -> dict[str, Any]:
        return payloads.order(
            order,
            self.store.get_customer(order["customer_id"]),
            self.store.get_product(order["product_id"]),
        )

    def _subscription(self, subscription_id: str) -> dict[str, Any]:
        sub = self.store.get_subscription(subscription_id)
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}")
        return sub

    def _emit_sub(self, out: Outcome, sub: dict[str, Any], *types: str) -> None:
        out.subscription = self.subscription_json(sub)
        out.events += [(t, out.subscription) for t in types]

    def _emit_order(self, out: Outcome, order: dict[str, Any], *types: str) -> None:
        out.order = self.order_json(order)
        out.events += [(t, out.order) for t in types]

    def _reset_meters(self, sub: dict[str, Any]) -> None:
        # Polar resets the meters of the subscription's metered prices at each new window.
        product = self.store.get_product(sub["product_id"])
        for metered in product.get("metered_prices") or []:
            self.store.add_system_event(
                name="meter.reset",
                customer_id=sub["customer_id"],
                metadata={"meter_id": metered["meter_id"]},
            )

    def _order(self, sub: dict[str, Any], reason: str, amount: int) -> dict[str, Any]:
        # Created pending, as Polar does before the payment goes through.
        return self.store.create_order(
            customer_id=sub["customer_id"],
            product_id=sub["product_id"],
            billing_reason=reason,
            seats=sub["seats"],
            metadata={},
            amount=amount,
            currency=sub["currency"],
            subscription=payloads.subscription_snapshot(sub),
            status="pending",
        )

    def _pay(self, out: Outcome, order: dict[str, Any]) -> None:
        self._emit_order(out, self.store.update_order(order["id"], status="paid"), "order.updated")
        out.events.append(("order.paid", out.order))

    def _catch_up(self, sub: dict[str, Any]) -> None:
        """A manual clock behind the due cycle moves to it: the cycle happens at its time."""
        if self.clock.manual and self.clock.now() < sub["current_period_end"]:
            self.clock.set(sub["current_period_end"])

    # -- operations ----------------------------------------------------------------------
    def create(
        self, customer_id: str, product_id: str, seats: int | None, metadata: dict[str, Any]
    ) -> Outcome:
        product = self.store.get_product(product_id)
        if self.store.get_customer(customer_id) is None or product is None:
            raise NotFound("customer_id and product_id must name existing rows")
        if not product["recurring_interval"]:
            raise Impossible(f"product {product_id} is not recurring: buy it with /admin/orders")
        at = self.clock.now()
        count = product["recurring_interval_count"] or 1
        sub = self.store.create_subscription(
            customer_id=customer_id,
            product_id=product_id,
            status="active",
            amount=product["price_amount"],
            currency=product["currency"],
            recurring_interval=product["recurring_interval"],
            recurring_interval_count=count,
            anchor=at,
            current_period_start=at,
            current_period_end=shift(at, product["recurring_interval"], count),
            started_at=at,
            seats=seats,
            metadata=metadata,
            modified_at=at,
        )
        self._reset_meters(sub)
        out = Outcome()
        self._emit_sub(out, sub, "subscription.created", "subscription.active")
        order = self._order(sub, "subscription_create", sub["amount"])
        self._emit_order(out, order, "order.created")
        self._pay(out, order)
        return out

    def renew(self, subscription_id: str, *, paid: bool = True) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] != "active":
            raise Impossible(f"subscription is {sub['status']}: only an active one renews")
        if not paid and sub["cancel_at_period_end"]:
            raise Impossible("subscription cancels at period end: it ends instead of renewing")
        self._catch_up(sub)
        if sub["cancel_at_period_end"]:
            return self._end(sub)
        return self._cycle(sub, paid=paid)

    def _cycle(self, sub: dict[str, Any], *, paid: bool) -> Outcome:
        # Reset first: a grant made on the renewal order's order.paid must survive it.
        self._reset_meters(sub)
        cycle = sub["cycle"] + 1
        end = shift(
            sub["anchor"], sub["recurring_interval"], sub["recurring_interval_count"] * (cycle + 1)
        )
        sub = self.store.update_subscription(
            sub["id"],
            cycle=cycle,
            current_period_start=sub["current_period_end"],
            current_period_end=end,
            status="active" if paid else "past_due",
            past_due_at=None if paid else self.clock.now(),
        )
        out = Outcome()
        self._emit_sub(out, sub, "subscription.cycled", "subscription.updated")
        if not paid:
            out.events.append(("subscription.past_due", out.subscription))
        order = self._order(sub, "subscription_cycle", sub["amount"])
        self._emit_order(out, order, "order.created")
        if paid:
            self._pay(out, order)
        else:
            self.store.update_subscription(sub["id"], pending_order_id=order["id"])
        return out

    def _end(self, sub: dict[str, Any]) -> Outcome:
        """Period end of a subscription set to cancel: it ends, with a final invoice."""
        at = self.clock.now()
        sub = self.store.update_subscription(sub["id"], status="canceled", ended_at=at, ends_at=at)
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated", "subscription.revoked")
        # The final invoice: billing_reason subscription_cycle, nested status "canceled".
        # No new period is sold, so nothing fixed is charged.
        order = self._order(sub, "subscription_cycle", 0)
        self._emit_order(out, order, "order.created")
        self._pay(out, order)
        return out

    def cancel(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] == "canceled" or sub["cancel_at_period_end"]:
            raise Impossible("subscription is already canceled")
        at = self.clock.now()
        sub = self.store.update_subscription(
            sub["id"], cancel_at_period_end=1, canceled_at=at, ends_at=sub["current_period_end"]
        )
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated", "subscription.canceled")
        return out

    def uncancel(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] == "canceled":
            raise Impossible("subscription has ended: it cannot be uncanceled")
        if not sub["cancel_at_period_end"]:
            raise Impossible("subscription is not set to cancel")
        sub = self.store.update_subscription(
            sub["id"], cancel_at_period_end=0, canceled_at=None, ends_at=None
        )
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated", "subscription.uncanceled")
        return out

    def revoke(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] == "canceled":
            raise Impossible("subscription has already ended")
        at = self.clock.now()
        was_canceled = bool(sub["cancel_at_period_end"])
        sub = self.store.update_subscription(
            sub["id"],
            status="canceled",
            canceled_at=sub["canceled_at"] or at,
            ended_at=at,
            ends_at=at,
        )
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated")
        if not was_canceled:
            out.events.append(("subscription.canceled", out.subscription))
        out.events.append(("subscription.revoked", out.subscription))
        return out

    def pause(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] != "active":
            raise Impossible(f"subscription is {sub['status']}: only an active one pauses")
        sub = self.store.update_subscription(sub["id"], status="paused", paused_at=self.clock.now())
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated", "subscription.paused")
        return out

    def resume(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] != "paused":
            raise Impossible(f"subscription is {sub['status']}: only a paused one resumes")
        at = self.clock.now()
        fields: dict[str, Any] = {"status": "active", "paused_at": None}
        if sub["current_period_end"] <= at:
            # The paused period ran out: a new one starts now rather than a burst of renewals.
            fields |= {
                "anchor": at,
                "cycle": 0,
                "current_period_start": at,
                "current_period_end": shift(
                    at, sub["recurring_interval"], sub["recurring_interval_count"]
                ),
            }
        sub = self.store.update_subscription(sub["id"], **fields)
        self._reset_meters(sub)
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated", "subscription.resumed")
        return out

    def update(
        self, subscription_id: str, product_id: str | None = None, seats: int | None = None
    ) -> Outcome:
        """A product change (upgrade, downgrade) and/or a new seat count, applied at once:
        Polar sends `subscription.updated` with the new `product_id` / `seats`.

        No proration order: Polar may bill one (`subscription_update`) for the rest of the
        period; tests that need one create it with /admin/orders. The billing period stays:
        a product billed on another interval is refused rather than re-anchored."""
        if product_id is None and seats is None:
            raise ValueError("give a product_id, seats, or both")
        if seats is not None and (isinstance(seats, bool) or not isinstance(seats, int)):
            raise ValueError("seats must be a whole number")
        if seats is not None and seats < 1:
            raise ValueError("seats must be at least 1")
        sub = self._subscription(subscription_id)
        # Polar refuses both: "already canceled or will be at the end of the period".
        if sub["status"] == "canceled":
            raise Impossible("subscription has ended: it cannot be updated")
        if sub["cancel_at_period_end"]:
            raise Impossible("subscription is set to cancel: uncancel it before updating it")
        fields: dict[str, Any] = {}
        if product_id is not None and product_id != sub["product_id"]:
            product = self.store.get_product(product_id)
            if product is None:
                raise NotFound(f"no product {product_id}")
            if not product["recurring_interval"]:
                raise Impossible(f"product {product_id} is not recurring: it has no subscription")
            interval = (product["recurring_interval"], product["recurring_interval_count"] or 1)
            if interval != (sub["recurring_interval"], sub["recurring_interval_count"]):
                raise Impossible(
                    f"product {product_id} bills every {interval[1]} {interval[0]}, the "
                    f"subscription every {sub['recurring_interval_count']} "
                    f"{sub['recurring_interval']}: the stand-in changes products on one interval"
                )
            fields |= {
                "product_id": product_id,
                "amount": product["price_amount"],
                "currency": product["currency"],
            }
        if seats is not None and seats != sub["seats"]:
            fields["seats"] = seats
        if not fields:
            raise ValueError("the subscription already has this product and these seats")
        sub = self.store.update_subscription(sub["id"], **fields)
        out = Outcome()
        self._emit_sub(out, sub, "subscription.updated")
        return out

    def retry_payment(self, subscription_id: str) -> Outcome:
        sub = self._subscription(subscription_id)
        if sub["status"] != "past_due" or not sub["pending_order_id"]:
            raise Impossible(f"subscription is {sub['status']}: no failed payment to retry")
        order = self.store.get_order(sub["pending_order_id"])
        out = Outcome()
        self._pay(out, order)
        sub = self.store.update_subscription(
            sub["id"], status="active", past_due_at=None, pending_order_id=None
        )
        self._emit_sub(out, sub, "subscription.updated", "subscription.active")
        return out

    def refund(self, order_id: str, amount: int | None) -> Outcome:
        order = self.store.get_order(order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        if order["status"] not in ("paid", "partially_refunded"):
            raise Impossible(f"order is {order['status']}: nothing to refund")
        refundable = order["amount"] - order["refunded_amount"]
        amount = refundable if amount is None else amount
        if amount <= 0:
            raise ValueError("amount must be a positive number of cents")
        if amount > refundable:
            raise Impossible(f"amount {amount} exceeds the refundable amount {refundable}")
        refunded = order["refunded_amount"] + amount
        order = self.store.update_order(
            order_id,
            refunded_amount=refunded,
            status="refunded" if refunded == order["amount"] else "partially_refunded",
        )
        out = Outcome()
        self._emit_order(out, order, "order.updated", "order.refunded")
        return out
