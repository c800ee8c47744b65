"""Data of a recovery (`polar-credits recover`): rebuilding every run from Polar after Temporal's
state was lost. Polar holds what was paid (orders, subscriptions) and, through each grant's
`external_id`, what was granted, so the runs restarted from it grant nothing twice.

Dataclasses only (they are written into workflow histories): ids, times and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polar_credits.models.orders import VerificationPolicy
from polar_credits.reconciliation import PAGE_SIZE

# A recovery's run id: polar_credits/identity.py `recover_workflow_id`.
# Subscriptions that get an allowance run (cadence rules): those Polar may still bill or that
# may come back. `incomplete` was never paid (its first paid order starts the run, as the
# webhook does); canceled, incomplete_expired and unpaid ones are over.
RECOVERED_STATUSES = ("trialing", "active", "past_due", "paused")
# A listing stops after this many pages (100 items each) and says so in its report; running
# `recover` again goes on (everything already restarted is only counted).
MAX_PAGES = 1000
# A subscription whose current period began less than this after the window's start had that
# period's paid order listed by the same recovery: the run learns the payment from that order
# (as from the webhook), not from the subscription's status, which Polar shows `active` while
# a renewal's payment is still being attempted.
RENEWAL_MARGIN_SECONDS = 600


@dataclass
class RecoverInput:
    task_queue: str
    since_seconds: float
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)
    subscriptions: bool = True  # also restart the allowance runs (rules with `every`)
    page_size: int = PAGE_SIZE
    max_pages: int = MAX_PAGES


@dataclass
class RecoverSubscriptionsInput:
    task_queue: str
    created_after: str  # the window's start (ISO): see RENEWAL_MARGIN_SECONDS
    page: int
    page_size: int = PAGE_SIZE


@dataclass
class RecoverSubscriptionsResult:
    subscriptions: int = 0  # listed on the page
    started: list[str] = field(default_factory=list)  # subscription ids whose run started
    already_running: int = 0  # the run was running: it got the subscription as Polar shows it
    ended: int = 0  # its run had ended and stays ended
    ignored: int = 0  # unreadable, or of a product no cadence rule names
    has_more: bool = False


@dataclass
class RecoverResult:
    """A recovery's report, shown by `polar-credits recover` while it runs and at its end."""

    created_after: str
    phase: str = "subscriptions"  # subscriptions, orders, done
    order_pages: int = 0
    orders: int = 0  # paid orders listed
    orders_started: int = 0  # runs restarted
    orders_already_running: int = 0  # the order had a run (nothing was lost for it)
    orders_ignored: int = 0
    subscription_pages: int = 0
    subscriptions: int = 0  # subscriptions listed (states RECOVERED_STATUSES)
    allowances_started: int = 0
    allowances_already_running: int = 0
    allowances_ended: int = 0
    subscriptions_ignored: int = 0
    allowances_told_paid: int = 0  # allowance runs a paid order in the window reached
    complete: bool = True  # False: a listing stopped at max_pages; run `recover` again
