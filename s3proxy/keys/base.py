"""The key-backend interface shared by every backend (local, aws-kms, pkcs11).

A backend wraps and unwraps 32-byte data keys (DEKs) under a key-encryption
key that never leaves it.  Plaintext DEKs travel as ``bytearray`` so that the
cache can zero them on eviction (best effort in Python).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

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

    async def check(self) -> None:  # noqa: B027 - optional readiness probe
        """Raise KeyServiceError when the service is not reachable."""

    async def close(self) -> None:  # noqa: B027
        """Release connections, sessions, thread pools."""
