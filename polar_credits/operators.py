"""The operator API's tokens: who may call it, under which name, and whether they may change
anything (scope `write`) or only look (scope `read`).

Read once at the API's start from CREDITS_OPERATOR_TOKENS (compact or JSON),
CREDITS_OPERATOR_TOKENS_FILE (TOML) and the older CREDITS_OPERATOR_TOKEN (a write token named
"operator"), all three together. Anything doubtful stops start-up with a SettingsError that
names the setting and the entry, never the token: tokens are secrets and never reach a
message, a log or a history.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from polar_credits.settings import Settings, SettingsError

# A name is what runs record (memo "operator") and what GET and the CLI show: a handle or a
# role, short, with no spaces and no "@", so an email address cannot become one.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
# What may travel in `Authorization: Bearer <token>`: visible ASCII, no spaces.
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
LEGACY_NAME = "operator"
# The memo key of every run an operator starts (manual grant, revoke, rerun, backfill,
# reconciliation): the token's name. Runs started by a webhook or the schedule have none.
OPERATOR_MEMO = "operator"


class Scope(StrEnum):
    READ = "read"  # GET routes, and POSTs that change nothing (POST /rules/preview)
    WRITE = "write"  # everything, including grants, revokes, reruns, backfills, reconciliation


@dataclass(frozen=True)
class OperatorToken:
    name: str
    scope: Scope
    # The token's SHA-256, so every comparison is between two 32-byte values (no length
    # leak), and the token itself is not kept beyond start-up. Hidden from repr.
    digest: bytes = field(repr=False)


def _fail(setting: str, where: str, problem: str) -> SettingsError:
    return SettingsError(f"{setting}: {where}: {problem}")


def _token(setting: str, where: str, name: Any, scope: Any, token: Any) -> OperatorToken:
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(
            setting,
            where,
            "the name must be 1-63 letters, digits, '.', '_' or '-' (starting with a letter or "
            "digit; no spaces, no '@')",
        )
    if scope not in (Scope.READ.value, Scope.WRITE.value):
        # Not even the name: in an entry this malformed it may be a piece of the token.
        raise _fail(setting, where, "the scope must be 'read' or 'write'")
    if not isinstance(token, str) or not token.strip():
        raise _fail(setting, f"{where} ({name})", "the token is empty")
    if len(token) < MIN_TOKEN_CHARS:
        raise _fail(
            setting,
            f"{where} ({name})",
            f"the token is shorter than {MIN_TOKEN_CHARS} characters: use a long random value, "
            'e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_CHARS.match(token):
        raise _fail(
            setting,
            f"{where} ({name})",
            f"the token must be at most {MAX_TOKEN_CHARS} visible ASCII characters, no spaces",
        )
    return OperatorToken(
        name=name, scope=Scope(scope), digest=hashlib.sha256(token.encode()).digest()
    )


def _from_env(value: str) -> list[OperatorToken]:
    """CREDITS_OPERATOR_TOKENS: JSON (`[{"name", "scope", "token"}, ...]`) when it starts with
    `[`, else the compact form `name:scope:token,name:scope:token`."""
    setting = "CREDITS_OPERATOR_TOKENS"
    text = value.strip()
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            # The position only: the message of a JSON error may quote the token.
            raise _fail(setting, "JSON form", f"not valid JSON (at character {exc.pos})") from None
        if not isinstance(entries, list):
            raise _fail(setting, "JSON form", "must be a list of objects")
        tokens = []
        for number, entry in enumerate(entries, 1):
            where = f"entry {number}"
            if not isinstance(entry, dict) or set(entry) != {"name", "scope", "token"}:
                raise _fail(setting, where, 'must be {"name": ..., "scope": ..., "token": ...}')
            tokens.append(_token(setting, where, entry["name"], entry["scope"], entry["token"]))
        return tokens
    tokens = []
    for number, entry in enumerate(text.split(","), 1):
        where = f"entry {number}"
        # Name and scope hold no ':', so a token may: split at the first two only.
        parts = entry.strip().split(":", 2)
        if len(parts) != 3:
            raise _fail(
                setting,
                where,
                "must be name:scope:token (a token holding ',' needs the JSON form or "
                "CREDITS_OPERATOR_TOKENS_FILE)",
            )
        tokens.append(_token(setting, where, *parts))
    return tokens


def _from_file(settings: Settings) -> list[OperatorToken]:
    setting = "CREDITS_OPERATOR_TOKENS_FILE"
    path = settings.credits_operator_tokens_file
    assert path is not None
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise _fail(setting, str(path), f"cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        # No parser message: it may quote a line holding a token.
        raise _fail(setting, str(path), "is not valid TOML") from None
    entries = raw.get("tokens")
    if set(raw) != {"tokens"} or not isinstance(entries, list) or not entries:
        raise _fail(setting, str(path), "must hold [[tokens]] tables, and nothing else")
    tokens = []
    for number, entry in enumerate(entries, 1):
        where = f"{path}, [[tokens]] {number}"
        if not isinstance(entry, dict) or set(entry) != {"name", "scope", "token"}:
            raise _fail(setting, where, "must have exactly name, scope and token")
        tokens.append(_token(setting, where, entry["name"], entry["scope"], entry["token"]))
    return tokens


def load_operator_tokens(settings: Settings) -> tuple[OperatorToken, ...]:
    """Every operator token the settings give; empty: the operator API is off. Raises
    SettingsError on an empty or short token, an unknown scope, a duplicate name or token."""
    tokens: list[tuple[str, OperatorToken]] = []
    if settings.credits_operator_token is not None:
        legacy = settings.credits_operator_token.get_secret_value()
        tokens.append(
            (
                "CREDITS_OPERATOR_TOKEN",
                _token("CREDITS_OPERATOR_TOKEN", "the token", LEGACY_NAME, "write", legacy),
            )
        )
    if settings.credits_operator_tokens is not None:
        value = settings.credits_operator_tokens.get_secret_value()
        tokens += [("CREDITS_OPERATOR_TOKENS", t) for t in _from_env(value)]
    if settings.credits_operator_tokens_file is not None:
        source = f"CREDITS_OPERATOR_TOKENS_FILE ({settings.credits_operator_tokens_file})"
        tokens += [(source, t) for t in _from_file(settings)]
    names: dict[str, str] = {}
    digests: dict[bytes, str] = {}
    for source, token in tokens:
        if token.name in names:
            raise SettingsError(
                f"{source}: the name {token.name!r} is used twice (also in {names[token.name]}): "
                "give each token its own name"
                + (
                    f" ({LEGACY_NAME!r} is CREDITS_OPERATOR_TOKEN's)"
                    if token.name == LEGACY_NAME
                    else ""
                )
            )
        if token.digest in digests:
            raise SettingsError(
                f"{source}: {token.name!r} has the same token as {digests[token.digest]!r}: "
                "give each operator its own token"
            )
        names[token.name] = source
        digests[token.digest] = token.name
    return tuple(token for _, token in tokens)


def authenticate(tokens: tuple[OperatorToken, ...], given: str) -> OperatorToken | None:
    """The token `given` is, or None. Compared with every token in constant time, without
    stopping at a match, so the time taken says nothing about which (or whether one) matched."""
    digest = hashlib.sha256(given.encode()).digest()
    found: OperatorToken | None = None
    for token in tokens:
        matched = hmac.compare_digest(digest, token.digest)
        found = token if matched else found
    return found


def started_by(memo: Mapping[str, Any]) -> str | None:
    """The operator a run's memo names, or None for a run the service started itself."""
    name = memo.get(OPERATOR_MEMO)
    return name if isinstance(name, str) else None
