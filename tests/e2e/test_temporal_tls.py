"""Temporal behind TLS, as Temporal Cloud or a self-hosted cluster is: the session's dev server
behind a TLS-terminating gRPC proxy (tests/support/grpc_tls_proxy.py), once requiring a client
certificate (mTLS), once an API key (`authorization: Bearer ...`).

Through each, a worker process and an API process configured only by temporalio's TEMPORAL_*
variables (and a profile file) grant a paid order from a signed webhook, and the CLI lists
the grant. A client without the certificate or the key, or with a wrong one, is refused; a
wrong address, an unknown namespace or a missing file stop start-up at once: one line naming
the setting to fix, no traceback, the documented exit status.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from polar_credits.cli.base import ExitCode
from polar_credits.identity import order_workflow_id
from polar_credits.settings import Settings, SettingsError
from polar_credits.temporal_client import TemporalUnreachable, connect_temporal, resolve_temporal
from tests.conftest import CREDIT_PRODUCT_ID, OPERATOR_TOKEN, TEST_RULES, WEBHOOK_SECRET
from tests.support.certs import Pki, make_pki
from tests.support.grpc_tls_proxy import GrpcTlsProxy
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, stop_process
from tests.support.signing import polar_signed_headers
from tests.support.standin import StandinProcess

API_KEY = "tmprl-" + "proxy-test-key-6b1f0c"
CLI = str(Path(sys.executable).parent / "polar-credits")
POLLING = "worker polling task queue"
EXIT_TIMEOUT = 60.0  # a hang guard only: a refused start-up ends within seconds
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Tls:
    pki: Pki
    mtls: GrpcTlsProxy  # requires a client certificate signed by the test CA
    api_key: GrpcTlsProxy  # requires `authorization: Bearer API_KEY`, for namespace "default"
    rules: Path
    home: Path  # XDG_CONFIG_HOME of every process: no one's own Temporal profile file


@pytest.fixture(scope="module")
def tls(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tls]:
    base = tmp_path_factory.mktemp("temporal-tls")
    pki = make_pki(base / "pki")
    rules = base / "rules.toml"
    rules.write_text(TEST_RULES)
    dev_server = temporal_env.client.service_client.config.target_host
    proxy = dict(cert=pki.server.cert, key=pki.server.key)
    mtls = GrpcTlsProxy(dev_server, client_ca=pki.ca_cert, log_path=base / "mtls.log", **proxy)
    api_key = GrpcTlsProxy(
        dev_server, api_key=API_KEY, key_namespace="default", log_path=base / "key.log", **proxy
    )
    with mtls, api_key:
        yield Tls(pki=pki, mtls=mtls, api_key=api_key, rules=rules, home=base / "home")


def service_env(tls: Tls, standin: StandinProcess, temporal: dict[str, str]) -> dict[str, str]:
    """The service's settings, with Temporal's given only by `temporal` (TEMPORAL_*)."""
    kept = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_"))
    }
    return {
        **kept,
        "PYTHONUNBUFFERED": "1",
        "XDG_CONFIG_HOME": str(tls.home),
        "POLAR_ACCESS_TOKEN": standin.token,
        "POLAR_API_URL": standin.base_url,
        "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "POLAR_RATE_LIMIT_PER_MINUTE": "6000",
        "CREDITS_RULES_FILE": str(tls.rules),
        "CREDITS_TASK_QUEUE": f"credits-tls-{uuid.uuid4().hex[:8]}",
        "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "CREDITS_VERIFY_TIMEOUT_SECONDS": "20",
        "CREDITS_VERIFY_FIRST_CHECK_SECONDS": "0.5",
        "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",  # no schedule left behind on the server
        **temporal,
    }


class Process:
    """A service process with its output in a file, stopped by its PID."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *argv], cwd=REPO_ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, ready: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not await ready():
            assert self.process.poll() is None, f"exited early:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in time:\n{self.output()[-3000:]}"
            await asyncio.sleep(0.1)

    async def exit_status(self) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"still running {EXIT_TIMEOUT:g} s later:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)


async def order_paid_body(standin: StandinProcess, order_id: str) -> bytes:
    async with httpx.AsyncClient(
        base_url=standin.base_url, headers={"Authorization": f"Bearer {standin.token}"}
    ) as client:
        order = (await client.get(f"/v1/orders/{order_id}")).raise_for_status().json()
    payload = {"type": "order.paid", "timestamp": order["created_at"], "api_version": "2026-10"}
    return json.dumps({**payload, "data": order}).encode()


def cli_grants(api_url: str, order_id: str) -> list[dict]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_"))
    }
    env |= {"CREDITS_API_URL": api_url, "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN}
    listed = subprocess.run(
        [CLI, "grants", "list", "--order", order_id, "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return json.loads(listed.stdout)["grants"]


async def grant_through(
    tls: Tls, standin: StandinProcess, temporal: dict[str, str], tmp_path: Path
) -> str:
    """Start a worker and an API configured by `temporal`, pay an order, and check that it is
    granted once and listed by the CLI; returns the processes' output."""
    env = service_env(tls, standin, temporal)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    worker = Process(["worker.py"], env, tmp_path / "worker.log")
    api = Process(["-m", "api"], {**env, "CREDITS_API_PORT": str(port)}, tmp_path / "api.log")
    try:
        await worker.wait_for(lambda: _contains(worker, POLLING))
        # /readyz asks Temporal for its health, through the proxy, with the API's credentials.
        await api.wait_for(lambda: _ready(f"{api_url}/readyz"))

        customer_id = standin.create_customer()["id"]
        order_id = standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)[
            "order"
        ]["id"]
        body = await order_paid_body(standin, order_id)
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(
                f"{api_url}/webhooks/polar",
                content=body,
                headers=polar_signed_headers(WEBHOOK_SECRET, body),
            )
        assert answer.status_code == 202, (answer.text, api.output()[-3000:])
        assert answer.json()["workflow_id"] == order_workflow_id(order_id)

        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            events = [e for e in standin.events(customer_id) if e["name"] == "api_usage"]
            grants = await asyncio.to_thread(cli_grants, api_url, order_id)
            if events and grants and grants[0]["status"] == "verified":
                break
            assert time.monotonic() < deadline, (events, grants, worker.output()[-3000:])
            await asyncio.sleep(0.3)
        assert [e["metadata"]["units"] for e in events] == [-10]
        assert [g["id"] for g in grants] == [order_workflow_id(order_id)]
        assert grants[0]["units"] == 10
    finally:
        worker.stop()
        api.stop()
    return worker.output() + api.output()


async def _contains(process: Process, text: str) -> bool:
    return text in process.output()


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_an_order_is_granted_through_mtls(
    tls: Tls, standin: StandinProcess, tmp_path: Path
) -> None:
    output = await grant_through(
        tls,
        standin,
        {
            "TEMPORAL_ADDRESS": tls.mtls.address,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tls.pki.client.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(tls.pki.client.key),
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(tls.pki.ca_cert),
        },
        tmp_path,
    )
    assert f"{tls.mtls.address} (namespace 'default', TLS with a client certificate)" in output
    assert "PRIVATE KEY" not in output


async def test_an_order_is_granted_through_an_api_key_and_a_profile_file(
    tls: Tls, standin: StandinProcess, tmp_path: Path
) -> None:
    # As for Temporal Cloud: where to connect in a profile file, the key in the environment.
    profiles = tmp_path / "temporal.toml"
    profiles.write_text(
        f"""
[profile.cloud]
address = "{tls.api_key.address}"
namespace = "default"

[profile.cloud.tls]
server_ca_cert_path = "{tls.pki.ca_cert}"
"""
    )
    output = await grant_through(
        tls,
        standin,
        {
            "TEMPORAL_CONFIG_FILE": str(profiles),
            "TEMPORAL_PROFILE": "cloud",
            "TEMPORAL_API_KEY": API_KEY,
        },
        tmp_path,
    )
    assert f"{tls.api_key.address} (namespace 'default', TLS, API key, profile 'cloud')" in output
    assert API_KEY not in output


@dataclass(frozen=True)
class Refusal:
    name: str
    temporal: dict[str, str]
    status: int
    starts_with: str  # the one line's beginning, after "polar-credits worker: "
    program: str = "worker"


async def test_a_process_that_cannot_connect_stops_at_once_naming_the_setting(
    tls: Tls, standin: StandinProcess, tmp_path: Path
) -> None:
    pki = tls.pki
    ca = {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert)}
    mtls = {"TEMPORAL_ADDRESS": tls.mtls.address, **ca}
    keyed = {"TEMPORAL_ADDRESS": tls.api_key.address, **ca}
    client_cert = {
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key),
    }
    cases = [
        Refusal("mTLS without a client certificate", mtls, ExitCode.USAGE,
                "TEMPORAL_TLS_CLIENT_CERT_PATH: "),
        Refusal("no API key", keyed, ExitCode.USAGE, "TEMPORAL_API_KEY: "),
        Refusal("a wrong API key", {**keyed, "TEMPORAL_API_KEY": "tmprl-wrong"}, ExitCode.USAGE,
                "TEMPORAL_API_KEY: "),
        Refusal("an unknown namespace",
                {**mtls, **client_cert, "TEMPORAL_NAMESPACE": "no-such-ns"},
                ExitCode.USAGE, "TEMPORAL_NAMESPACE: "),
        Refusal("nothing listening at the address",
                {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"},
                ExitCode.FAILED, "TEMPORAL_ADDRESS: cannot reach Temporal"),
        Refusal("a missing certificate file",
                {**mtls, **client_cert, "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "x.pem")},
                ExitCode.USAGE, "TEMPORAL_TLS_CLIENT_CERT_PATH: cannot read"),
        Refusal("the API with a missing key file",
                {**mtls, **client_cert, "TEMPORAL_TLS_CLIENT_KEY_PATH": str(tmp_path / "x.key")},
                2, "TEMPORAL_TLS_CLIENT_KEY_PATH: cannot read", program="api"),
        Refusal("the API with an unknown profile", {"TEMPORAL_PROFILE": "staging"}, 2,
                "TEMPORAL_PROFILE: no profile 'staging'", program="api"),
    ]  # fmt: skip

    async def attempt(index: int, case: Refusal) -> tuple[Refusal, int, str]:
        env = service_env(tls, standin, case.temporal)
        argv = ["worker.py"] if case.program == "worker" else ["-m", "api"]
        env["CREDITS_API_PORT"] = str(free_port())
        process = Process(argv, env, tmp_path / f"refusal-{index}.log")
        return case, await process.exit_status(), process.output()

    limit = asyncio.Semaphore(4)  # the machine is shared: a few imports at a time

    async def limited(index: int, case: Refusal) -> tuple[Refusal, int, str]:
        async with limit:
            return await attempt(index, case)

    results = await asyncio.gather(*(limited(i, c) for i, c in enumerate(cases)))
    for case, status, output in results:
        prefix = f"polar-credits {case.program}: "
        said = [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]
        assert status == case.status, (case.name, status, output)
        assert len(said) == 1 and said[0].startswith(case.starts_with), (case.name, output)
        assert "Traceback" not in output, (case.name, output)
        assert API_KEY not in output and "PRIVATE KEY" not in output, case.name


async def test_other_connection_mistakes_each_name_their_setting(tls: Tls, tmp_path: Path) -> None:
    """The same start-up path (`connect_temporal`) in this process, for the mistakes a process
    would report the same way: what it says, and whether it is a bad setting (exit 2) or an
    unreachable server (exit 1)."""
    pki = tls.pki
    client_cert = {
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key),
    }
    keyed = {
        "TEMPORAL_ADDRESS": tls.api_key.address,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert),
        "TEMPORAL_API_KEY": API_KEY,
    }
    # A server that accepts the connection and never says a word: only the connect timeout
    # (CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS) ends the wait.
    silent = socket.create_server(("127.0.0.1", 0))
    profiles = tmp_path / "temporal.toml"
    profiles.write_text(
        f'[profile.cloud]\naddress = "{tls.api_key.address}"\nnamespace = "no-such-ns"\n'
        f'[profile.cloud.tls]\nserver_ca_cert_path = "{pki.ca_cert}"\n'
    )
    cases = [
        ("an unknown namespace in a profile file: named as the file's key",
         {"TEMPORAL_CONFIG_FILE": str(profiles), "TEMPORAL_PROFILE": "cloud",
          "TEMPORAL_API_KEY": API_KEY},
         SettingsError, f"namespace in profile 'cloud' of {profiles}: "),
        ("a certificate from another CA",
         {"TEMPORAL_ADDRESS": tls.mtls.address,
          "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert),
          "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.stranger.cert),
          "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.stranger.key)},
         SettingsError, "TEMPORAL_TLS_CLIENT_CERT_PATH: "),
        ("a server certificate this client does not trust",
         {"TEMPORAL_ADDRESS": tls.mtls.address, **client_cert},
         SettingsError, "TEMPORAL_TLS_SERVER_CA_CERT_PATH: "),
        ("plaintext to a TLS server", {"TEMPORAL_ADDRESS": tls.api_key.address},
         SettingsError, "TEMPORAL_TLS: "),
        ("a server name not in the server's certificate",
         {**keyed, "TEMPORAL_TLS_SERVER_NAME": "example.com"},
         SettingsError, "TEMPORAL_TLS_SERVER_NAME: "),
        ("an API key not granted on that namespace",
         {**keyed, "TEMPORAL_NAMESPACE": "someone-elses"}, SettingsError,
         f"TEMPORAL_NAMESPACE: Temporal at {tls.api_key.address} does not let these credentials"),
        ("a server that never answers",
         {"TEMPORAL_ADDRESS": f"127.0.0.1:{silent.getsockname()[1]}"},
         TemporalUnreachable, "TEMPORAL_ADDRESS: no answer from Temporal"),
    ]  # fmt: skip
    try:
        for name, env, error, starts_with in cases:
            settings = Settings(credits_temporal_connect_timeout_seconds=2)
            connection = resolve_temporal(settings, {"XDG_CONFIG_HOME": str(tls.home), **env})
            with pytest.raises(error) as raised:
                await connect_temporal(settings, connection=connection)
            message = str(raised.value)
            assert message.startswith(starts_with), (name, message)
            assert "\n" not in message and API_KEY not in message, (name, message)
    finally:
        silent.close()


async def test_an_api_refused_by_temporal_still_starts_and_its_log_names_the_setting(
    tls: Tls, standin: StandinProcess, tmp_path: Path
) -> None:
    # The API does not wait for Temporal at start-up (it may come up later), so a key that
    # Temporal refuses shows in its log, and webhooks are answered 503: Polar retries them.
    port = free_port()
    env = service_env(
        tls,
        standin,
        {
            "TEMPORAL_ADDRESS": tls.api_key.address,
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(tls.pki.ca_cert),
            "TEMPORAL_API_KEY": "tmprl-revoked-key",
            "CREDITS_API_PORT": str(port),
        },
    )
    api = Process(["-m", "api"], env, tmp_path / "api.log")
    try:
        await api.wait_for(lambda: _contains(api, "TEMPORAL_API_KEY: "))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503
            customer_id = standin.create_customer()["id"]
            order = standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
            body = await order_paid_body(standin, order["order"]["id"])
            answer = await http.post(
                "/webhooks/polar", content=body, headers=polar_signed_headers(WEBHOOK_SECRET, body)
            )
            assert answer.status_code == 503
    finally:
        api.stop()
    [said] = [line for line in api.output().splitlines() if "TEMPORAL_API_KEY: " in line]
    assert "refused the API key" in said
    assert "tmprl-revoked-key" not in api.output() and "Traceback" not in api.output()
