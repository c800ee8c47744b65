"""A customer's ledger of capped grants (workflows/customer_ledger.py)."""


from dataclasses import dataclass, field


@dataclass
class CapReservation:
    """Units a capped rule wants for one grant; `grant_id` is the grant's external id, so a
    retried reservation for the same grant is the same reservation."""

    rule_key: str
    grant_id: str
    units: int
    cap: int


@dataclass
class CapOutcome:
    rule_key: str
    grant_id: str
    wanted: int
    allowed: int
    granted_before: int  # the rule's total for the customer before this grant
    cap: int


@dataclass
class ReserveUnitsInput:
    customer_id: str
    reservations: list[CapReservation]
    # Read the totals only (a preview): nothing reserved.
    dry_run: bool = False


@dataclass
class ReserveUnitsResult:
    outcomes: list[CapOutcome] = field(default_factory=list)


@dataclass
class LedgerState:
    """A customer's ledger of capped grants: its input after continue-as-new, and its query."""

    customer_key: str
    totals: dict[str, int] = field(default_factory=dict)  # rule key -> units reserved
    # "<rule key> <grant id>" -> units: a reservation made twice is counted once.
    reservations: dict[str, int] = field(default_factory=dict)
    runs: int = 1
    history_limit: int | None = None  # tests set it low to see continue-as-new happen
