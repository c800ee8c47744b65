"""How payloads are written to Temporal: the default converter, or encrypted with AES-256-GCM.

Why: a history holds what a run was given and what it decided (order and customer ids,
amounts, the metadata its rules read). On a shared cluster or Temporal Cloud, whoever can
read the database can read those. With CREDITS_ENCRYPTION_KEYS set, every payload (inputs,
results, activity arguments, memos, failure messages, summaries) is encrypted before it
leaves the process, and only processes holding the key read it back; operators read runs in
the Temporal UI through the API's codec endpoint (api/codec.py). Search attributes are not
payloads the codec sees: they stay readable, so runs stay findable
(docs/operator/encrypted-histories.md).

Each encrypted payload names its key (metadata `encryption-key-id`), so keys can be added
without rewriting history: the active key encrypts, any configured key decrypts. A payload
written before encryption was turned on has no such marker and is read as it is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload

from polar_credits.settings import (
    KEYS_SETTING,
    EncryptionKeys,
    Settings,
    encryption_keys,
)

# The encoding Temporal's own encryption samples (and the UI's codec docs) use.
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12  # GCM's standard nonce; random per payload


class PayloadDecryptionError(Exception):
    """A payload cannot be decrypted: its key is not configured, or it was altered.

    Raised, never swallowed: in a worker the workflow task fails and Temporal retries it,
    so the run resumes once the key is configured."""


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """AES-256-GCM over each whole payload (its metadata and data), under the active key.

    The key id is bound to the ciphertext as associated data, so a payload cannot be passed
    off as written under another key."""

    def __init__(self, keys: EncryptionKeys) -> None:
        # Imported here: a process with encryption off does not carry `cryptography` (~7 MiB).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._active_id = keys.active_id
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self._active_id.encode()
        sealed = self._ciphers[self._active_id].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was on: readable as it is
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key {key_id!r}, which is not in {KEYS_SETTING} "
                f"(configured: {', '.join(self._ciphers)}): add that key to read it"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        from cryptography.exceptions import InvalidTag

        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload under key {key_id!r} does not decrypt: it was altered, or the key "
                f"with that id in {KEYS_SETTING} is not the one that wrote it"
            ) from None
        return Payload.FromString(plain)


def payload_codec(settings: Settings) -> EncryptionCodec | None:
    """The codec for `settings`, or None when encryption is off; raises SettingsError."""
    keys = encryption_keys(settings)
    return EncryptionCodec(keys) if keys else None


def data_converter(settings: Settings) -> temporalio.converter.DataConverter:
    """The default converter, with the encryption codec when CREDITS_ENCRYPTION_KEYS is set.

    Failure messages and stack traces are moved into an encoded payload too (they can name
    an order), which the SDK and the UI's codec restore when reading."""
    codec = payload_codec(settings)
    if codec is None:
        return temporalio.converter.default()
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=codec,
        failure_converter_class=_EncodedFailureConverter,
    )


class _EncodedFailureConverter(temporalio.converter.DefaultFailureConverter):
    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)
