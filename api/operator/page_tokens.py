"""The page tokens of `GET /grants`: Temporal's own token, sealed by the API.

Temporal answers a page token it never issued with an internal error that its client
retries for ~10 s (so the caller got a 503 "Temporal is unavailable" for its own mistake),
and a token that is not base64 at all used to list the first page silently. So the API hands
out its own tokens: base64url of a version byte, an HMAC of Temporal's token, then Temporal's
token. A token the API did not issue is refused at once with 422, before Temporal is asked
anything. (A token is not bound to its filters: like Temporal's, it is meant for the same
listing, and Temporal takes it with others.)

The HMAC key is derived from POLAR_WEBHOOK_SECRET, which every API replica has: a token
issued by one replica is accepted by the others. Rotating that secret ends the pages in
flight (a 422: list again from the first page).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

VERSION = b"\x01"
MAC_BYTES = 16
_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")
_PURPOSE = b"polar-credits: GET /grants page tokens, v1"


class PageTokenError(ValueError):
    """Not a page token this API issued for this listing."""


def page_key(webhook_secret: str) -> bytes:
    return hmac.new(webhook_secret.encode(), _PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, temporal_token: bytes) -> bytes:
    return hmac.new(key, VERSION + temporal_token, hashlib.sha256).digest()[:MAC_BYTES]


def seal(key: bytes, temporal_token: bytes) -> str:
    sealed = VERSION + _mac(key, temporal_token) + temporal_token
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def unseal(key: bytes, page_token: str) -> bytes:
    """Temporal's token inside `page_token`; PageTokenError unless this API sealed it."""
    if not _ALPHABET.match(page_token):
        raise PageTokenError("not base64url")
    try:
        sealed = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PageTokenError("not base64url") from exc
    version, mac = sealed[:1], sealed[1 : 1 + MAC_BYTES]
    temporal_token = sealed[1 + MAC_BYTES :]
    if version != VERSION or not temporal_token:
        raise PageTokenError("not a page token of this API")
    if not hmac.compare_digest(mac, _mac(key, temporal_token)):
        raise PageTokenError("not issued by this API")
    return temporal_token
