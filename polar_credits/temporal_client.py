"""The one place every process (API, worker, CLI, demo) builds its Temporal client.

Where to connect comes from temporalio's environment configuration (`temporalio.envconfig`:
a TOML profile file and TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TEMPORAL_TLS_*, TEMPORAL_GRPC_META_*, TEMPORAL_PROFILE), so Temporal Cloud, a self-hosted
cluster and the dev server differ only by settings. Settings.temporal_address and
temporal_namespace, when set (from the same variables, or in code by tests), win over the
profile. The payload codec (encrypted histories) is chosen here too, so no process can write
a payload the others cannot read.

A process resolves its connection once at start-up (`resolve_temporal`): TLS files are read
and checked there, so a missing or unreadable certificate, a malformed profile file or an
unknown profile stops start-up before anything connects. `connect_temporal` then connects
within CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS and checks that the namespace exists.
Every failure is one message that starts with the setting to fix; none holds a secret.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sys
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS, DataSource
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from polar_credits.codec import data_converter
from polar_credits.settings import Settings, SettingsError

_T = TypeVar("_T")
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}  # what the SDK's TEMPORAL_TLS parser accepts


class TemporalUnreachable(Exception):
    """Temporal did not answer (nothing listening, no route, no answer in time): it may be
    down or the address wrong. The message names TEMPORAL_ADDRESS."""


@dataclass(frozen=True)
class TemporalConnection:
    """Where and how a process connects, resolved once at start-up. Its repr and
    `describe()` hold no secret: the API key, TLS material and gRPC metadata are left out."""

    address: str
    namespace: str
    tls: bool | TLSConfig = field(default=False, repr=False)
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Which setting gave each value ("address", "client_cert"...): the names errors quote.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)
    profile: str | None = None  # the profile file's profile, when a file was read

    def describe(self) -> str:
        """For logs: "host:port (namespace 'x', TLS with a client certificate, API key)"."""
        parts = [f"namespace {self.namespace!r}"]
        if isinstance(self.tls, TLSConfig):
            parts.append("TLS with a client certificate" if self.tls.client_cert else "TLS")
        elif self.tls:
            parts.append("TLS")
        if self.api_key:
            parts.append("API key")
        if self.profile:
            parts.append(f"profile {self.profile!r}")
        return f"{self.address} ({', '.join(parts)})"

    def source(self, key: str) -> str:
        """The setting that gave `key` (a variable, or a key of the profile file)."""
        if key in self.sources:
            return self.sources[key]
        return _ENV_NAMES[key] + ("_PATH" if key in _FILE_SOURCES else "")

    def applied_to(self, settings: Settings) -> Settings:
        """`settings` with the address and namespace actually used (links to the UI, logs)."""
        return settings.model_copy(
            update={"temporal_address": self.address, "temporal_namespace": self.namespace}
        )


# The environment variable behind each value (temporalio/envconfig, sdk-core's env names).
_ENV_NAMES = {
    "address": "TEMPORAL_ADDRESS",
    "namespace": "TEMPORAL_NAMESPACE",
    "api_key": "TEMPORAL_API_KEY",
    "tls": "TEMPORAL_TLS",
    "server_name": "TEMPORAL_TLS_SERVER_NAME",
    "client_cert": "TEMPORAL_TLS_CLIENT_CERT",
    "client_key": "TEMPORAL_TLS_CLIENT_KEY",
    "server_ca_cert": "TEMPORAL_TLS_SERVER_CA_CERT",
}
_FILE_SOURCES = ("client_cert", "client_key", "server_ca_cert")


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
        tls = _tls_config(profile.tls, env, sources, in_file if from_file else None)
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


def _tls_config(
    tls: ClientConfigTLS,
    env: Mapping[str, str],
    sources: dict[str, str],
    in_file: str | None,
) -> bool | TLSConfig:
    if tls.disabled is True:
        return False
    values = {
        "client_cert": tls.client_cert,
        "client_key": tls.client_private_key,
        "server_ca_cert": tls.server_root_ca_cert,
    }
    read: dict[str, bytes | None] = {}
    for key, value in values.items():
        sources[key] = _file_source_name(key, value, env, in_file)
        read[key] = _read(value, sources[key])
    if bool(read["client_cert"]) != bool(read["client_key"]):
        missing, given = (
            ("client_key", "client_cert") if read["client_cert"] else ("client_cert", "client_key")
        )
        raise SettingsError(
            f"{_ENV_NAMES[missing]}_PATH: not set, while {sources[given]} is: mTLS needs both "
            "the client certificate and its private key."
        )
    _check_pem(read, sources)
    return TLSConfig(
        domain=tls.server_name or None,
        server_root_ca_cert=read["server_ca_cert"],
        client_cert=read["client_cert"],
        client_private_key=read["client_key"],
    )


def _file_source_name(
    key: str, value: DataSource | None, env: Mapping[str, str], in_file: str | None
) -> str:
    base = _ENV_NAMES[key]
    suffix = "_PATH" if isinstance(value, Path) or value is None else "_DATA"
    if f"{base}_PATH" in env:
        return f"{base}_PATH"
    if f"{base}_DATA" in env:
        return f"{base}_DATA"
    if in_file is not None and value is not None:
        return f"tls.{key}{suffix.lower()} in {in_file}"
    return f"{base}{suffix}"


def _read(value: DataSource | None, name: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Path):
        try:
            return value.read_bytes()
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {value}: {exc.strerror or exc}.") from None
    return value.encode() if isinstance(value, str) else value


def _check_pem(read: Mapping[str, bytes | None], sources: Mapping[str, str]) -> None:
    """Certificates and the key parse, and the key is the certificate's: a mistake here
    would otherwise surface as an obscure handshake failure."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs: dict[str, list[x509.Certificate]] = {}
    for key in ("client_cert", "server_ca_cert"):
        if pem := read[key]:
            try:
                certs[key] = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise SettingsError(
                    f"{sources[key]}: not a PEM certificate (-----BEGIN CERTIFICATE-----)."
                ) from None
    if read["client_key"]:
        try:
            private_key = serialization.load_pem_private_key(read["client_key"], password=None)
        except (ValueError, TypeError) as exc:
            why = "it is encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
            raise SettingsError(
                f"{sources['client_key']}: {why}; give the unencrypted PEM key of the client "
                "certificate."
            ) from None
        public = certs["client_cert"][0].public_key()
        if private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise SettingsError(
                f"{sources['client_key']}: this key does not belong to the client certificate "
                f"({sources['client_cert']}): give the key the certificate was issued for."
            )


# The SDK's core (Rust) writes its own warnings to stderr, coloured, around every formatter
# of the service; forwarded, they are records of this logger like any other line.
CORE_LOGGER = "temporalio.core"


def core_logging() -> LoggingConfig:
    """The core's warnings and errors, forwarded to Python's logging (logger
    `temporalio.core`), so they reach the service's formatters: text lines without colour
    escapes, or JSON objects with CREDITS_LOG_FORMAT=json."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(
            logger=logging.getLogger(CORE_LOGGER), append_target_to_name=False
        ),
    )


@functools.cache
def logging_runtime() -> Runtime:
    """The runtime of every client this service connects without one of its own (the API,
    the CLI, the demo): the SDK's default, except for where the core's logs go. One per
    process, as the SDK expects."""
    return Runtime(telemetry=TelemetryConfig(logging=core_logging()))


async def connect_temporal(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    lazy: bool = False,
    connection: TemporalConnection | None = None,
) -> Client:
    """A client for `settings` (or the `connection` already resolved from them).

    Not lazy: connects within CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS and checks the
    namespace; raises SettingsError (a setting that can never work) or TemporalUnreachable,
    each naming the setting to fix. Lazy: connects on first use, so a process can start
    while Temporal comes up; only the resolution can fail here."""
    connection = connection or resolve_temporal(settings)
    connect = Client.connect(
        connection.address,
        namespace=connection.namespace,
        api_key=connection.api_key,
        tls=connection.tls,
        rpc_metadata=connection.rpc_metadata,
        data_converter=data_converter(settings),
        runtime=runtime or logging_runtime(),
        lazy=lazy,
    )
    if lazy:
        return await connect
    seconds = settings.credits_temporal_connect_timeout_seconds

    async def connect_and_check() -> Client:
        client = await connect
        await _check_namespace(client, connection, seconds)
        return client

    return await _explained(connect_and_check(), connection, seconds)


async def check_temporal(
    client: Client, connection: TemporalConnection, settings: Settings
) -> None:
    """Ask `client` (a lazy one too: this connects it) for its namespace, within
    CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS; raises SettingsError or TemporalUnreachable
    naming the setting to fix, as `connect_temporal` does."""
    seconds = settings.credits_temporal_connect_timeout_seconds
    await _explained(_check_namespace(client, connection, seconds), connection, seconds)


async def _check_namespace(client: Client, connection: TemporalConnection, seconds: float) -> None:
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=connection.namespace),
        timeout=timedelta(seconds=seconds),
    )


async def _explained(work: Awaitable[_T], connection: TemporalConnection, seconds: float) -> _T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise TemporalUnreachable(
            f"{connection.source('address')}: no answer from Temporal at {connection.address} "
            f"within {seconds:g} s (CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS): check the "
            "address and that the server is up."
        ) from None
    except RPCError as exc:
        raise _rpc_error(connection, exc) from None
    except RuntimeError as exc:  # how the SDK reports a failed connect
        raise connect_error(connection, str(exc)) from None


def _rpc_error(connection: TemporalConnection, exc: RPCError) -> Exception:
    """describe_namespace refused: the namespace, or the credentials for it."""
    where = f"Temporal at {connection.address}"
    if exc.status == RPCStatusCode.NOT_FOUND:
        return SettingsError(
            f"{connection.source('namespace')}: {where} has no namespace "
            f"{connection.namespace!r}: set it to an existing namespace."
        )
    if exc.status == RPCStatusCode.UNAUTHENTICATED:
        return _unauthenticated(connection, exc.message)
    if exc.status == RPCStatusCode.PERMISSION_DENIED:
        return SettingsError(
            f"{connection.source('namespace')}: {where} does not let these credentials use "
            f"namespace {connection.namespace!r} (permission denied: {exc.message}): check the "
            "namespace, and that the API key or client certificate is granted access to it."
        )
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return TemporalUnreachable(
            f"{connection.source('address')}: {where} is unavailable ({exc.message}): check the "
            "address and that the server is up."
        )
    return SettingsError(
        f"{connection.source('address')}: {where} refused the namespace check "
        f"({exc.status.name if exc.status else 'error'}: {exc.message})."
    )


def _unauthenticated(connection: TemporalConnection, detail: str) -> SettingsError:
    if connection.api_key:
        return SettingsError(
            f"{connection.source('api_key')}: Temporal at {connection.address} refused the API "
            f"key (unauthenticated: {detail}): give a valid, unexpired API key."
        )
    return SettingsError(
        f"{_ENV_NAMES['api_key']}: Temporal at {connection.address} requires credentials "
        f"(unauthenticated: {detail}): set TEMPORAL_API_KEY, or a client certificate "
        "(TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH)."
    )


def _status_message(text: str) -> str:
    found = re.search(r'message: "((?:[^"\\]|\\.)*)"', text)
    return found.group(1) if found else ""


def connect_error(connection: TemporalConnection, text: str) -> Exception:
    """The SDK's connect failure (a RuntimeError whose text comes from its Rust core), as
    one message naming the setting to fix: SettingsError, or TemporalUnreachable."""
    address = connection.address
    has_cert = isinstance(connection.tls, TLSConfig) and connection.tls.client_cert
    tls_on = bool(connection.tls)
    if "Unauthenticated" in text:
        return _unauthenticated(connection, _status_message(text) or "no detail")
    if "PermissionDenied" in text:
        at_fault = connection.source("api_key" if connection.api_key else "client_cert")
        return SettingsError(
            f"{at_fault}: Temporal at {address} denied access ({_status_message(text)}): check "
            "that these credentials are granted access to the namespace."
        )
    if "NotValidForName" in text:
        return SettingsError(
            f"{connection.source('server_name')}: the certificate of the server at {address} "
            "is not issued for the name this client checks: set TEMPORAL_TLS_SERVER_NAME to a "
            "name in the server's certificate."
        )
    if "InvalidCertificate" in text or "UnknownIssuer" in text:
        return SettingsError(
            f"{connection.source('server_ca_cert')}: the server at {address} presented a "
            "certificate this client does not trust: set TEMPORAL_TLS_SERVER_CA_CERT_PATH to "
            "the CA that signed it."
        )
    if "InvalidContentType" in text or "CorruptMessage" in text or "InvalidMessage" in text:
        return SettingsError(
            f"{connection.source('tls')}: the server at {address} does not speak TLS: "
            "set TEMPORAL_TLS=false (and no API key or certificate), or check the address."
        )
    if "KeyMismatch" in text or "PrivateKeyParseError" in text:
        return SettingsError(
            f"{connection.source('client_key')}: the client key was refused "
            "(does not match the certificate, or is not a PEM key)."
        )
    if "tcp connect error" in text or "dns error" in text or "Connection refused" in text:
        why = "no such host" if "dns error" in text else "nothing answers there"
        return TemporalUnreachable(
            f"{connection.source('address')}: cannot reach Temporal at {address} ({why}): "
            "check the address and that the server is up."
        )
    if "after connection" in text or "connection closed" in text or "broken pipe" in text:
        # The TCP and (if any) TLS handshakes passed, then the server hung up on the first
        # call: what a TLS server does to a client without an acceptable certificate, or to
        # a client that does not speak TLS.
        if not tls_on:
            return SettingsError(
                f"{connection.source('tls')}: the server at {address} closed the connection: "
                "it probably expects TLS: set TEMPORAL_TLS=true (with a client certificate or "
                "an API key, as the server requires)."
            )
        if has_cert:
            return SettingsError(
                f"{connection.source('client_cert')}: the server at {address} closed the "
                "connection after the TLS handshake: it does not accept this client "
                "certificate (not signed by a CA it trusts?)."
            )
        return SettingsError(
            f"TEMPORAL_TLS_CLIENT_CERT_PATH: the server at {address} closed the connection "
            "after the TLS handshake: it probably requires a client certificate (mTLS): set "
            "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH."
        )
    detail = " ".join(text.split())[:300]
    return TemporalUnreachable(
        f"{connection.source('address')}: cannot connect to Temporal at {address}: {detail}"
    )
