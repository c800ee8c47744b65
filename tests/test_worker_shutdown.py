"""Stopping `python worker.py` with SIGTERM or SIGINT, at any moment of its life, ends it
cleanly: exit status 0, and no "Fatal Python error" or traceback on its output.

A real worker process against the real Temporal dev server. Before the fix, a stop while the
workers started sometimes aborted the process ("Fatal Python error: PyGILState_Release",
status -6), and a stop during start-up killed it (-15) or printed a KeyboardInterrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import TEST_RULES, credit_pack_order
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT

POLLING = "worker polling task queue"
CONNECTING = "connecting to Temporal at"
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0  # the worker gives itself 8 s (STOP_TIMEOUT_SECONDS) after a stop


class WorkerProcess:
    """`python worker.py` with its output in a file; stopped by its PID, killed if it hangs."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "worker.py"],
                cwd=REPO_ROOT,
                env={**clean, "PYTHONUNBUFFERED": "1", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.log_path = log_path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while text not in self.output():
            assert self.process.poll() is None, f"worker exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in time:\n{self.output()}"
            await asyncio.sleep(0.02)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Send `sig`; the exit status and how long the worker took to exit."""
        started = time.monotonic()
        self.process.send_signal(sig)
        return await self.wait(), time.monotonic() - started

    async def wait(self) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker still running {EXIT_TIMEOUT}s later:\n{self.output()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def assert_clean(status: int, output: str) -> None:
    assert "Fatal Python error" not in output, output
    assert "Traceback" not in output, output
    assert status == 0, f"exit status {status}:\n{output}"


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: a frozen server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []

    def connections(self) -> int:
        """How many clients connected so far (each held open, unanswered)."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.held.append(self.sock.accept()[0])
        return len(self.held)

    def close(self) -> None:
        for sock in [*self.held, self.sock]:
            sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(TEST_RULES)
    return path


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(
    temporal_env: WorkflowEnvironment, silent_server: SilentServer, rules_file: Path, tmp_path: Path
) -> Iterator[StartWorker]:
    """Starts workers on a fresh task queue; Polar never answers, so a grant stays in flight."""
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = WorkerProcess(
            {
                "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
                "POLAR_ACCESS_TOKEN": "polar_oat_shutdown_test",
                "POLAR_API_URL": f"http://{silent_server.address}",
                "POLAR_TIMEOUT_SECONDS": "60",
                "CREDITS_RULES_FILE": str(rules_file),
                "CREDITS_TASK_QUEUE": f"shutdown-{uuid.uuid4().hex[:8]}",
                # Not this test's subject: no reconciliation schedule in the shared test server.
                "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
                **env,
            },
            tmp_path / f"worker-{len(started)}.log",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


# The worker imports for a second or two, connects, then starts its two Temporal workers.
# Before the fix, about one stop in three from 0.5 to 2.5 s after the "polling" line
# aborted the process as it exited: the stops below catch that nine times in ten.
MOMENTS = [
    ("importing", signal.SIGTERM, None, 0.3),
    ("importing", signal.SIGINT, None, 0.3),
    ("workers starting", signal.SIGTERM, POLLING, 0.0),
    ("workers starting", signal.SIGINT, POLLING, 0.5),
    ("running", signal.SIGTERM, POLLING, 1.0),
    ("running", signal.SIGINT, POLLING, 1.5),
    ("running", signal.SIGTERM, POLLING, 2.0),
    ("running", signal.SIGTERM, POLLING, 2.5),
]


@pytest.mark.parametrize(
    ("moment", "sig", "after_line", "delay"),
    MOMENTS,
    ids=[f"{m}-{s.name}-{d}s" for m, s, _, d in MOMENTS],
)
async def test_a_stop_at_any_moment_exits_cleanly(
    start_worker: StartWorker,
    moment: str,
    sig: signal.Signals,
    after_line: str | None,
    delay: float,
) -> None:
    worker = start_worker()
    if after_line:
        await worker.wait_for(after_line)
    await asyncio.sleep(delay)
    status, _ = await worker.stop(sig)
    assert_clean(status, worker.output())
    assert f"{sig.name} received: stopping" in worker.output()


async def test_a_stop_while_an_activity_is_in_flight_exits_cleanly(
    start_worker: StartWorker, temporal_env: WorkflowEnvironment, silent_server: SilentServer
) -> None:
    """The order's ingest activity is running, its call to Polar unanswered."""
    worker = start_worker()
    await worker.wait_for(POLLING)
    order_id = f"shutdown-{uuid.uuid4().hex[:8]}"
    handle = await temporal_env.client.start_workflow(
        OrderCreditsWorkflow.run,
        credit_pack_order("cus_shutdown", order_id),
        id=f"order-credits-{order_id}",
        task_queue=worker.env["CREDITS_TASK_QUEUE"],
    )
    try:
        deadline = time.monotonic() + 20
        while not (silent_server.connections() and await _activity_started(handle)):
            assert time.monotonic() < deadline, f"no activity in flight:\n{worker.output()}"
            await asyncio.sleep(0.1)
        status, took = await worker.stop(signal.SIGTERM)
        assert_clean(status, worker.output())
        assert "exiting without waiting" not in worker.output()  # a clean shutdown, in time
        assert took < 8.0
    finally:
        await handle.terminate("test over")


async def test_a_stop_while_temporal_does_not_answer_exits_cleanly(
    start_worker: StartWorker, silent_server: SilentServer
) -> None:
    worker = start_worker(TEMPORAL_ADDRESS=silent_server.address)
    await worker.wait_for(CONNECTING)
    await asyncio.sleep(0.3)
    status, _ = await worker.stop(signal.SIGTERM)
    assert_clean(status, worker.output())
    assert "stopped before Temporal was connected" in worker.output()


async def test_an_unreachable_temporal_exits_with_status_1(start_worker: StartWorker) -> None:
    worker = start_worker(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    status = await worker.wait()
    output = worker.output()
    assert status == 1, output
    assert "cannot reach Temporal" in output
    assert "Fatal Python error" not in output and "Traceback" not in output


async def _activity_started(handle: WorkflowHandle) -> bool:
    description = await handle.describe()
    return any(
        activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for activity in description.raw_description.pending_activities
    )
