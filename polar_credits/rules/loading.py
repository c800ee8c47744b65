"""Loading the rules file: read it, parse the TOML, validate it against the schema, and say
what is wrong in one line per problem (file, rule, field, what to do).
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.rules.schema import RulesError, RulesFile


def parse_rules(text: str, source: str = "<rules>") -> RulesFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    try:
        rules = RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(
            f"{source}: " + "; ".join(_error_line(err, raw) for err in exc.errors())
        ) from None
    rules._version = rules_version(text.encode("utf-8"))
    return rules


def rules_version(content: bytes) -> str:
    """The content hash a decision records: `sha256sum` of the file, shortened."""
    return "sha256:" + hashlib.sha256(content).hexdigest()[:16]


def load_rules(path: Path) -> RulesFile:
    try:
        # newline="": no newline translation, so the version is the hash of the file's bytes.
        with path.open(encoding="utf-8", newline="") as file:
            text = file.read()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


def _error_line(err: ErrorDetails, raw: dict[str, Any]) -> str:
    """One validation error as a line: which rule or meter, which field, what is wrong."""
    loc = list(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    if err["type"] == "less_than_equal" and err.get("ctx", {}).get("le") == MAX_GRANT_UNITS:
        message = f"at most {MAX_GRANT_UNITS}, the per-grant maximum of every grant"
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = raw.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        name = rule.get("id") if isinstance(rule, dict) else None
        where = f"rule {name!r}" if name else f"rule #{loc[1] + 1}"
        field = ".".join(str(p) for p in loc[2:])
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"
    if len(loc) >= 2 and loc[0] == "meters":
        field = ".".join(str(p) for p in loc[2:])
        return f"meter {loc[1]!r}: {field}: {message}" if field else f"meter {loc[1]!r}: {message}"
    where = ".".join(str(p) for p in loc)
    return f"{where}: {message}" if where else message
