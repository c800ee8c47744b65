"""The Polar call budget's setting: its defaults, and a clear refusal of a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_credits.settings import SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("env", "budget"),
    [
        ({}, 60),  # the sandbox is the default server: 60% of its 100 a minute
        ({"POLAR_SERVER": "production"}, 300),  # 60% of 500
        ({"POLAR_SERVER": "production", "POLAR_RATE_LIMIT_PER_MINUTE": "120"}, 120),
        ({"POLAR_RATE_LIMIT_PER_MINUTE": "  "}, 60),  # blank is unset
    ],
)
def test_the_budget_leaves_the_rest_of_the_limit_to_the_merchant(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], budget: int
) -> None:
    for key in ("POLAR_SERVER", "POLAR_RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().polar_budget_per_minute == budget


@pytest.mark.parametrize("value", ["0", "-5", "fast"])
def test_a_bad_budget_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("POLAR_RATE_LIMIT_PER_MINUTE", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "POLAR_RATE_LIMIT_PER_MINUTE" in str(err.value)


def test_the_worker_will_not_start_with_a_bad_budget(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))},
        "POLAR_ACCESS_TOKEN": "polar_oat_secret_value",
        "CREDITS_RULES_FILE": str(rules),
        "POLAR_RATE_LIMIT_PER_MINUTE": "0",
    }
    done = subprocess.run(
        [sys.executable, "worker.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "POLAR_RATE_LIMIT_PER_MINUTE" in done.stderr
    assert "polar_oat_secret_value" not in done.stderr + done.stdout
