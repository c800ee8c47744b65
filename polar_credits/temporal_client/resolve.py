"""Resolving the connection from temporalio's profile file, TEMPORAL_* variables and Settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from temporalio.envconfig import ClientConfigProfile
from temporalio.service import TLSConfig

from polar_credits.settings import Settings, SettingsError
from polar_credits.temporal_client.connection import TemporalConnection
from polar_credits.temporal_client.tls_files import tls_config

_TRUE, _FALSE = {"true", "1"}, {"false", "0"}  # what the SDK's TEMPORAL_TLS parser accepts


# What only a remote cluster needs; `dev_server_env` drops it.
_REMOTE_ONLY = (
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",  # and every TEMPORAL_TLS_*
    "TEMPORAL_GRPC_META_",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
)


def dev_server_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a process that talks to the local dev server in plaintext (`make run`'s
    children, the demo): without the API key, TLS, metadata and profile settings a shell may
    hold for another cluster, and with no profile file read (os.devnull: an empty one)."""
    kept = {k: v for k, v in env.items() if not k.startswith(_REMOTE_ONLY)}
    return {**kept, "TEMPORAL_CONFIG_FILE": os.devnull}


def default_config_file() -> Path:
    """Where temporalio looks for profiles when TEMPORAL_CONFIG_FILE is unset (its Rust core
    asks the `dirs` crate, which reads the process's own environment)."""
    if sys.platform == "darwin":
        base: str | Path = Path.home() / "Library" / "Application Support"
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "temporalio" / "temporal.toml"


def resolve_temporal(
    settings: Settings, env: Mapping[str, str] | None = None
) -> TemporalConnection:
    """Read the profile (file and TEMPORAL_* variables of `env`, the process's by default),
    apply the explicitly set Settings fields over it, and read and check the TLS files.

    Raises SettingsError naming the setting at fault; touches no network."""
    env = dict(os.environ if env is None else env)
    profile_name = env.get("TEMPORAL_PROFILE") or None
    config_file = env.get("TEMPORAL_CONFIG_FILE") or None
    file_label = config_file or str(default_config_file())
    if config_file and config_file != os.devnull and not Path(config_file).is_file():
        raise SettingsError(
            f"TEMPORAL_CONFIG_FILE: {config_file} is not a file: point it to your Temporal "
            "profile file (TOML), or unset it."
        )
    _check_flag(env, "TEMPORAL_TLS")
    if _check_flag(env, "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"):
        raise SettingsError(
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: not supported by this service's Temporal "
            "SDK; set TEMPORAL_TLS_SERVER_NAME to the name in the server's certificate instead."
        )
    try:
        profile = ClientConfigProfile.load(override_env_vars=env)
    except Exception as exc:  # the bridge's ConfigError: a bad file or an unknown profile
        if config_file is None and not default_config_file().is_file():
            file_label = f"any file (TEMPORAL_CONFIG_FILE is unset and {file_label} is absent)"
        raise _profile_error(str(exc), profile_name, file_label) from None

    if config_file is None:
        from_file = default_config_file().is_file()
    else:
        from_file = config_file != os.devnull
    in_file = f"profile {profile_name or 'default'!r} of {file_label}"

    def source(key: str, env_name: str, value: object) -> str:
        """The profile file's key when the value came from it, else the variable."""
        if env_name in env or not from_file or value is None:
            return env_name
        return f"{key} in {in_file}"

    sources = {
        "address": source("address", "TEMPORAL_ADDRESS", profile.address),
        "namespace": source("namespace", "TEMPORAL_NAMESPACE", profile.namespace),
        "api_key": source("api_key", "TEMPORAL_API_KEY", profile.api_key),
        "tls": source("tls", "TEMPORAL_TLS", profile.tls),
        "server_name": source(
            "tls.server_name",
            "TEMPORAL_TLS_SERVER_NAME",
            profile.tls.server_name if profile.tls else None,
        ),
    }
    explicit = settings.model_fields_set
    address = settings.temporal_address
    if "temporal_address" not in explicit and profile.address:
        address = profile.address
    elif "temporal_address" in explicit:
        sources["address"] = "TEMPORAL_ADDRESS"
    namespace = settings.temporal_namespace
    if "temporal_namespace" not in explicit and profile.namespace:
        namespace = profile.namespace
    elif "temporal_namespace" in explicit:
        sources["namespace"] = "TEMPORAL_NAMESPACE"

    tls: bool | TLSConfig = False
    if profile.tls is not None:
        tls = tls_config(profile.tls, env, sources, in_file if from_file else None)
    elif profile.api_key:
        tls = True  # an API key is only ever sent over TLS (the SDK's own default)
    return TemporalConnection(
        address=address,
        namespace=namespace,
        tls=tls,
        api_key=profile.api_key or None,
        rpc_metadata=dict(profile.grpc_meta),
        sources=sources,
        profile=(profile_name or "default") if from_file else None,
    )


def _check_flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name)
    if value is None or not value.strip():
        return False
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise SettingsError(f"{name}: {value!r} is not a boolean: set it to true or false.")


def _profile_error(message: str, profile_name: str | None, file_label: str) -> SettingsError:
    first_line = message.strip().splitlines()[0] if message.strip() else "unreadable"
    if "not found" in message.lower() and "profile" in message.lower():
        return SettingsError(
            f"TEMPORAL_PROFILE: no profile {profile_name or 'default'!r} in {file_label}: "
            "set TEMPORAL_PROFILE to one of its [profile.<name>] sections, or unset it."
        )
    return SettingsError(
        f"TEMPORAL_CONFIG_FILE: {file_label} is not a valid Temporal profile file "
        f"({first_line}): fix the file, or point TEMPORAL_CONFIG_FILE to another."
    )
