"""The key-backend interface shared by every backend (local, aws-kms, pkcs11).

A backend wraps and unwraps 32-byte data keys (DEKs) under a key-encryption
key that never leaves it.  Plaintext DEKs travel as ``bytearray`` so that the
cache can zero them on eviction (best effort in Python).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DEK_BYTES = 32


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored in object metadata: never secret."""

    backend: str  # registry name: "local", "aws-kms", "pkcs11", "sse-c"
    key_id: str  # key identifier within the backend
    algorithm: str  # wrap algorithm, e.g. "AES256-GCM", "KMS", "AES-KWP", "RSA-OAEP-SHA256"
    blob: bytes  # the wrapped DEK


@dataclass
class DataKey:
    """A plaintext DEK together with its wrapped form."""

    plaintext: bytearray
    wrapped: WrappedKey

    def __repr__(self) -> str:  # never show key material
        return f"DataKey(wrapped={self.wrapped.backend}:{self.wrapped.key_id})"


class KeyServiceError(Exception):
    """Base of every key failure.  ``s3_code``/``status`` map it to an S3 error.

    Messages never contain key material or secrets.
    """

    s3_code = "KMS.InternalFailure"
    status = 500
    retryable = False


class KeyUnavailable(KeyServiceError):
    """The key service could not be reached or throttled us (retryable)."""

    s3_code = "ServiceUnavailable"
    status = 503
    retryable = True


class KeyDisabled(KeyServiceError):
    s3_code = "KMS.DisabledException"
    status = 400


class KeyNotFound(KeyServiceError):
    s3_code = "KMS.NotFoundException"
    status = 400


class KeyAccessDenied(KeyServiceError):
    s3_code = "AccessDenied"
    status = 403


class InvalidWrappedKey(KeyServiceError):
    """The wrapped DEK does not unwrap: tampered, wrong key, or wrong context."""

    s3_code = "KMS.InvalidCiphertextException"
    status = 400


class KeyBackend(abc.ABC):
    """One key service.  Implementations are safe for concurrent use."""

    name: str

    @abc.abstractmethod
    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh random DEK and its wrapped form under ``key_id``, bound to ``context``."""

    @abc.abstractmethod
    async def decrypt_data_key(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        """Unwrap; raises InvalidWrappedKey on tamper / wrong key / wrong context."""

    @abc.abstractmethod
    async def rewrap(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        to_key_id: str,
        to_context: Mapping[str, str],
    ) -> WrappedKey:
        """Re-wrap a DEK under another key and/or context (KMS ReEncrypt where possible)."""

    async def wrap_data_key(
        self, key_id: str, dek: bytes | bytearray, context: Mapping[str, str]
    ) -> WrappedKey:
        """Wrap an existing DEK under ``key_id`` (cross-backend re-wrap, SSE migration).

        Optional: backends that cannot wrap caller-supplied keys keep this default.
        """
        raise KeyAccessDenied(f"the {self.name} backend cannot wrap an existing data key")

    async def check(self) -> None:  # noqa: B027 - optional readiness probe
        """Raise KeyServiceError when the service is not reachable."""

    async def close(self) -> None:  # noqa: B027
        """Release connections, sessions, thread pools."""


# --------------------------------------------------------------------------
# Additions shared by every backend (kept here so that the wire format of the
# authenticated data is defined in exactly one place).

WRAP_AAD_LABEL = b"s3proxy wrapped-dek v1\x00"


class KeyConfigError(ValueError):
    """The key configuration is unusable (raised at start-up, never per request).

    Messages name the offending setting or key id, never the secret itself.
    """


def check_context(context: Mapping[str, str]) -> dict[str, str]:
    """The encryption context as a plain ``dict[str, str]`` (raises TypeError otherwise)."""
    out: dict[str, str] = {}
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("encryption context keys and values must be str")
        out[k] = v
    return out


def canonical_json(value: object) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The canonical byte form of an encryption context (used as a cache key and in AADs)."""
    return canonical_json(check_context(context))


def wrap_aad(backend: str, key_id: str, algorithm: str, context: Mapping[str, str]) -> bytes:
    """Additional authenticated data binding a wrapped DEK to its key, algorithm and context.

    Every wrap that can carry AAD (AES-GCM) uses this; wraps that cannot
    (AES-KWP, RSA-OAEP) authenticate it with a MAC under a key derived from
    the DEK (see :func:`context_mac`).
    """
    return WRAP_AAD_LABEL + canonical_json(
        {"alg": algorithm, "backend": backend, "context": check_context(context), "key_id": key_id}
    )


CONTEXT_MAC_BYTES = 32


def context_mac(dek: bytes | bytearray, wrapped_dek: bytes, aad: bytes) -> bytes:
    """HMAC-SHA256 over ``aad || wrapped_dek`` under HKDF(DEK, "s3proxy context-mac v1").

    Binds the encryption context to wraps without AAD: whoever changes the
    context must know the DEK to recompute the tag.
    """
    mac_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"s3proxy context-mac v1"
    ).derive(bytes(dek))
    h = hmac.HMAC(mac_key, hashes.SHA256())
    h.update(len(aad).to_bytes(4, "big") + aad + wrapped_dek)
    return h.finalize()


def zeroize(buf: bytearray) -> None:
    """Overwrite ``buf`` in place with zeros (best effort: Python may hold copies)."""
    buf[:] = bytes(len(buf))
