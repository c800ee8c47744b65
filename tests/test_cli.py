"""`polar-credits` as an operator runs it: its help lists every command, `serve` answers
/healthz and stops on SIGTERM, and bad settings give the documented exit codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from polar_credits.cli.base import ExitCode, app
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, stop_process

CLI = str(Path(sys.executable).parent / "polar-credits")
SECRET = "whsec_" + "dGVzdC1jbGktc2VjcmV0"


def clean_env(**env: str) -> dict[str, str]:
    """The test's environment without any service setting, plus `env`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
    return {**kept, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], cwd=REPO_ROOT, env=clean_env(**env), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_help_lists_every_command_and_group() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    names = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]
    names += [g.name for g in app.registered_groups if g.name]
    assert {"serve", "worker"} <= set(names)
    for name in names:
        assert name in result.stdout, (name, result.stdout)


def test_no_command_shows_the_help() -> None:
    result = run()
    assert "serve" in result.stdout + result.stderr
    assert "Usage" in result.stdout + result.stderr


def test_serve_answers_healthz_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=clean_env(POLAR_WEBHOOK_SECRET=SECRET),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert health.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert "polar_credits_webhooks_total" in metrics.text
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == ExitCode.OK, log_path.read_text()
    finally:
        stop_process(server)


def test_serve_on_a_busy_port_exits_with_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            "serve", "--host", "127.0.0.1", "--port", str(port), POLAR_WEBHOOK_SECRET=SECRET
        )
    assert result.returncode == ExitCode.FAILED, result.stderr


def test_serve_without_its_secret_exits_with_2() -> None:
    result = run("serve")
    assert result.returncode == ExitCode.USAGE
    assert "POLAR_WEBHOOK_SECRET is not set" in result.stderr


def test_worker_with_a_bad_setting_exits_with_2(tmp_path: Path) -> None:
    result = run("worker")
    assert result.returncode == ExitCode.USAGE
    assert "POLAR_ACCESS_TOKEN is not set" in result.stderr
    result = run(
        "worker",
        "--allow-dropped-keys",
        POLAR_ACCESS_TOKEN="polar_test",
        CREDITS_RULES_FILE=str(tmp_path / "missing.toml"),
    )
    assert result.returncode == ExitCode.USAGE, result.stderr


def rules_file(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[meters.m]\nid = "11111111-0000-4000-8000-000000000001"\nevent_name = "e"\n'
        'property = "units"\n\n[[rules]]\nid = "r"\nmeter = "m"\nunits = 1\n'
        'products = ["11111111-0000-4000-8000-000000000002"]\n'
    )
    return rules


def test_worker_exits_with_1_when_its_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run(
            "worker",
            POLAR_ACCESS_TOKEN="polar_test",
            CREDITS_RULES_FILE=str(rules_file(tmp_path)),
            CREDITS_WORKER_METRICS_PORT=str(busy.getsockname()[1]),
        )
    assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
    assert "cannot serve metrics on port" in result.stderr


def test_worker_exits_with_1_when_temporal_is_unreachable(tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    result = run(
        "worker",
        POLAR_ACCESS_TOKEN="polar_test",
        CREDITS_RULES_FILE=str(rules),
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    assert result.returncode == ExitCode.FAILED, result.stdout + result.stderr
    assert "cannot reach Temporal" in result.stderr


def test_units_above_the_per_grant_maximum_are_a_usage_error_before_any_request() -> None:
    """The one per-grant maximum (10^9) holds in the CLI too: exit 2, nothing sent (the API
    URL here answers nothing, so a request would have failed otherwise)."""
    closed = f"http://127.0.0.1:{free_port()}"
    over = "1000000001"
    for args in (
        ["grants", "create", "--customer", "c1", "--meter", "api_calls", "--units", over,
         "--reason", "ticket", "--idempotency-key", "k1"],
        ["grants", "revoke", "manual-grant-k1", "--units", over],
        ["backfill", "start", "--key", "k1", "--meter", "api_calls", "--units", over,
         "--reason", "gift", "--all-active"],
    ):  # fmt: skip
        result = run(*args, CREDITS_API_URL=closed, CREDITS_OPERATOR_TOKEN="t" * 32)
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert "1000000000" in result.stderr, result.stderr
