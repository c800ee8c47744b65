"""ManualGrantWorkflow and RevokeGrantWorkflow, branch by branch, on the time-skipping server
with fake activities under their real names; and the revoke arithmetic, table-driven."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from polar_credits import search_attributes as sa
from polar_credits.activities.operator import BALANCE_UNREADABLE
from polar_credits.identity import (
    manual_grant_external_id,
    manual_grant_workflow_id,
    revoke_external_id,
    revoke_workflow_id,
)
from polar_credits.identity import operator_key_part as key_part
from polar_credits.models.grants import IngestResult, PolarErrorType
from polar_credits.models.orders import VerificationPolicy
from polar_credits.models.verification import (
    MeterVerification,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from polar_credits.operator_grants import (
    BalanceReadInput,
    BalanceReadResult,
    GrantMeter,
    ManualGrantIngestInput,
    ManualGrantInput,
    ManualGrantState,
    MeterBalance,
    RevokeIngestInput,
    RevokeInput,
    RevokeItem,
    RevokeState,
)
from polar_credits.revoke_plan import plan_revoke
from polar_credits.workflows.manual_grant import ManualGrantWorkflow
from polar_credits.workflows.revoke_grant import RevokeGrantWorkflow

METER = GrantMeter(name="api_calls", meter_id="meter-1", event_name="api_usage")
OTHER = GrantMeter(name="storage", meter_id="meter-2", event_name="storage_usage")


def _ingest_result(n: int) -> IngestResult:
    return IngestResult(
        inserted=n,
        duplicates=0,
        confirmed=n,
        stored_by=datetime.now(UTC).isoformat(),
        batch_events=n,
        first_attempt=True,
    )


@dataclass
class FakePolar:
    """The operator activities and verify_grants under their real names."""

    ingest_failure: ApplicationError | None = None
    verify_outcome: str = "verified"  # or "unverified", or "raise"
    balances: dict[str, float] = field(default_factory=dict)
    balance_failure: ApplicationError | None = None
    manual: list[ManualGrantIngestInput] = field(default_factory=list)
    revokes: list[RevokeIngestInput] = field(default_factory=list)
    reads: list[BalanceReadInput] = field(default_factory=list)

    def activities(self) -> list:
        @activity.defn(name="ingest_manual_grant")
        async def ingest_manual_grant(input: ManualGrantIngestInput) -> IngestResult:
            if self.ingest_failure is not None:
                raise self.ingest_failure
            self.manual.append(input)
            return _ingest_result(1)

        @activity.defn(name="verify_grants")
        async def verify_grants(input: VerifyGrantsInput) -> VerifyGrantsResult:
            if self.verify_outcome == "raise":
                raise ApplicationError("Polar unavailable", non_retryable=True)
            return VerifyGrantsResult(
                verifications=[
                    MeterVerification(
                        meter=m.meter,
                        meter_id=m.meter_id,
                        units_granted=m.units,
                        verified=self.verify_outcome == "verified",
                        balance=float(m.units),
                        checks=1,
                    )
                    for m in input.meters
                ]
            )

        @activity.defn(name="read_revoke_balances")
        async def read_revoke_balances(input: BalanceReadInput) -> BalanceReadResult:
            self.reads.append(input)
            if self.balance_failure is not None:
                raise self.balance_failure
            return BalanceReadResult(
                balances=[MeterBalance(m, self.balances.get(m, 0.0)) for m in input.meter_ids]
            )

        @activity.defn(name="ingest_revoke")
        async def ingest_revoke(input: RevokeIngestInput) -> IngestResult:
            if self.ingest_failure is not None:
                raise self.ingest_failure
            self.revokes.append(input)
            return _ingest_result(len(input.events))

        return [ingest_manual_grant, verify_grants, read_revoke_balances, ingest_revoke]


async def run(
    env: WorkflowEnvironment, fake: FakePolar, workflow: Any, input: Any, workflow_id: str
) -> tuple[WorkflowHandle, Any]:
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ManualGrantWorkflow, RevokeGrantWorkflow],
        activities=fake.activities(),
    ):
        handle = await env.client.start_workflow(
            workflow.run, input, id=workflow_id, task_queue=queue
        )
        try:
            await handle.result()
            outcome: Any = await handle.query(workflow.state)
        except WorkflowFailureError as err:
            outcome = (err, await handle.query(workflow.state))
    # Today's code replays what it just wrote: no non-determinism between its branches.
    history = await handle.fetch_history()
    replay = await Replayer(workflows=[ManualGrantWorkflow, RevokeGrantWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replay.replay_failure is None
    return handle, outcome


def manual_input(key: str, units: int = 10) -> ManualGrantInput:
    return ManualGrantInput(
        key=key,
        customer_id="customer-1",
        meter=METER,
        units=units,
        reason="support ticket",
        request_sha256="0" * 64,
        verification=VerificationPolicy(timeout_seconds=60, first_interval_seconds=1),
    )


# -- manual grants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("verified", "verified"), ("unverified", "unverified"), ("raise", "unverified")],
)
async def test_a_manual_grant_is_ingested_once_then_observed(
    skipping_env: WorkflowEnvironment, outcome: str, status: str
) -> None:
    key = f"ticket-{uuid.uuid4().hex[:8]}"
    fake = FakePolar(verify_outcome=outcome)
    handle, state = await run(
        skipping_env, fake, ManualGrantWorkflow, manual_input(key), manual_grant_workflow_id(key)
    )
    assert isinstance(state, ManualGrantState)
    assert state.status == status
    [ingested] = fake.manual
    assert (ingested.units, ingested.external_id) == (10, manual_grant_external_id(key))
    assert ingested.reason == "support ticket"
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.CREDIT_STATUS) == status
    assert attributes.get(sa.CREDIT_UNITS) == 10


async def test_a_rejected_manual_grant_fails_with_polars_reason(
    skipping_env: WorkflowEnvironment,
) -> None:
    key = f"ticket-{uuid.uuid4().hex[:8]}"
    reason = "Polar rejected ingesting grant events (422): customer does not exist"
    fake = FakePolar(
        ingest_failure=ApplicationError(
            reason, type=PolarErrorType.GRANT_REJECTED.value, non_retryable=True
        )
    )
    handle, (err, state) = await run(
        skipping_env, fake, ManualGrantWorkflow, manual_input(key), manual_grant_workflow_id(key)
    )
    assert isinstance(err, WorkflowFailureError)
    assert state.status == "failed" and state.failure == reason
    attributes = (await handle.describe()).typed_search_attributes
    assert (attributes.get(sa.CREDIT_STATUS), attributes.get(sa.CREDIT_UNITS)) == ("failed", 0)


# -- revokes ------------------------------------------------------------------------------------


def revoke_input(
    grant_id: str, units: int | None = None, allow_negative: bool = False
) -> RevokeInput:
    return RevokeInput(
        grant_id=grant_id,
        customer_id="customer-1",
        items=[
            RevokeItem(external_id=f"{grant_id}:a", meter=METER, units=10),
            RevokeItem(external_id=f"{grant_id}:b", meter=METER, units=5),
        ],
        reason="refund",
        units=units,
        allow_negative=allow_negative,
    )


async def revoke(
    env: WorkflowEnvironment, fake: FakePolar, input: RevokeInput
) -> tuple[WorkflowHandle, Any]:
    return await run(env, fake, RevokeGrantWorkflow, input, revoke_workflow_id(input.grant_id))


async def test_a_revoke_takes_back_at_most_the_balance(skipping_env: WorkflowEnvironment) -> None:
    grant_id = f"manual-grant-{uuid.uuid4().hex[:8]}"
    fake = FakePolar(balances={"meter-1": 12.0})
    handle, state = await revoke(skipping_env, fake, revoke_input(grant_id))
    assert isinstance(state, RevokeState)
    assert (state.status, state.units_requested, state.units_revoked) == ("revoked", 15, 12)
    assert state.capped and "balance" in state.capped
    [ingested] = fake.revokes
    assert [(e.external_id, e.units) for e in ingested.events] == [
        (revoke_external_id(f"{grant_id}:a"), 10),
        (revoke_external_id(f"{grant_id}:b"), 2),
    ]
    attributes = (await handle.describe()).typed_search_attributes
    assert (attributes.get(sa.CREDIT_STATUS), attributes.get(sa.CREDIT_UNITS)) == ("revoked", -12)


async def test_allow_negative_reads_no_balance(skipping_env: WorkflowEnvironment) -> None:
    fake = FakePolar(balances={"meter-1": 0.0})
    _, state = await revoke(
        skipping_env, fake, revoke_input(f"g-{uuid.uuid4().hex[:8]}", allow_negative=True)
    )
    assert (state.status, state.units_revoked, state.capped) == ("revoked", 15, None)
    assert fake.reads == []


async def test_a_zero_balance_leaves_nothing_to_revoke(skipping_env: WorkflowEnvironment) -> None:
    fake = FakePolar(balances={"meter-1": -3.0})
    _, state = await revoke(skipping_env, fake, revoke_input(f"g-{uuid.uuid4().hex[:8]}", units=4))
    assert (state.status, state.units_revoked) == ("nothing_to_revoke", 0)
    assert fake.revokes == []


async def test_an_unreadable_balance_fails_the_revoke_and_takes_nothing(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakePolar(
        balance_failure=ApplicationError(
            "Polar shows no meter", type=BALANCE_UNREADABLE, non_retryable=True
        )
    )
    handle, (err, state) = await revoke(
        skipping_env, fake, revoke_input(f"g-{uuid.uuid4().hex[:8]}")
    )
    assert isinstance(err, WorkflowFailureError)
    assert state.status == "failed" and "could not be read" in state.failure
    assert "nothing was revoked" in state.failure
    assert fake.revokes == []
    assert (await handle.describe()).typed_search_attributes.get(sa.CREDIT_STATUS) == "failed"


async def test_a_refused_revoke_event_fails_the_revoke(skipping_env: WorkflowEnvironment) -> None:
    fake = FakePolar(
        balances={"meter-1": 100.0},
        ingest_failure=ApplicationError(
            "Polar rejected (422)", type=PolarErrorType.GRANT_REJECTED.value, non_retryable=True
        ),
    )
    _, (err, state) = await revoke(skipping_env, fake, revoke_input(f"g-{uuid.uuid4().hex[:8]}"))
    assert isinstance(err, WorkflowFailureError)
    assert state.status == "failed" and state.units_revoked == 0


# -- the arithmetic -----------------------------------------------------------------------------


def items() -> list[RevokeItem]:
    return [
        RevokeItem(external_id="a", meter=METER, units=10),
        RevokeItem(external_id="b", meter=OTHER, units=20),
        RevokeItem(external_id="c", meter=METER, units=5),
    ]


@pytest.mark.parametrize(
    ("wanted", "balances", "planned", "capped"),
    [
        (35, None, [("a", 10), ("b", 20), ("c", 5)], None),
        (12, None, [("a", 10), ("b", 2)], None),
        (50, None, [("a", 10), ("b", 20), ("c", 5)], "granted 35"),
        (35, {"meter-1": 100, "meter-2": 100}, [("a", 10), ("b", 20), ("c", 5)], None),
        (35, {"meter-1": 12, "meter-2": 100}, [("a", 10), ("b", 20), ("c", 2)], "api_calls 12"),
        (35, {"meter-1": 0, "meter-2": 7.5}, [("b", 7)], "storage 7.5"),
        (35, {"meter-1": -4, "meter-2": 0}, [], "balance"),
        (35, {}, [], "balance"),  # a meter without a reading has no room
    ],
)
def test_plan_revoke(
    wanted: int,
    balances: dict[str, float] | None,
    planned: list[tuple[str, int]],
    capped: str | None,
) -> None:
    events, why = plan_revoke(items(), wanted, balances)
    assert [(e.grant_external_id, e.units) for e in events] == planned
    assert all(e.external_id == revoke_external_id(e.grant_external_id) for e in events)
    if capped is None:
        assert why is None
    else:
        assert why is not None and capped in why


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        ("ticket-42", True),
        ("a.b:c_d-e", True),
        ("x" * 100, True),
        ("x" * 101, False),
        ("has space", False),
        ("new\nline", False),
        ("-leading-dash", False),
        ("ünïcode", False),
    ],
)
def test_keys_are_used_as_is_only_when_id_safe(key: str, plain: bool) -> None:
    part = key_part(key)
    assert (part == key) is plain
    if not plain:
        assert part.startswith("sha256-") and len(part) == 71
    assert manual_grant_workflow_id(key) == f"manual-grant-{part}"
