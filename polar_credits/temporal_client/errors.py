"""Start-up errors: a connection that can never work (SettingsError) vs Temporal down."""

from __future__ import annotations

import re

from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from polar_credits.settings import SettingsError
from polar_credits.temporal_client.connection import ENV_NAMES, TemporalConnection


class TemporalUnreachable(Exception):
    """Temporal did not answer (nothing listening, no route, no answer in time): it may be
    down or the address wrong. The message names TEMPORAL_ADDRESS."""


def rpc_error(connection: TemporalConnection, exc: RPCError) -> Exception:
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
        f"{ENV_NAMES['api_key']}: Temporal at {connection.address} requires credentials "
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
