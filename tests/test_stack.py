"""The local launcher (`make run`), its docker-compose twin and the demo, end to end."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from polar_credits.rules import parse_rules
from tools import stack

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def compose_services() -> dict:
    """The local profile's services: what `docker-compose up` starts (tests/test_deploy.py
    checks the production profile)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {name: s for name, s in services.items() if "local" in s.get("profiles", [])}


def compose_command(service: dict) -> list[str]:
    """The command a service runs after installing the project: `sh -c "pip ... && exec CMD"`."""
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c")
    install, _, command = script.partition("&& exec ")
    assert install.startswith("pip install") and re.search(r"-e '?/app(\[local\])?'? ", install)
    return shlex.split(command)


def test_compose_services_run_the_launchers_command_lines() -> None:
    services = compose_services()
    assert set(services) == {"temporal", "standin", "worker", "api"}
    expected = {
        "temporal": stack.temporal_command(
            "/data/temporal.db", host="0.0.0.0", port=7233, ui_port=8233
        ),  # fmt: skip
        "standin": stack.standin_command(
            "/data/standin.sqlite3",
            webhook_url="http://api:8000/webhooks/polar",
            host="0.0.0.0",
            port=8900,
        ),
        "worker": stack.worker_command(),
        "api": stack.api_command(),
    }
    for name, argv in expected.items():
        assert compose_command(services[name]) == argv, name


def test_compose_points_the_service_at_the_standin_and_publishes_on_localhost_only() -> None:
    services = compose_services()
    for name in ("worker", "api"):
        env = services[name]["environment"]
        for key, value in stack.standin_service_env("http://standin:8900").items():
            assert env[key] == value, (name, key)
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["CREDITS_RULES_FILE"] == f"/app/{stack.DEMO_RULES_FILE}"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    # What the launcher adds: the worker's metrics endpoint, the operator API's local token.
    metrics_port = str(stack.DEFAULT_WORKER_METRICS_PORT)
    assert services["worker"]["environment"]["CREDITS_WORKER_METRICS_PORT"] == metrics_port
    assert f"127.0.0.1:{metrics_port}:{metrics_port}" in services["worker"]["ports"]
    assert services["api"]["environment"]["CREDITS_OPERATOR_TOKEN"] == stack.DEV_OPERATOR_TOKEN


def test_demo_rules_grant_on_the_standins_seeded_products() -> None:
    seed = pytest.importorskip("tools.standin.seed")
    rules = parse_rules((REPO_ROOT / stack.DEMO_RULES_FILE).read_text())
    meter = rules.meters["api_calls"]
    assert (meter.id, meter.event_name, meter.property) == (
        seed.DEMO_METER_ID,
        "api_usage",
        "units",
    )
    bonus, allowance = rules.rules
    # 10 credits for buying the Starter pack ...
    assert (bonus.id, bonus.units, bonus.products) == (
        "starter-pack-bonus",
        10,
        [seed.DEMO_PRODUCT_ID],
    )
    # ... and 100 a month to a Pro yearly subscription, whose webhooks start its allowance run.
    assert (allowance.units, allowance.every) == (100, "1 month")
    assert rules.cadence_product(seed.DEMO_YEARLY_PRODUCT_ID)
    assert not rules.cadence_product(seed.DEMO_PRODUCT_ID)


def _clear_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("POLAR_", "CREDITS_", "TEMPORAL_", "STANDIN_")):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"POLAR_ACCESS_TOKEN": "polar_oat_real"}, "POLAR_WEBHOOK_SECRET"),
        ({"POLAR_ACCESS_TOKEN": "polar_oat_real", "POLAR_WEBHOOK_SECRET": "whsec_x"},
         "CREDITS_RULES_FILE"),
    ],
)  # fmt: skip
def test_launcher_with_a_token_refuses_to_start_without_the_other_polar_settings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: dict[str, str],
    named: str,
) -> None:
    _clear_service_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CREDITS_DATA_DIR", str(tmp_path / "data"))
    started: list[list[str]] = []
    monkeypatch.setattr(stack.subprocess, "Popen", lambda argv, **kw: started.append(argv))

    assert stack.main() == 2

    err = capsys.readouterr().err
    assert named in err and "\n" not in err.strip()
    assert started == []
    assert not (tmp_path / "data").exists()


def test_without_a_token_the_worker_and_api_are_wired_to_the_standin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_service_env(monkeypatch)
    monkeypatch.setenv("POLAR_WEBHOOK_SECRET", "whsec_someone_elses")
    monkeypatch.setenv("STANDIN_PORT", "18900")
    settings, config = stack.load_config(os.environ)
    env = stack.child_env(settings, config, os.environ)

    assert config.use_standin
    assert env["POLAR_ACCESS_TOKEN"] == stack.STANDIN_TOKEN
    assert env["POLAR_API_URL"] == "http://127.0.0.1:18900"
    # The stand-in signs with the launcher's secret, so the API must check with the same one.
    assert env["POLAR_WEBHOOK_SECRET"] == stack.STANDIN_WEBHOOK_SECRET
    assert Path(env["CREDITS_RULES_FILE"]) == REPO_ROOT / stack.DEMO_RULES_FILE


def test_a_child_that_dies_stops_the_others(tmp_path: Path) -> None:
    sleeper = ["python", "-c", "import time; time.sleep(60)"]
    crasher = ["python", "-c", "import sys, time; time.sleep(0.5); print('boom'); sys.exit(3)"]
    processes = stack.Stack(tmp_path / "logs", os.environ, cwd=tmp_path)
    try:
        first = processes.start("first", sleeper)
        processes.start("second", crasher)
        with pytest.raises(stack.StackError) as failure:
            processes.watch(interval=0.1)
        message = str(failure.value)
        assert "second exited with status 3" in message and "boom" in message
    finally:
        processes.stop_all(timeout=5)
    assert first.process.poll() is not None
    assert not psutil.pid_exists(first.process.pid)


# --- Logs: appended with a separator per start, rotated at start, tails of this run only --


def _run_to_exit(processes: stack.Stack, name: str, code: str) -> stack.Child:
    child = processes.start(name, ["python", "-c", code])
    try:
        child.process.wait(timeout=30)
    finally:
        processes.stop_all(timeout=5)
    return child


def test_a_restart_appends_to_the_log_after_a_separator(tmp_path: Path) -> None:
    processes = stack.Stack(tmp_path / "logs", os.environ, cwd=tmp_path)
    _run_to_exit(processes, "svc", "raise SystemExit('first run crashed')")
    _run_to_exit(processes, "svc", "print('second run')")

    lines = (tmp_path / "logs" / "svc.log").read_text().splitlines()
    separator = r"==== polar-credits: svc started \d{4}-\d\d-\d\dT[\d:]+\+00:00 ===="
    starts = [i for i, line in enumerate(lines) if re.fullmatch(separator, line)]
    assert len(starts) == 2 and starts[0] == 0, lines
    assert lines[1 : starts[1]] == ["first run crashed"]
    assert lines[starts[1] + 1 :] == ["second run"]
    assert not list((tmp_path / "logs").glob("svc.log.*"))


def test_a_log_over_the_limit_is_rotated_at_start_keeping_a_bounded_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "LOG_ROTATE_BYTES", 100)
    monkeypatch.setattr(stack, "LOG_KEEP_ROTATED", 2)
    logs = tmp_path / "logs"
    processes = stack.Stack(logs, os.environ, cwd=tmp_path)
    for run in range(1, 5):
        # Each run writes more than the limit, so the next start rotates its log.
        _run_to_exit(processes, "svc", f"print('run {run} ' + 'x' * 200)")
        kept = ["svc.log", "svc.log.1", "svc.log.2"][: min(run, 3)]
        assert sorted(p.name for p in logs.iterdir()) == kept
    assert "run 4 " in (logs / "svc.log").read_text()
    assert "run 3 " in (logs / "svc.log.1").read_text()
    assert "run 2 " in (logs / "svc.log.2").read_text()  # run 1 was dropped

    # Under the limit, nothing moves: the next start appends.
    monkeypatch.setattr(stack, "LOG_ROTATE_BYTES", 10_000)
    _run_to_exit(processes, "svc", "print('run 5')")
    text = (logs / "svc.log").read_text()
    assert "run 4 " in text and "run 5" in text
    assert "run 3 " in (logs / "svc.log.1").read_text()


def test_log_tail_shows_only_the_current_run(tmp_path: Path) -> None:
    processes = stack.Stack(tmp_path / "logs", os.environ, cwd=tmp_path)
    _run_to_exit(processes, "svc", "raise RuntimeError('old crash')")
    child = _run_to_exit(processes, "svc", "import sys; print('new output'); sys.exit(4)")

    tail = child.log_tail()
    assert "new output" in tail
    assert "old crash" not in tail and "polar-credits:" not in tail
    assert "old crash" not in str(child.exited_error("at start"))
    # Without the start offset (a Child built by hand), still only the last run.
    by_hand = stack.Child("svc", child.process, child.log_path)
    assert by_hand.log_tail() == tail

    silent = _run_to_exit(processes, "svc", "pass")
    assert silent.log_tail() == "    (log is empty)"
    # The earlier Child still sees its own lines, not the later start's.
    assert child.log_tail() == tail


# --- The whole stack on free ports --------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stop(process: subprocess.Popen, children: list[psutil.Process]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.skipif(
    not all((REPO_ROOT / p).exists() for p in ("worker.py", "api/__main__.py",
                                               "tools/standin/__main__.py")),
    reason="needs worker.py, api and the stand-in",
)  # fmt: skip
def test_make_run_then_demo_grants_and_verifies_ten_credits_then_ctrl_c_stops_everything(
    tmp_path: Path,
) -> None:
    grpc, ui, standin, api, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_", "STANDIN_"))}  # fmt: skip
    env.update(
        TEMPORAL_ADDRESS=f"127.0.0.1:{grpc}",
        TEMPORAL_UI_URL=f"http://127.0.0.1:{ui}",
        STANDIN_PORT=str(standin),
        CREDITS_API_PORT=str(api),
        CREDITS_WORKER_METRICS_PORT=str(metrics),
        CREDITS_DATA_DIR=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tools.stack"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(launcher.stdout, lines), daemon=True).start()
    output: list[str] = []

    def read_until(marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            output.append(line)
            if marker in line:
                return
        pytest.fail(f"no {marker!r} from the launcher; it printed:\n{''.join(output)}")

    children: list[psutil.Process] = []
    try:
        read_until(stack.READY_LINE, timeout=150)
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 4
        assert (tmp_path / "data" / "temporal.db").exists()
        assert {p.name for p in (tmp_path / "data" / "logs").iterdir()} == {
            "temporal.log", "standin.log", "worker.log", "api.log",
        }  # fmt: skip

        demo = subprocess.run(
            [sys.executable, "-m", "tools.demo", "--timeout", "150"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        shown = demo.stdout + demo.stderr
        assert demo.returncode == 0, shown
        workflow_id = re.search(r"^Workflow id: (\S+)$", demo.stdout, re.M)
        assert workflow_id, shown
        assert f"Temporal UI: http://127.0.0.1:{ui}/" in demo.stdout, shown
        assert re.search(r"^Final status: verified$", demo.stdout, re.M), shown
        assert re.search(r"\(from the workflow\): 10$", demo.stdout, re.M), shown
        assert re.search(r"\(from the stand-in\): 10$", demo.stdout, re.M), shown
        assert "@example.com" not in shown and "Demo Customer" not in shown

        # The operator can try the CLI with the token the launcher printed, and scrape both.
        read_until("polar-credits --help", timeout=10)  # the banner's end
        banner = "".join(output)
        assert f"CREDITS_OPERATOR_TOKEN={stack.DEV_OPERATOR_TOKEN}" in banner, banner
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "polar-credits"), "backfill", "status", "nope"],
            cwd=REPO_ROOT,
            env={**env, "CREDITS_API_URL": f"http://127.0.0.1:{api}",
                 "CREDITS_OPERATOR_TOKEN": stack.DEV_OPERATOR_TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        # Authorized, and answered: no such backfill (a wrong token would exit 2).
        assert cli.returncode == 3, cli.stdout + cli.stderr
        unauthorized = httpx.post(f"http://127.0.0.1:{api}/reconcile", timeout=10)
        assert unauthorized.status_code == 401, "the operator API is on, behind the token"
        worker_metrics = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
        assert "polar_credits_grant_events_total{" in worker_metrics
        api_metrics = httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=10).text
        assert 'polar_credits_webhook_deliveries_total{event_type="order.paid"' in api_metrics

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=90) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"still running after Ctrl-C: {alive}"
    finally:
        _stop(launcher, children)
