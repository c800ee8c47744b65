"""What the gateway hands back: one caller's part of an ingest call, a customer meter, an
order's stamp; numbers and ids only, never a customer's details."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class IngestReceipt:
    """Polar's answer to one ingest call, for the whole batch."""

    inserted: int
    duplicates: int
    stored_by: datetime  # on Polar's clock: no earlier than anything the call stored


@dataclass
class IngestOutcome:
    """One caller's part of an ingest call (see models.IngestResult)."""

    inserted: int | None
    duplicates: int | None
    confirmed: int
    stored_by: datetime
    batch_events: int


@dataclass
class MeterRow:
    """A customer meter as Polar shows it: numbers only, never the customer's details."""

    customer_id: str
    meter_id: str
    balance: float
    consumed_units: float
    credited_units: float
    modified_at: datetime | None


@dataclass
class OrderStamp:
    """An order's id and creation time: all the first-order condition reads of it."""

    id: str
    created_at: datetime
