"""`polar-credits rules check FILE`: offline validation with the worker's own messages, a
table of the rules (or JSON), and exit status 0 (valid) or 1 (invalid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polar_credits.cli import app
from polar_credits.rules import RulesError, load_rules
from tests.conftest import TEST_RULES

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

PWYW = """
[meters.api_calls]
id = "meter-1"
event_name = "api_usage"

[[rules]]
id = "pay-what-you-want"
key = "pwyw"
meter = "api_calls"
units_per_currency_unit = 10
rounding = "nearest"
max_units = 1000
product_metadata = { pwyw = true }
customer_metadata = { segment = { in = ["edu"] } }
"""


def check(path: Path, *args: str):
    return runner.invoke(app, ["rules", "check", str(path), *args], env={"COLUMNS": "250"})


@pytest.mark.parametrize(
    "path", [REPO / "examples" / "demo-rules.toml", "tests.conftest:TEST_RULES", "PWYW"]
)
def test_every_shipped_rules_file_is_valid(path: Path | str, tmp_path: Path) -> None:
    if path == "tests.conftest:TEST_RULES":
        path = tmp_path / "rules.toml"
        path.write_text(TEST_RULES)
    elif path == "PWYW":
        path = tmp_path / "rules.toml"
        path.write_text(PWYW)
    result = check(Path(path))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    for rule in load_rules(Path(path)).rules:
        assert rule.id in result.output


def test_the_table_shows_key_amount_and_conditions(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(PWYW)
    result = check(path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {
            "id": "pay-what-you-want",
            "key": "pwyw",
            "meter": "api_calls",
            "amount": "10 × net amount, rounded nearest, max 1000",
            "conditions": 'product_metadata pwyw = true; customer_metadata segment in ["edu"]',
            "cadence": None,
        }
    ]


@pytest.mark.parametrize(
    "broken",
    [
        PWYW.replace('rounding = "nearest"\n', ""),
        PWYW.replace('key = "pwyw"', 'key = "pwyw"\nunits = 3'),
        PWYW + '\n[[rules]]\nid = "other"\nkey = "pwyw"\nmeter = "api_calls"\nunits = 1\n',
        "not = [toml",
    ],
)
def test_an_invalid_file_exits_1_with_the_workers_own_message(broken: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(broken)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    result = runner.invoke(app, ["rules", "check", str(path)], env={"COLUMNS": "1000"})
    assert result.exit_code == 1
    assert str(err.value) in " ".join(result.output.split())


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.toml")
    assert result.exit_code == 1
    assert "cannot read the rules file" in result.output
