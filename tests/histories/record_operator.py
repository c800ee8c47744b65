"""Record ManualGrantWorkflow and RevokeGrantWorkflow histories of the code in the working tree,
for the replay test (tests/workflows/test_replay.py).

When to use it: before you change either workflow, record the histories of the release that is
deployed now, and commit them with the change.

    python -m tests.histories.record_operator --release v1 [scenario ...]   # from the repo root

Each scenario runs the workflow on Temporal's time-skipping server with the fakes of
tests/workflows/test_manual_grant.py, and writes `<workflow>_<release>_<scenario>.json`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from polar_credits.activities.operator import BALANCE_UNREADABLE
from polar_credits.identity import manual_grant_workflow_id, revoke_workflow_id
from polar_credits.models.grants import PolarErrorType
from polar_credits.workflows.manual_grant import ManualGrantWorkflow
from polar_credits.workflows.revoke_grant import RevokeGrantWorkflow
from tests.histories.record import recorder_main, report_privacy, save_runs
from tests.workflows import test_manual_grant as scenarios
from tests.workflows.conftest import BIN, register_search_attributes

FakePolar = scenarios.FakePolar


def _manual(fake: Callable[[], FakePolar]) -> Callable[[str], tuple[Any, ...]]:
    def scenario(key: str) -> tuple[Any, ...]:
        return (
            fake(),
            ManualGrantWorkflow,
            scenarios.manual_input(key),
            manual_grant_workflow_id(key),
        )

    return scenario


def _revoke(fake: Callable[[], FakePolar], **options: Any) -> Callable[[str], tuple[Any, ...]]:
    def scenario(key: str) -> tuple[Any, ...]:
        grant_id = f"manual-grant-{key}"
        return (
            fake(),
            RevokeGrantWorkflow,
            scenarios.revoke_input(grant_id, **options),
            revoke_workflow_id(grant_id),
        )

    return scenario


def _rejected() -> FakePolar:
    return FakePolar(
        ingest_failure=ApplicationError(
            "Polar rejected ingesting grant events (422): customer does not exist",
            type=PolarErrorType.GRANT_REJECTED.value,
            non_retryable=True,
        )
    )


SCENARIOS: dict[str, tuple[str, Callable[[str], tuple[Any, ...]]]] = {
    "verified": ("manual_grant", _manual(lambda: FakePolar())),
    "unverified": ("manual_grant", _manual(lambda: FakePolar(verify_outcome="unverified"))),
    "rejected": ("manual_grant", _manual(_rejected)),
    "capped": ("revoke_grant", _revoke(lambda: FakePolar(balances={"meter-1": 12.0}))),
    "allow_negative": ("revoke_grant", _revoke(lambda: FakePolar(), allow_negative=True)),
    "nothing": ("revoke_grant", _revoke(lambda: FakePolar(balances={"meter-1": 0.0}))),
    "balance_unreadable": (
        "revoke_grant",
        _revoke(
            lambda: FakePolar(
                balance_failure=ApplicationError(
                    "Polar shows no meter", type=BALANCE_UNREADABLE, non_retryable=True
                )
            )
        ),
    ),
}


async def main(release: str, names: list[str]) -> int:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    written: list[Path] = []
    try:
        await register_search_attributes(env)
        for name in names:
            prefix, build = SCENARIOS[name]
            fake, workflow, input, workflow_id = build(f"record-{uuid.uuid4().hex[:8]}")
            handle, _ = await scenarios.run(env, fake, workflow, input, workflow_id)
            written += await save_runs([handle], f"{prefix}_{release}_{name}")
    finally:
        await env.shutdown()
    return report_privacy(written, [])


if __name__ == "__main__":
    recorder_main(__doc__, SCENARIOS, main)
