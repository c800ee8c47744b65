"""Checking that Polar's customer meter counts a grant."""


from dataclasses import dataclass


@dataclass
class MeterCheckInput:
    customer_id: str
    meter_id: str
    order_id: str
    event_name: str
    rule_ids: list[str]


@dataclass
class MeterReading:
    """A customer meter as Polar shows it, and whether it already counts the grant's events."""

    meter_id: str
    consumed_units: float
    credited_units: float
    balance: float
    modified_at: str | None
    events_found: int
    includes_grant: bool


@dataclass
class MeterGrant:
    meter: str
    meter_id: str
    units: int


@dataclass
class VerifyGrantsInput:
    """What the verification activity checks, and until when (an absolute deadline, so a
    retried attempt does not start the clock again)."""

    customer_id: str
    meters: list[MeterGrant]
    stored_by: str | None
    check_from: str
    deadline: str
    max_interval_seconds: float = 60.0


@dataclass
class MeterVerification:
    meter: str
    meter_id: str
    units_granted: int
    verified: bool
    balance: float | None = None
    consumed_units: float | None = None
    credited_units: float | None = None
    checks: int = 0



@dataclass
class VerifyGrantsResult:
    verifications: list[MeterVerification]
