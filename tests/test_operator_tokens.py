"""Operator tokens by name and scope, as the API reads them at start-up: the three sources,
and a clear refusal (naming the setting, never showing a token) of anything doubtful."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_credits.operators import Scope, authenticate, load_operator_tokens
from polar_credits.settings import Settings, SettingsError, load_settings
from tools.stack import StackConfig, operator_lines

REPO_ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice-token:with:colons-0123456789"  # a token may hold ':' in the compact form
GRAFANA = "grafana-read-token-0123456789"
LEGACY = "legacy-operator-token-0123456789"
OPERATOR_VARIABLES = (
    "CREDITS_OPERATOR_TOKEN",
    "CREDITS_OPERATOR_TOKENS",
    "CREDITS_OPERATOR_TOKENS_FILE",
)


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "operators.toml"
    path.write_text(text)
    return path


def settings(**values: object) -> Settings:
    return Settings(polar_webhook_secret="whsec_test", **values)


def test_the_three_sources_together_by_name_and_scope(tmp_path: Path) -> None:
    path = tokens_file(
        tmp_path, f'[[tokens]]\nname = "grafana"\nscope = "read"\ntoken = "{GRAFANA}"\n'
    )
    tokens = load_operator_tokens(
        settings(
            credits_operator_token=LEGACY,
            credits_operator_tokens=f" alice:write:{ALICE} ",
            credits_operator_tokens_file=path,
        )
    )
    assert [(t.name, t.scope) for t in tokens] == [
        ("operator", Scope.WRITE),  # CREDITS_OPERATOR_TOKEN, as before: a write token
        ("alice", Scope.WRITE),
        ("grafana", Scope.READ),
    ]
    assert authenticate(tokens, ALICE).name == "alice"
    assert authenticate(tokens, GRAFANA).name == "grafana"
    assert authenticate(tokens, LEGACY).name == "operator"
    for wrong in ("", "alice", ALICE + "x", ALICE[:-1], f"write:{ALICE}"):
        assert authenticate(tokens, wrong) is None
    assert ALICE not in repr(tokens) and GRAFANA not in repr(tokens)


def test_the_json_form_takes_any_token(tmp_path: Path) -> None:
    odd = "a,b:c d" + "-0123456789abcdef"  # a comma and a space: only JSON can carry it...
    value = json.dumps(
        [
            {"name": "ci-bot", "scope": "write", "token": "ci,token:0123456789abcdef"},
            {"name": "grafana", "scope": "read", "token": GRAFANA},
        ]
    )
    tokens = load_operator_tokens(settings(credits_operator_tokens=value))
    assert [(t.name, t.scope) for t in tokens] == [("ci-bot", Scope.WRITE), ("grafana", "read")]
    assert authenticate(tokens, "ci,token:0123456789abcdef").name == "ci-bot"
    # ...but a space cannot travel in an Authorization header: refused.
    spaced = json.dumps([{"name": "x", "scope": "read", "token": odd}])
    with pytest.raises(SettingsError, match="no spaces"):
        load_operator_tokens(settings(credits_operator_tokens=spaced))


def test_no_token_at_all_leaves_the_operator_api_off() -> None:
    assert load_operator_tokens(settings()) == ()
    assert load_operator_tokens(settings(credits_operator_tokens="  ")) == ()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (f"alice:write:{ALICE},alice:read:{GRAFANA}", "'alice' is used twice"),
        (f"alice:write:{ALICE},bob:read:{ALICE}", "'bob' has the same token as 'alice'"),
        ("alice:write:", "entry 1 (alice): the token is empty"),
        (f"alice:write:{ALICE},bob:write:short-token", "entry 2 (bob): the token is shorter"),
        (f"alice:admin:{ALICE}", "the scope must be 'read' or 'write'"),
        (f"alice:Write:{ALICE}", "the scope must be 'read' or 'write'"),
        (f"alice@example.com:write:{ALICE}", "no '@'"),
        (f"alice:write:{ALICE},", "entry 2: must be name:scope:token"),
        ("alice-write-0123456789abcdef", "entry 1: must be name:scope:token"),
        (f"{ALICE}", "entry 1: the scope must be"),  # no name: nothing of the token is shown
        (f'[{{"name": "alice", "scope": "write", "token": "{ALICE}"', "not valid JSON"),
        (f'[{{"name": "alice", "token": "{ALICE}"}}]', "entry 1: must be"),
        (f'{{"alice": "{ALICE}"}}', "entry 1"),
        (f"operator:read:{GRAFANA}", "'operator' is used twice"),  # the legacy token's name
    ],
)
def test_a_doubtful_token_list_is_refused_by_name(value: str, needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_operator_tokens(settings(credits_operator_token=LEGACY, credits_operator_tokens=value))
    message = str(err.value)
    assert message.startswith("CREDITS_OPERATOR_TOKENS") and needle in message, message
    for secret in (ALICE, GRAFANA, LEGACY, "short-token", "0123456789abcdef", "alice-token"):
        assert secret not in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[tokens]]\nname = 'alice'\nscope = 'write'\n", "exactly name, scope and token"),
        (f"[[tokens]]\nname = 'a'\nscope = 'read'\ntoken = '{ALICE}'\nextra = 1\n", "exactly"),
        (f"token = '{ALICE}'\n", "must hold [[tokens]] tables"),
        ("", "must hold [[tokens]] tables"),
        (f"[[tokens]]\nname = 'alice'\ntoken = {ALICE}\n", "is not valid TOML"),
        ("[[tokens]]\nname = 'bob'\nscope = 'read'\ntoken = 'too-short'\n", "shorter"),
        (f"[[tokens]]\nname = 'bob'\nscope = 'read'\ntoken = '{LEGACY}'\n", "same token"),
    ],
)
def test_a_doubtful_tokens_file_is_refused_by_name(tmp_path: Path, text: str, needle: str) -> None:
    path = tokens_file(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_operator_tokens(
            settings(credits_operator_token=LEGACY, credits_operator_tokens_file=path)
        )
    message = str(err.value)
    assert message.startswith("CREDITS_OPERATOR_TOKENS_FILE") and needle in message, message
    assert str(path) in message
    assert ALICE not in message and LEGACY not in message and "too-short" not in message


def test_a_missing_tokens_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CREDITS_OPERATOR_TOKENS_FILE.*cannot be read"):
        load_operator_tokens(settings(credits_operator_tokens_file=tmp_path / "nope.toml"))


def test_a_short_legacy_token_is_refused_too() -> None:
    with pytest.raises(SettingsError, match="^CREDITS_OPERATOR_TOKEN: .*shorter"):
        load_operator_tokens(settings(credits_operator_token="secret"))


def test_the_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tokens_file(
        tmp_path, f'[[tokens]]\nname = "grafana"\nscope = "read"\ntoken = "{GRAFANA}"\n'
    )
    monkeypatch.delenv("CREDITS_OPERATOR_TOKEN", raising=False)
    monkeypatch.setenv("CREDITS_OPERATOR_TOKENS", f"alice:write:{ALICE}")
    monkeypatch.setenv("CREDITS_OPERATOR_TOKENS_FILE", str(path))
    tokens = load_operator_tokens(load_settings())
    assert [t.name for t in tokens] == ["alice", "grafana"]


def test_the_api_will_not_start_with_a_doubtful_token(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in OPERATOR_VARIABLES},
        "POLAR_WEBHOOK_SECRET": "whsec_test",
        "CREDITS_RULES_FILE": "",
        "CREDITS_OPERATOR_TOKENS": f"alice:write:{ALICE},bob:write:{ALICE}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "CREDITS_OPERATOR_TOKENS" in done.stderr and "same token" in done.stderr
    assert ALICE not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_make_run_knows_named_tokens_turn_the_operator_api_on() -> None:
    """Against real Polar the launcher invents no token: named tokens alone turn the API on."""
    real_polar = settings(
        polar_access_token="polar_oat_x", credits_operator_tokens=f"alice:write:{ALICE}"
    )
    config = StackConfig.from_env(real_polar, {})
    assert config.operator_token_source == "env"
    assert "off" not in " ".join(operator_lines(config))
    assert StackConfig.from_env(settings(polar_access_token="x"), {}).operator_token_source is None
