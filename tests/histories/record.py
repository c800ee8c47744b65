"""Record OrderCreditsWorkflow histories of the code in the working tree, for the replay test.

When to use it: before you change OrderCreditsWorkflow, record the histories of the release
that is deployed now, and commit them with the change. tests/workflows/test_replay.py replays
every json file here on today's code, so a change that would break runs still in flight
(a different sequence of commands) fails in CI, not in production.

    python -m tests.histories.record --release v2 [scenario ...]   # from the repo root

It starts its own Temporal dev server and seeded Polar stand-ins (127.0.0.1, free ports),
starts each run the way the API does, runs it on an in-process worker, writes
`order_credits_<release>_<scenario>.json`, and checks that no customer email or name, nor any
token or secret, reached a recorded history. It stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from polar.v2026_10 import PolarAsync
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.common import TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment

from polar_credits import search_attributes
from polar_credits.events import grant_event
from polar_credits.identity import order_workflow_id
from polar_credits.models.orders import OrderCreditsInput, VerificationPolicy
from polar_credits.orders import PaidOrder, order_facts
from polar_credits.rules import decide_grants, parse_rules
from polar_credits.worker import build_worker
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    KIT_PRODUCT_ID,
    TEST_RULES,
    UNRULED_PRODUCT_ID,
    WEBHOOK_SECRET,
    seeded_standin,
    temporal_binary,
)
from tests.support.standin import StandinProcess

HERE = Path(__file__).parent
REPO_ROOT = HERE.parent.parent
RULES = parse_rules(TEST_RULES)
FAST = VerificationPolicy(timeout_seconds=30, first_interval_seconds=0.5)
BUYER_NAME = "Replay Test Buyer"  # obviously fake; must never show up in a history


@dataclass(frozen=True)
class Scenario:
    lag: float  # the stand-in's balance recomputation lag
    expect: str  # the run's final CreditStatus, or "failed"
    policy: VerificationPolicy = field(default_factory=lambda: FAST)
    product_id: str = CREDIT_PRODUCT_ID
    customer_exists: bool = True
    faults: tuple[dict, ...] = ()  # armed before the run, cleared after
    # Polar holds the order's grants before the run starts (another order for the same
    # subscription period granted them): the run ends `already_granted` (v3 on).
    granted_before: bool = False


SCENARIOS = {
    "verified": Scenario(2, "verified"),
    "unverified": Scenario(
        5, "unverified", VerificationPolicy(timeout_seconds=1, first_interval_seconds=0.2)
    ),
    "no_rule": Scenario(0, "no_rule", product_id=UNRULED_PRODUCT_ID),
    "rejected": Scenario(0, "failed", customer_exists=False),  # Polar answers 422
    "ingest_retried": Scenario(
        0, "verified", faults=({"endpoint": "events.ingest", "status": 503, "count": 2},)
    ),
    # Reads that keep failing end `unverified`, never `failed`: the grant is in Polar.
    "reads_failing": Scenario(
        0,
        "unverified",
        VerificationPolicy(timeout_seconds=3, first_interval_seconds=0.5),
        faults=(
            {"endpoint": "customer_meters.list", "status": 429, "retry_after": 1, "count": 1000},
        ),
    ),
    "already_granted": Scenario(0, "already_granted", granted_before=True),
    # Production timing: Polar's 15 s recomputation lag, the default policy of the settings.
    "verified_lag15": Scenario(
        15, "verified", VerificationPolicy(timeout_seconds=1800, first_interval_seconds=16)
    ),
    # The decision record (v4 on): the Starter kit's rules look up the first paid order and
    # reserve a per-customer cap in the customer's ledger; a refused grant gives it back.
    "kit_first_order_capped": Scenario(0, "verified", product_id=KIT_PRODUCT_ID),
    "kit_rejected_released": Scenario(
        0, "failed", product_id=KIT_PRODUCT_ID, customer_exists=False
    ),
}


async def warm_up(standin: StandinProcess) -> None:
    """polar-sdk builds its models on first use (seconds on a busy box); a long-lived worker
    is warm, so do it before the first run rather than inside its verification."""
    polar = PolarAsync(standin.token, base_url=standin.base_url)
    await polar.customer_meters.list(customer_id=str(uuid.uuid4()), limit=1)


async def record(
    env: WorkflowEnvironment, standin: StandinProcess, release: str, name: str, scenario: Scenario
) -> dict:
    customer = standin.create_customer(
        email=f"replay-{release}-{name}@example.com", name=BUYER_NAME
    )
    paid = standin.create_paid_order(customer["id"], scenario.product_id, deliver=False)
    facts = order_facts(PaidOrder.model_validate(paid["order"]))  # as the API reads order.paid
    if not scenario.customer_exists:
        facts = replace(facts, customer_id=str(uuid.uuid4()))
    for fault in scenario.faults:
        standin.add_fault(**fault)
    polar = PolarAsync(standin.token, base_url=standin.base_url, timeout=5.0)
    if scenario.granted_before:
        events = [grant_event(g) for g in decide_grants(RULES, facts)]
        await polar.events.ingest(events=events)
    queue = f"record-{release}-{uuid.uuid4().hex[:8]}"
    failure = None
    try:
        async with build_worker(env.client, queue, polar, RULES, per_minute=6000):
            started = time.monotonic()
            handle = await env.client.start_workflow(
                OrderCreditsWorkflow.run,
                OrderCreditsInput(order=facts, verification=scenario.policy),
                id=order_workflow_id(facts.order_id),
                task_queue=queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=TypedSearchAttributes(
                    search_attributes.order_start_attributes(facts)
                ),
            )
            try:
                status = (await handle.result()).status
            except WorkflowFailureError as err:
                status, failure = "failed", str(err.cause)
            wall = time.monotonic() - started
    finally:
        standin.clear_faults()
    assert status == scenario.expect, f"{name}: expected {scenario.expect}, got {status} {failure}"
    if status == "failed":
        assert "422" in (failure or ""), f"{name}: expected Polar's 422, got {failure}"

    history = await handle.fetch_history()
    path = HERE / f"order_credits_{release}_{name}.json"
    save_history(history, path)
    counts = Counter(
        EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events
    )
    return {
        "file": path.name,
        "status": status,
        "failure": failure,
        "events": len(history.events),
        "workflow_tasks": counts["WORKFLOW_TASK_COMPLETED"],
        "timers": counts["TIMER_STARTED"],
        "markers": counts["MARKER_RECORDED"],
        "activities": counts["ACTIVITY_TASK_SCHEDULED"],
        "wall_seconds": round(wall, 2),
        "counts": dict(sorted(counts.items())),
    }


def save_history(history: WorkflowHistory, path: Path) -> None:
    """Write a history for the replay test. Failure stack traces carry this machine's paths;
    replay never reads them, so they are made relative."""
    text = history.to_json()
    for prefix in sorted({str(Path(p)) for p in sys.path if p.endswith("site-packages")}):
        text = text.replace(f"{prefix}/", "site-packages/")
    path.write_text(text.replace(f"{REPO_ROOT}/", ""))


async def save_runs(runs: Sequence[WorkflowHandle], stem: str) -> list[Path]:
    """Save each run's history as `<stem>.json`, or `<stem>_<n>.json` (from 1) when there are
    several runs, and say how long each is."""
    paths = []
    for n, handle in enumerate(runs):
        history = await handle.fetch_history()
        suffix = f"_{n + 1}" if len(runs) > 1 else ""
        path = HERE / f"{stem}{suffix}.json"
        save_history(history, path)
        paths.append(path)
        print(f"{path.name}: {len(history.events)} events", flush=True)
    return paths


def history_texts(node: object, key: str = "") -> list[str]:
    """Every string in a history's JSON, with each payload's base64 `data` decoded too."""
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in history_texts(v, k)]
    if isinstance(node, list):
        return [t for v in node for t in history_texts(v, key)]
    if not isinstance(node, str):
        return []
    if key == "data":
        try:
            return [node, base64.b64decode(node, validate=True).decode("utf-8", "replace")]
        except (binascii.Error, ValueError):
            pass
    return [node]


def privacy_leaks(paths: list[Path], secrets: list[str]) -> list[str]:
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|\"email\"", re.IGNORECASE)
    words = re.compile(r"whsec_|polar_(oat|pat|standin)_|secret|password|bearer", re.IGNORECASE)
    found = []
    for path in paths:
        for text in history_texts(json.loads(path.read_text())):
            hits = email.findall(text) + [m.group() for m in words.finditer(text)]
            hits += [s for s in secrets if s.lower() in text.lower()]
            found += [f"{path.name}: {hit!r}" for hit in hits]
    return found


async def main(release: str, names: list[str]) -> int:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
    )
    standins: dict[float, StandinProcess] = {}
    tmp = tempfile.TemporaryDirectory(prefix="record-histories-")
    try:
        for name in names:
            scenario = SCENARIOS[name]
            if scenario.lag not in standins:
                db = Path(tmp.name) / f"standin-lag{scenario.lag}.sqlite3"
                standins[scenario.lag] = seeded_standin(db, balance_lag=scenario.lag)
                await warm_up(standins[scenario.lag])
            info = await record(env, standins[scenario.lag], release, name, scenario)
            print(json.dumps(info), flush=True)
    finally:
        for standin in standins.values():
            standin.stop()
        await env.shutdown()
        tmp.cleanup()
    return report_privacy(
        sorted(HERE.glob("*.json")), [BUYER_NAME, "polar_standin_dev_token", WEBHOOK_SECRET]
    )


async def every_run(client: Client, workflow_id: str) -> list[WorkflowHandle]:
    """Each run of one workflow id, oldest first (a chain of continue-as-new)."""
    latest = (await client.get_workflow_handle(workflow_id).describe()).run_id
    for _ in range(100):  # visibility lags the runs a little
        runs = [
            (execution.start_time, execution.run_id)
            async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'")
        ]
        if latest in {run_id for _, run_id in runs}:
            break
        await asyncio.sleep(0.1)
    return [client.get_workflow_handle(workflow_id, run_id=run_id) for _, run_id in sorted(runs)]


def report_privacy(paths: list[Path], secrets: list[str]) -> int:
    """Print the privacy check of freshly recorded histories: 0 when clean, 1 otherwise."""
    leaks = privacy_leaks(paths, secrets)
    print("privacy check:", "clean" if not leaks else "\n".join(leaks))
    return 1 if leaks else 0


def recorder_main(
    doc: str, scenarios: Iterable[str], main: Callable[[str, list[str]], Awaitable[int]]
) -> None:
    """The command line every recorder shares: `--release vN [scenario ...]`."""
    names = list(scenarios)
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--release", required=True, help="e.g. v2: names the files")
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(names)}")
    args = parser.parse_args()
    if unknown := set(args.scenarios) - set(names):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    sys.exit(asyncio.run(main(args.release, args.scenarios or names)))


if __name__ == "__main__":
    recorder_main(__doc__, SCENARIOS, main)
