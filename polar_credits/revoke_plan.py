"""The revoke arithmetic: which compensating events take back how many units of a grant,
capped at what it granted and, unless told otherwise, at the customer's balance. Pure: the
revoke workflow runs it, and its tests drive it table by table."""

from __future__ import annotations

from polar_credits.identity import revoke_external_id
from polar_credits.operator_grants import RevokeItem, RevokePlanned


def plan_revoke(
    items: list[RevokeItem], wanted: int, balances: dict[str, float] | None
) -> tuple[list[RevokePlanned], str | None]:
    """The compensating events for `wanted` units, taken from the grant's events in order,
    each at most what it granted; with `balances` (meter id → balance), never more on a
    meter than its balance, so the customer never goes below zero. Returns the events (no
    zero-unit ones) and why fewer than `wanted` were planned, if so."""
    granted = sum(item.units for item in items)
    left = min(wanted, granted)
    why: list[str] = []
    if wanted > granted:
        why.append(f"the grant granted {granted} unit(s), not {wanted}")
    room = {m: max(0, int(b)) for m, b in balances.items()} if balances is not None else None
    planned: list[RevokePlanned] = []
    short_meters: list[str] = []
    for item in items:
        take = min(left, item.units)
        if room is not None:
            available = room.get(item.meter.meter_id, 0)
            if available < take:
                short_meters.append(item.meter.name)
            take = min(take, available)
            room[item.meter.meter_id] = available - take
        left -= take
        if take > 0:
            planned.append(
                RevokePlanned(
                    grant_external_id=item.external_id,
                    external_id=revoke_external_id(item.external_id),
                    meter=item.meter,
                    units=take,
                )
            )
    if short_meters and balances is not None:
        shown = ", ".join(
            f"{name} {balances.get(item.meter.meter_id, 0):g}"
            for name, item in _first_per_meter(items, short_meters)
        )
        why.append(
            f"capped at the customer's balance ({shown}): a revoke never takes a customer "
            "below zero unless allow_negative is set"
        )
    return planned, "; ".join(why) or None


def _first_per_meter(items: list[RevokeItem], names: list[str]) -> list[tuple[str, RevokeItem]]:
    seen: dict[str, RevokeItem] = {}
    for item in items:
        if item.meter.name in names and item.meter.name not in seen:
            seen[item.meter.name] = item
    return list(seen.items())
