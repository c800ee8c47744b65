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

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping, Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload

from polar_credits.settings import Settings, SettingsError

# The encoding Temporal's own encryption samples (and the UI's codec docs) use.
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per payload
KEYS_SETTING = "CREDITS_ENCRYPTION_KEYS"
KEY_ID_SETTING = "CREDITS_ENCRYPTION_KEY_ID"
KEY_FORMAT = "comma-separated id:key pairs, each key the base64 of 32 random bytes"
GENERATE = 'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'


class PayloadDecryptionError(Exception):
    """A payload cannot be decrypted: its key is not configured, or it was altered.

    Raised, never swallowed: in a worker the workflow task fails and Temporal retries it,
    so the run resumes once the key is configured."""


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
