"""CREDITS_LOG_FORMAT=json: a worker started with `polar-credits worker` writes one JSON object
a line; an activity's line carries its run's ids and its order, a hostile order id comes out
escaped, and no line holds the customer's email."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from polar_credits.identity import ORDER_WORKFLOW_PREFIX, order_workflow_id
from polar_credits.identity import safe_key_part as order_key
from polar_credits.logsafe import JsonFormatter
from polar_credits.logsafe import for_log as shown
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import BIN, Stack, credit_pack_order
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, stop_process

EMAIL = "json.victim@example.com"
# Printable, so it stays the order's key: quotes that would end a JSON string, a fake field,
# a non-ASCII letter.
HOSTILE_ORDER_ID = 'ord-"},{"level":"CRITICAL","message":"forged"}-é'
POLLING = "worker polling task queue"


def start_cli_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(BIN / "polar-credits"), "worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_the_order_prefix_is_the_order_runs_own() -> None:
    assert order_workflow_id("o-1") == ORDER_WORKFLOW_PREFIX + order_key("o-1")


def test_a_record_becomes_one_json_line_with_only_its_known_fields() -> None:
    record = logging.LogRecord(
        "polar_credits.activities", logging.INFO, __file__, 1, "order %s\nforged", ("a\u2028b",),
        None,
    )  # fmt: skip
    record.temporal_activity = {
        "workflow_id": "order-credits-o\u00e9",
        "workflow_run_id": "run-1",
        "workflow_type": "OrderCreditsWorkflow",
        "activity_type": "ingest_order_grants",
        "attempt": 2,
    }
    record.customer_email = EMAIL  # an extra nobody asked for never reaches the line
    line = JsonFormatter().format(record)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "order a\\u2028b\\nforged"
    assert entry["workflow_id"] == "order-credits-o\\xe9"
    assert entry["order_id"] == "o\\xe9"
    assert (entry["run_id"], entry["activity"], entry["attempt"]) == (
        "run-1",
        "ingest_order_grants",
        "2",
    )
    assert EMAIL not in line


async def test_a_worker_logs_json_with_run_ids_escaped_and_no_email(
    stack: Stack, tmp_path: Path
) -> None:
    queue = f"json-logs-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    log_path = tmp_path / "worker.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
    assert stack.settings.polar_access_token is not None
    env = {
        **clean,
        "PYTHONUNBUFFERED": "1",
        "POLAR_ACCESS_TOKEN": stack.settings.polar_access_token.get_secret_value(),
        "POLAR_API_URL": stack.standin.base_url,
        "TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "CREDITS_RULES_FILE": str(stack.settings.credits_rules_file),
        "CREDITS_TASK_QUEUE": queue,
        "CREDITS_LOG_FORMAT": "json",
        # Not this test's subject: no reconciliation schedule in the shared test server.
        "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
        "CREDITS_WORKER_METRICS_PORT": str(metrics_port),
        "POLAR_BUDGET_PER_MINUTE": "6000",
    }
    worker = start_cli_worker(env, log_path)
    try:
        deadline = time.monotonic() + 60
        while POLLING not in log_path.read_text():
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)

        customer_id = stack.standin.create_customer(email=EMAIL, name="Json Victim")["id"]
        handle = await stack.temporal.start_workflow(
            OrderCreditsWorkflow.run,
            credit_pack_order(
                customer_id, HOSTILE_ORDER_ID, timeout_seconds=20, first_interval_seconds=0.5
            ),
            id=order_workflow_id(HOSTILE_ORDER_ID),
            task_queue=queue,
        )
        state = await asyncio.wait_for(handle.result(), timeout=60)
        assert state.status == "verified", state
        # The setting's metrics endpoint serves the grant too.
        async with httpx.AsyncClient(timeout=10) as http:
            scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert "polar_credits_grant_events_total{" in scraped
        assert "temporal_workflow_completed_total" in scraped

        worker.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(worker.wait, 20)
    finally:
        stop_process(worker)
    output = log_path.read_text()
    assert status == 0, output

    lines = [line for line in output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert EMAIL not in output
    assert "é" not in output, "non-ASCII is escaped"

    ingested = [e for e in entries if e.get("activity") == "ingest_order_grants"]
    assert ingested, output
    entry = ingested[0]
    assert entry["workflow_id"] == shown(handle.id)
    assert entry["run_id"] == handle.result_run_id
    assert entry["workflow_type"] == "OrderCreditsWorkflow"
    assert entry["order_id"] == shown(HOSTILE_ORDER_ID)
    assert entry["level"] == "INFO" and entry["logger"] == "temporalio.activity"
    # The forged field stayed inside a string: no line is a CRITICAL one.
    assert all(e["level"] != "CRITICAL" for e in entries)
