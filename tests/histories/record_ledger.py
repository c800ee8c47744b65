"""Record CustomerLedgerWorkflow histories of the code in the working tree, for the replay
test (tests/workflows/test_replay.py).

When to use it: before you change CustomerLedgerWorkflow, record the histories of the release
that is deployed now, and commit them with the change.

    python -m tests.histories.record_ledger --release v1   # from the repo root

It starts its own Temporal dev server (127.0.0.1, a free port; the time-skipping test server
mishandles concurrent update-with-start), reaches one customer's ledger the way order runs do
(`LedgerActivities`: update-with-start, idempotent retries, a release), with a history limit
low enough that it continues as new, and writes each run as
`customer_ledger_<release>_<n>.json` (the last one still open, as a deploy meets it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import search_attributes
from polar_credits.activities.ledger import LedgerActivities
from polar_credits.identity import ledger_workflow_id
from polar_credits.models.ledger import CapReservation, LedgerState, ReserveUnitsInput
from polar_credits.workflows.customer_ledger import CustomerLedgerWorkflow
from tests.conftest import temporal_binary
from tests.histories.record import every_run, report_privacy, save_history

HERE = Path(__file__).parent


def reservation(n: int, units: int = 40) -> ReserveUnitsInput:
    return ReserveUnitsInput(
        customer_id="",
        reservations=[
            CapReservation(
                "kit-loyalty", f"polar-credits:order:order-{n}:rule:kit-loyalty", units, 100
            )
        ],
    )


async def main(release: str) -> int:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
    )
    customer = str(uuid.uuid4())
    queue = f"record-ledger-{uuid.uuid4().hex[:8]}"
    written: list[Path] = []
    try:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[CustomerLedgerWorkflow],
            activities=LedgerActivities(env.client, queue).all(),
        ):
            workflow_id = ledger_workflow_id(customer)
            # The first run with a low history limit, so this short story continues as new.
            start = WithStartWorkflowOperation(
                CustomerLedgerWorkflow.run,
                LedgerState(customer_key=customer, history_limit=16),
                id=workflow_id,
                task_queue=queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            first = reservation(1)
            first.customer_id = customer
            await env.client.execute_update_with_start_workflow(
                CustomerLedgerWorkflow.reserve, first, start_workflow_operation=start
            )
            ledger = LedgerActivities(env.client, queue)
            for n in range(2, 8):
                wanted = reservation(n)
                wanted.customer_id = customer
                # Two orders at once, and a retried reservation.
                await asyncio.gather(
                    ledger.reserve_capped_units(wanted), ledger.reserve_capped_units(wanted)
                )
                if n == 3:
                    await ledger.release_capped_units(wanted)  # Polar refused that grant
            handle = env.client.get_workflow_handle(workflow_id)
            state = await handle.query(CustomerLedgerWorkflow.state)
            assert state.runs > 1, state
            assert state.totals == {"kit-loyalty": 100}, state
            for n, run in enumerate(await every_run(env.client, workflow_id)):
                history = await run.fetch_history()
                path = HERE / f"customer_ledger_{release}_{n + 1}.json"
                save_history(history, path)
                written.append(path)
                print(f"{path.name}: {len(history.events)} events", flush=True)
            await handle.terminate("recorded")
    finally:
        await env.shutdown()
    return report_privacy(written, [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="e.g. v1: names the files")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.release)))
