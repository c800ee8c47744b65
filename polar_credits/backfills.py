"""Data of a backfill (a one-off grant to many existing customers): what the operator asked,
what each page's activity reports, and the progress the workflow carries across runs.

Dataclasses only (they are written into workflow histories): ids and counts, never a
customer's email or name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from polar_credits.identity import OPERATOR_KEY

# Polar's largest page: one listing call and one ingest call grant up to this many customers.
PAGE_SIZE = 100
# A run continues as new after this many pages, carrying its cursor and counts, so its
# history stays small however many customers the backfill reaches.
PAGES_PER_RUN = 20
# The report keeps the most recent rejections with their reasons; the total is always exact.
MAX_REJECTIONS_KEPT = 100
MAX_CUSTOMER_LIST = 10_000
MAX_CUSTOMER_ID_CHARS = 256
MAX_REASON_CHARS = 200

# An idempotency key goes into a workflow id and into every grant's external id as is, so it
# must be one that polar_credits/identity.py would not hash.
BACKFILL_KEY = OPERATOR_KEY


class BackfillTarget(StrEnum):
    PRODUCT = "product"  # the customers with an active subscription to one product
    CUSTOMERS = "customers"  # an explicit list of customer ids
    ALL_ACTIVE = "all_active"  # every customer with an active subscription


@dataclass
class BackfillMeter:
    """The meter of the rules file the grant goes to, resolved when the backfill starts (a
    later rules change never alters a running backfill)."""

    name: str
    meter_id: str
    event_name: str
    property: str = "units"


@dataclass
class BackfillRequest:
    """What the operator asked; fixed for the life of the backfill."""

    key: str
    target: str  # a BackfillTarget
    meter: BackfillMeter
    units: int
    reason: str
    product_id: str | None = None
    customer_ids: list[str] = field(default_factory=list)


@dataclass
class RejectedCustomer:
    customer_id: str
    reason: str


@dataclass
class BackfillProgress:
    """The durable cursor and the counts so far: the `progress` query, the workflow's result
    once `done`, and what a run hands to the next one when it continues as new."""

    next_page: int = 1
    pages: int = 0
    customers_seen: int = 0
    # Events Polar stored for this backfill now, and ones it already held (a second start, a
    # page repeated after a crash, a customer listed on two pages).
    granted: int = 0
    already_granted: int = 0
    # Polar holds these grants, but their ingest call was shared with other grants and
    # Polar's counts for the call could not say which were new.
    unattributed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> customers
    rejected: list[RejectedCustomer] = field(default_factory=list)  # the most recent ones
    rejected_total: int = 0
    total: int | None = None  # how many customers Polar's listing said there were
    done: bool = False
    runs: int = 1

    def add(self, page: BackfillPageResult) -> None:
        self.pages += 1
        self.next_page += 1
        self.customers_seen += page.customers
        self.granted += page.granted
        self.already_granted += page.already_granted
        self.unattributed += page.unattributed
        for reason, count in page.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.rejected = (self.rejected + page.rejected)[-MAX_REJECTIONS_KEPT:]
        self.rejected_total += len(page.rejected)
        if page.total is not None:
            self.total = page.total


@dataclass
class BackfillInput:
    request: BackfillRequest
    progress: BackfillProgress = field(default_factory=BackfillProgress)
    page_size: int = PAGE_SIZE
    pages_per_run: int = PAGES_PER_RUN


@dataclass
class BackfillPageInput:
    """One page: listed from Polar (product, all_active), or a slice of the operator's list."""

    key: str
    target: str
    meter: BackfillMeter
    units: int
    reason: str
    page: int
    page_size: int = PAGE_SIZE
    product_id: str | None = None
    customer_ids: list[str] = field(default_factory=list)


@dataclass
class BackfillPageResult:
    customers: int = 0
    granted: int = 0
    already_granted: int = 0
    unattributed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    rejected: list[RejectedCustomer] = field(default_factory=list)
    has_more: bool = False
    total: int | None = None
