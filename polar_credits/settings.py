"""Service settings, read once from the environment at start-up and passed down.

Each process asks only for what it uses (`require`), so a missing value stops start-up with
one message naming the variable, instead of a stack trace at the first webhook.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Polar's per-organization limits, requests a minute (POLAR_FACTS.md, "Rate limits").
SERVER_RATE_LIMITS = {"production": 500, "sandbox": 100}


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it and says what to do."""


_HINTS = {
    "POLAR_ACCESS_TOKEN": "an organization access token from Polar (Settings → Developers)",
    "POLAR_WEBHOOK_SECRET": "the secret Polar shows for your webhook endpoint (whsec_...)",
    "CREDITS_RULES_FILE": "the path of your crediting rules file (TOML)",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    polar_access_token: SecretStr | None = None
    polar_webhook_secret: SecretStr | None = None
    polar_server: Literal["sandbox", "production"] = "sandbox"
    polar_api_url: str | None = None
    polar_timeout_seconds: float = Field(default=10.0, gt=0)
    # The service's share of the organization's Polar rate limit, for all workers together.
    # Unset: 60% of the server's limit (docs/gateway.md).
    polar_rate_limit_per_minute: int | None = Field(default=None, ge=1)

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://127.0.0.1:8233"

    credits_rules_file: Path | None = None
    credits_task_queue: str = "polar-credits"
    credits_verify_timeout_seconds: float = Field(default=1800.0, ge=0)
    # Polar recomputes a balance ~15 s after the customer's last event: an earlier check
    # only spends calls.
    credits_verify_first_check_seconds: float = Field(default=16.0, ge=0)
    credits_api_host: str = "127.0.0.1"
    credits_api_port: int = Field(default=8000, ge=1, le=65535)
    # Polar gives up on a delivery after 10 s: answer 503 well before, so its retry counts.
    credits_temporal_start_timeout_seconds: float = Field(default=5.0, gt=0)
    # A client that trickles its request is cut off (docs/operator/runs.md, "Slow clients").
    credits_api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    credits_api_body_timeout_seconds: float = Field(default=10.0, gt=0)
    # The operator API (docs/operator/api-and-cli.md): off while unset; a bearer token otherwise.
    credits_operator_token: SecretStr | None = None
    # The reconciliation schedule: how often it lists Polar's paid orders for missed webhooks.
    # 0 turns it off: no schedule is created, and an existing one is paused.
    credits_reconcile_interval_seconds: float = Field(default=600.0, ge=0)
    # Its first run (no earlier completed run to take the watermark from) looks back this far.
    credits_reconcile_lookback_seconds: float = Field(default=86400.0, gt=0)
    # The worker's Prometheus endpoint (the SDK's metrics and the service's); 0 = off.
    credits_worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where it listens: loopback by default, like the API; 0.0.0.0 in a container.
    credits_worker_metrics_host: str = "127.0.0.1"
    # "text" (default) or "json": one JSON object per line, with order and workflow ids.
    credits_log_format: Literal["text", "json"] = "text"
    # true: the worker accepts a rules file that drops a rule key which has granted while
    # another rule takes over its products (docs/rules.md, "Rule keys: renaming a rule").
    credits_allow_dropped_rule_keys: bool = False

    # Encrypted histories (issue 15 §3; docs/operator/encrypted-histories.md): off while both
    # unset.
    # CREDITS_ENCRYPTION_KEYS: comma-separated `id:base64 of 32 bytes`; the key that
    # CREDITS_ENCRYPTION_KEY_ID names encrypts new payloads, every listed key decrypts.
    credits_encryption_keys: SecretStr | None = None
    credits_encryption_key_id: str | None = None

    @field_validator("credits_encryption_keys", "credits_encryption_key_id", mode="before")
    @classmethod
    def _blank_encryption_setting_is_unset(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _encryption_keys_are_usable(self) -> Settings:
        # Checked here, so the API, the worker and the CLI refuse a bad key at start-up
        # (SettingsError naming the setting), not at their first payload.
        if self.credits_encryption_keys is None and self.credits_encryption_key_id is None:
            return self  # off
        encryption_keys(self)
        return self

    @field_validator(
        "polar_access_token", "polar_webhook_secret", "credits_operator_token", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "polar_api_url", "credits_rules_file", "polar_rate_limit_per_minute", mode="before"
    )
    @classmethod
    def _blank_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("polar_api_url")
    @classmethod
    def _url_is_host_root(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # polar-sdk request paths already begin with /v1/.
        return value.rstrip("/")

    def require(self, *env_names: str) -> Settings:
        for env_name in env_names:
            if getattr(self, env_name.lower()) is None:
                hint = _HINTS.get(env_name, "")
                raise SettingsError(f"{env_name} is not set: set it to {hint}.")
        rules_file = self.credits_rules_file
        if "CREDITS_RULES_FILE" in env_names and not (rules_file and rules_file.is_file()):
            raise SettingsError(
                f"CREDITS_RULES_FILE points to {self.credits_rules_file}, which is not a file."
            )
        return self

    @property
    def polar_budget_per_minute(self) -> int:
        """Calls a minute the workers may make together: the setting, else 60% of the
        server's limit (production 500, sandbox 100), leaving the rest to the merchant."""
        if self.polar_rate_limit_per_minute is not None:
            return self.polar_rate_limit_per_minute
        return SERVER_RATE_LIMITS[self.polar_server] * 60 // 100

    @property
    def polar_target(self) -> str:
        """Where Polar calls go, for logs: never includes the token."""
        return self.polar_api_url or self.polar_server

    # -- Operators by name (issue 15 §5; docs/operator/api-and-cli.md, "Turning it on") --
    # Named operator tokens with a scope, beside CREDITS_OPERATOR_TOKEN (a write token named
    # "operator"): "name:scope:token,..." or a JSON list of {"name", "scope", "token"}; and/or
    # a TOML file of [[tokens]] tables. Parsed and checked by polar_credits/operators.py.
    credits_operator_tokens: SecretStr | None = None
    credits_operator_tokens_file: Path | None = None

    @field_validator("credits_operator_tokens", "credits_operator_tokens_file", mode="before")
    @classmethod
    def _blank_operator_tokens_are_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # Connecting to Temporal (issue 15 §1, polar_credits/temporal_client/; the rest comes
    # from temporalio's TEMPORAL_* variables and profile file): how long a process waits at
    # start-up for Temporal to answer and confirm the namespace before it gives up.
    credits_temporal_connect_timeout_seconds: float = Field(default=10.0, gt=0)


def load_settings(*required: str) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"Invalid setting {problems}") from None
    return settings.require(*required)


# The encryption keys of polar_credits/codec.py, parsed here so that a bad key stops start-up
# (the validator above) with a message naming the setting.
KEY_BYTES = 32  # AES-256
KEYS_SETTING = "CREDITS_ENCRYPTION_KEYS"
KEY_ID_SETTING = "CREDITS_ENCRYPTION_KEY_ID"
KEY_FORMAT = "comma-separated id:key pairs, each key the base64 of 32 random bytes"
GENERATE = 'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'


@dataclasses.dataclass(frozen=True)
class EncryptionKeys:
    active_id: str
    keys: Mapping[str, bytes] = dataclasses.field(repr=False)


def encryption_keys(settings: Settings) -> EncryptionKeys | None:
    """The configured keys, or None when encryption is off (both settings unset).

    Raises SettingsError naming the setting to fix; never shows a key."""
    raw = settings.credits_encryption_keys
    active_id = settings.credits_encryption_key_id
    if raw is None and active_id is None:
        return None
    if raw is None:
        raise SettingsError(
            f"{KEY_ID_SETTING} is set but {KEYS_SETTING} is not: set {KEYS_SETTING} to "
            f"{KEY_FORMAT} (generate one with: {GENERATE}), or unset {KEY_ID_SETTING} to "
            "turn encryption off."
        )
    keys = _parse_keys(raw.get_secret_value())
    if active_id is None:
        raise SettingsError(
            f"{KEYS_SETTING} is set but {KEY_ID_SETTING} is not: set it to the id of the key "
            f"that encrypts new payloads (one of: {', '.join(keys)})."
        )
    if active_id not in keys:
        raise SettingsError(
            f"{KEY_ID_SETTING} is {active_id!r}, which is not among the ids in "
            f"{KEYS_SETTING} ({', '.join(keys)}): add that key, or name one of these."
        )
    return EncryptionKeys(active_id=active_id, keys=keys)


def _parse_keys(raw: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(raw.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        key_id, colon, encoded = entry.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        where = f"{KEYS_SETTING}: entry {position}"
        if not colon or not key_id or not encoded:
            raise SettingsError(f"{where} is not of the form id:key; expected {KEY_FORMAT}.")
        where = f"{KEYS_SETTING}: key {key_id!r}"
        if key_id in keys:
            raise SettingsError(
                f"{where} is given twice; each id must name one key (a payload names its key "
                "by id)."
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(
                f"{where} is not valid base64; generate one with: {GENERATE}"
            ) from None
        if len(key) != KEY_BYTES:
            raise SettingsError(
                f"{where} is {len(key)} bytes, not {KEY_BYTES} (AES-256); generate one "
                f"with: {GENERATE}"
            )
        keys[key_id] = key
    if not keys:
        raise SettingsError(f"{KEYS_SETTING} holds no key; expected {KEY_FORMAT}.")
    return keys
