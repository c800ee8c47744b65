"""Data of reconciliation (the scheduled repair of orders whose webhook never came): the
schedule's input, what each page's activity reports, and a run's report.

Dataclasses only (they are written into workflow histories): ids, times and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polar_credits.models.orders import VerificationPolicy

# The schedule's and its runs' ids: polar_credits/identity.py (RECONCILE_*).
# The memo key of a completed run's watermark, read back through visibility by the next run.
WATERMARK_MEMO = "watermark"
REPAIRED_MEMO = "repaired"
# A first run (no earlier completed run in visibility) looks back this far.
DEFAULT_LOOKBACK_SECONDS = 24 * 3600
# Each run lists again from a little before the last watermark: an order Polar created a
# moment before the last listing but committed after it is still seen. Dedupe makes the
# overlap free (an order with a run is only counted).
DEFAULT_OVERLAP_SECONDS = 600
PAGE_SIZE = 100  # Polar's largest page
# A run stops after this many pages and saves its watermark; the next run goes on from there.
MAX_PAGES_PER_RUN = 50
MAX_REPAIRED_KEPT = 100


@dataclass
class ReconcileInput:
    """Fixed in the schedule's action (updated whenever a worker starts with new settings)."""

    task_queue: str
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS
    page_size: int = PAGE_SIZE
    max_pages: int = MAX_PAGES_PER_RUN


@dataclass
class WatermarkInput:
    task_queue: str


@dataclass
class Watermark:
    """The latest order creation time (Polar's clock, ISO) a completed run has listed up to,
    or None before the first run."""

    created_at: str | None = None
    from_run: str | None = None


@dataclass
class ReconcilePageInput:
    task_queue: str
    created_after: str
    page: int
    verification: VerificationPolicy
    page_size: int = PAGE_SIZE
    # A recovery: a paid order of a subscription whose allowance run exists (rules with
    # `every`) also reaches that run, as the webhook's does (it says the period is paid).
    allowances: bool = False


@dataclass
class ReconcilePageResult:
    orders: int = 0  # paid orders on the page
    started: list[str] = field(default_factory=list)  # order ids whose run this page started
    already_handled: int = 0  # the order had a run (the webhook came, or an earlier repair)
    ignored: int = 0  # not a paid order this release can process (see the log)
    latest_created_at: str | None = None
    has_more: bool = False
    allowances_told: int = 0  # allowance runs told of a paid order (`allowances` only)


@dataclass
class ReconcileResult:
    """A run's report: what it repaired, and the watermark the next run starts from."""

    created_after: str
    watermark: str
    pages: int = 0
    orders: int = 0
    started: int = 0
    already_handled: int = 0
    ignored: int = 0
    repaired_order_ids: list[str] = field(default_factory=list)  # the first ones
    complete: bool = True  # False: stopped at max_pages; the next run goes on
