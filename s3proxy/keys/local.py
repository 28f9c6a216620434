"""``local``: master keys held by the proxy (development, tests, air-gapped setups).

Wrapped DEK blob: ``nonce (12) || AES-256-GCM(master, nonce, DEK, aad) (32 + 16)``
with ``aad = wrap_aad("local", key_id, "AES256-GCM", context)``.  A fresh random
nonce per wrap: a master key may wrap at most 2**32 DEKs (GCM's random-nonce
limit), far beyond any rotation period.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .base import (
    DEK_BYTES,
    DataKey,
    InvalidWrappedKey,
    KeyBackend,
    KeyConfigError,
    KeyNotFound,
    WrappedKey,
    check_context,
    wrap_aad,
    zeroize,
)
from .settings import LocalKeysSettings

ALGORITHM = "AES256-GCM"
NONCE_BYTES = 12
TAG_BYTES = 16
BLOB_BYTES = NONCE_BYTES + DEK_BYTES + TAG_BYTES
MASTER_KEY_BYTES = 32


def decode_master_key(key_id: str, encoded: str) -> bytearray:
    """base64 (standard or urlsafe) of exactly 32 bytes; errors name the id, never the key."""
    text = encoded.strip()
    try:
        raw = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"master key {key_id!r} is not valid base64") from None
    if len(raw) != MASTER_KEY_BYTES:
        raise KeyConfigError(
            f"master key {key_id!r} must be base64 of {MASTER_KEY_BYTES} bytes, got {len(raw)} bytes"
        )
    return bytearray(raw)


def read_master_key_file(path: Path) -> dict[str, str]:
    """``{"id": "base64", ...}`` JSON, or lines ``id=base64`` with '#' comments."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyConfigError(f"cannot read master key file {str(path)!r}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise KeyConfigError(f"master key file {str(path)!r} is not valid JSON") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise KeyConfigError(f"master key file {str(path)!r} must map key ids to base64 strings")
        return data
    keys: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, value = line.partition("=")
        if not sep or not key_id.strip():
            raise KeyConfigError(f"master key file {str(path)!r} line {lineno}: expected id=base64")
        keys[key_id.strip()] = value.strip()
    return keys


class LocalKeyBackend(KeyBackend):
    """A keyring of AES-256 master keys, by id."""

    name = "local"

    def __init__(self, master_keys: Mapping[str, bytes | bytearray], default_key_id: str | None = None):
        if not master_keys:
            raise KeyConfigError("the local key backend needs at least one master key")
        self._aead: dict[str, AESGCM] = {}
        for key_id, key in master_keys.items():
            if not key_id:
                raise KeyConfigError("master key ids must not be empty")
            if len(key) != MASTER_KEY_BYTES:
                raise KeyConfigError(f"master key {key_id!r} must be {MASTER_KEY_BYTES} bytes")
            self._aead[key_id] = AESGCM(bytes(key))
        if default_key_id is None:
            if "default" in self._aead:
                default_key_id = "default"
            elif len(self._aead) == 1:
                default_key_id = next(iter(self._aead))
            else:
                raise KeyConfigError("several local master keys: set keys.local.default_key_id")
        if default_key_id not in self._aead:
            raise KeyConfigError(f"default local key id {default_key_id!r} is not in the keyring")
        self.default_key_id: str | None = default_key_id

    @classmethod
    def from_settings(cls, settings: LocalKeysSettings) -> LocalKeyBackend:
        encoded: dict[str, str] = {}
        if settings.master_key_file is not None:
            encoded.update(read_master_key_file(settings.master_key_file))
        encoded.update({k: v.get_secret_value() for k, v in settings.master_keys.items()})
        decoded = {key_id: decode_master_key(key_id, value) for key_id, value in encoded.items()}
        try:
            return cls(decoded, settings.default_key_id)
        finally:
            for buf in decoded.values():
                zeroize(buf)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._aead)

    def _cipher(self, key_id: str) -> AESGCM:
        try:
            return self._aead[key_id]
        except KeyError:
            raise KeyNotFound(f"local master key {key_id!r} is not in the keyring") from None

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        dek = bytearray(os.urandom(DEK_BYTES))
        return DataKey(plaintext=dek, wrapped=await self.wrap_data_key(key_id, dek, context))

    async def wrap_data_key(
        self, key_id: str, dek: bytes | bytearray, context: Mapping[str, str]
    ) -> WrappedKey:
        if len(dek) != DEK_BYTES:
            raise ValueError(f"data keys are {DEK_BYTES} bytes")
        cipher = self._cipher(key_id)
        nonce = os.urandom(NONCE_BYTES)
        aad = wrap_aad(self.name, key_id, ALGORITHM, check_context(context))
        blob = nonce + cipher.encrypt(nonce, bytes(dek), aad)
        return WrappedKey(backend=self.name, key_id=key_id, algorithm=ALGORITHM, blob=blob)

    async def decrypt_data_key(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        if wrapped.backend != self.name:
            raise InvalidWrappedKey(f"wrapped key belongs to backend {wrapped.backend!r}, not 'local'")
        if wrapped.algorithm != ALGORITHM:
            raise InvalidWrappedKey(f"unsupported local wrap algorithm {wrapped.algorithm!r}")
        cipher = self._cipher(wrapped.key_id)
        if len(wrapped.blob) != BLOB_BYTES:
            raise InvalidWrappedKey("wrapped data key has the wrong length")
        aad = wrap_aad(self.name, wrapped.key_id, ALGORITHM, check_context(context))
        nonce, sealed = wrapped.blob[:NONCE_BYTES], wrapped.blob[NONCE_BYTES:]
        try:
            return bytearray(cipher.decrypt(nonce, sealed, aad))
        except InvalidTag:
            raise InvalidWrappedKey(
                "wrapped data key does not authenticate (tampered, wrong key or wrong context)"
            ) from None

    async def rewrap(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        to_key_id: str,
        to_context: Mapping[str, str],
    ) -> WrappedKey:
        self._cipher(to_key_id)  # fail before unwrapping
        dek = await self.decrypt_data_key(wrapped, context)
        try:
            return await self.wrap_data_key(to_key_id, dek, to_context)
        finally:
            zeroize(dek)

    async def close(self) -> None:
        self._aead.clear()
