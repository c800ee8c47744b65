"""The worker's probes for orchestrators, on its metrics port: a real `polar-credits worker`
process (the image's command) against a private Temporal dev server that the test stops.

/livez answers while the process lives; /readyz says 200 only while Temporal answers and
both task queues are polled, 503 with the reason otherwise; /metrics keeps the SDK's and
the service's metrics; the image's health check (`python -m polar_credits.probe worker`)
follows /readyz.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_RULES
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT
from tests.support.temporal import TemporalProcess
from tests.test_worker_shutdown import SilentServer

POLAR_CREDITS = Path(sys.executable).parent / "polar-credits"
WAIT_SECONDS = 60.0


class Worker:
    """`polar-credits worker` with its probes on a free port; stopped by its PID."""

    def __init__(self, temporal_address: str, tmp_path: Path) -> None:
        rules = tmp_path / "rules.toml"
        rules.write_text(TEST_RULES)
        self.port = free_port()
        self.queue = f"health-{uuid.uuid4().hex[:8]}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))},
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": temporal_address,
            "POLAR_ACCESS_TOKEN": "polar_oat_health_test",
            # Nothing is granted here: Polar is never called.
            "POLAR_API_URL": f"http://127.0.0.1:{free_port()}",
            "CREDITS_RULES_FILE": str(rules),
            "CREDITS_TASK_QUEUE": self.queue,
            "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
            "CREDITS_WORKER_METRICS_PORT": str(self.port),
        }
        self.log_path = tmp_path / "worker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(POLAR_CREDITS), "worker"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    def wait_for(self, path: str, status: int) -> httpx.Response:
        """The first answer of `path` with `status`, polling until WAIT_SECONDS pass."""
        deadline = time.monotonic() + WAIT_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited:\n{self.output()}"
            try:
                answer = self.get(path)
                if answer.status_code == status:
                    return answer
                last = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        pytest.fail(f"{path} never answered {status} (last: {last}):\n{self.output()}")

    def health_check(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command for the worker role, in this worker's environment."""
        return subprocess.run(
            [sys.executable, "-m", "polar_credits.probe", "worker"],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def total(text: str, name: str, task_queue: str | None = None) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and task_queue in (None, sample.labels.get("task_queue"))
    )


@pytest.fixture
def temporal(tmp_path: Path) -> Iterator[TemporalProcess]:
    data = tmp_path / "temporal"
    data.mkdir()
    server = TemporalProcess(data).start()
    try:
        yield server
    finally:
        server.stop()


def test_readyz_follows_temporal_and_the_pollers_while_livez_stays_up(
    temporal: TemporalProcess, tmp_path: Path
) -> None:
    worker = Worker(temporal.address, tmp_path)
    try:
        ready = worker.wait_for("/readyz", 200)
        assert ready.json() == {"status": "ok"}
        assert worker.get("/livez").status_code == 200
        check = worker.health_check()
        assert check.returncode == 0, check.stderr

        # One port still serves both kinds of metrics, with the exporter's names.
        metrics = worker.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        # The SDK's: the worker polled its queue (the rules registry's run came from it).
        assert total(metrics.text, "temporal_workflow_task_queue_poll_succeed_total", worker.queue)
        # The service's: the Polar call budget it was started with (sandbox: 60 a minute).
        assert total(metrics.text, "polar_credits_polar_budget_per_minute") == 60

        temporal.stop()
        not_ready = worker.wait_for("/readyz", 503)
        assert not_ready.json()["status"] == "unavailable"
        assert "Temporal does not answer" in not_ready.json()["detail"]
        assert worker.get("/livez").status_code == 200
        check = worker.health_check()
        assert check.returncode == 1
        assert "503 Temporal does not answer" in check.stderr

        temporal.start()  # the same port and database: the worker polls again by itself
        assert worker.wait_for("/readyz", 200).json() == {"status": "ok"}
    finally:
        status = worker.stop()
    assert status == 0, worker.output()
    assert "Traceback" not in worker.output()


def test_readyz_is_503_until_temporal_is_connected(tmp_path: Path) -> None:
    silent = SilentServer()  # accepts the connection, never answers: connecting forever
    worker = Worker(silent.address, tmp_path)
    try:
        assert worker.wait_for("/livez", 200).json() == {"status": "ok"}
        answer = worker.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "detail": "not connected to Temporal yet"}
        assert worker.health_check().returncode == 1
        assert worker.get("/nothing").status_code == 404
    finally:
        status = worker.stop()
        silent.close()
    assert status == 0, worker.output()


def test_the_health_check_refuses_a_worker_without_a_metrics_port() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "polar_credits.probe", "worker"],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1
    assert "CREDITS_WORKER_METRICS_PORT is not set" in check.stderr
