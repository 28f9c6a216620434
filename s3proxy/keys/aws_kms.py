"""``aws-kms``: AWS KMS (or LocalStack / moto) through aiobotocore.

* ``GenerateDataKey`` (KeySpec AES_256), ``Decrypt`` and ``ReEncrypt`` always
  pass ``KeyId`` and the ``EncryptionContext``: KMS authenticates the context
  as AAD, so a wrapped DEK only unwraps with the context it was made for.
* The wrapped key records the key ARN KMS answered with (not the alias the
  configuration named), so old objects stay readable after an alias moves.
* One client, created lazily on first use and closed by :meth:`close`.
  botocore's own retries are off; :meth:`_call` retries throttling, 5xx and
  connection errors with exponential backoff and full jitter, bounded by
  ``max_attempts`` and ``retry_budget_seconds``, then raises KeyUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import botocore.exceptions as boto_exc
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from .base import (
    DEK_BYTES,
    DataKey,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyBackend,
    KeyDisabled,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
    check_context,
)
from .settings import AwsKmsSettings

ALGORITHM = "KMS"

# KMS error code -> permanent error class.
_PERMANENT_ERRORS: Mapping[str, type[KeyServiceError]] = {
    "DisabledException": KeyDisabled,
    "KMSInvalidStateException": KeyDisabled,
    "NotFoundException": KeyNotFound,
    "InvalidCiphertextException": InvalidWrappedKey,
    "IncorrectKeyException": InvalidWrappedKey,
    "AccessDeniedException": KeyAccessDenied,
    "InvalidKeyUsageException": KeyAccessDenied,
    "InvalidGrantTokenException": KeyAccessDenied,
    "UnrecognizedClientException": KeyAccessDenied,
    "InvalidSignatureException": KeyAccessDenied,
    "SignatureDoesNotMatch": KeyAccessDenied,
    "ExpiredTokenException": KeyAccessDenied,
    "InvalidClientTokenId": KeyAccessDenied,
}

# Error codes worth retrying whatever their HTTP status (plus any 5xx).
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    boto_exc.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, ...
    boto_exc.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ...
    aiohttp.ClientError,
    TimeoutError,
)

_CREDENTIAL_ERRORS: tuple[type[BaseException], ...] = (
    boto_exc.NoCredentialsError,
    boto_exc.PartialCredentialsError,
    boto_exc.CredentialRetrievalError,
)


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


class AwsKmsBackend(KeyBackend):
    name = "aws-kms"

    def __init__(
        self,
        settings: AwsKmsSettings,
        *,
        default_key_id: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        session: AioSession | None = None,
    ):
        self._settings = settings
        self._session = session  # a shared botocore session saves re-loading service models
        self.default_key_id: str | None = default_key_id or settings.key_id
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.attempts = 0  # HTTP attempts made (for tests and metrics)

    @classmethod
    def from_settings(cls, settings: AwsKmsSettings) -> AwsKmsBackend:
        return cls(settings)

    # -- client lifecycle -------------------------------------------------

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._closed:
                raise KeyUnavailable("the AWS KMS backend is closed")
            if self._client is None:
                s = self._settings
                session = self._session
                if session is None:
                    session = AioSession(profile=s.profile) if s.profile else AioSession()
                config = AioConfig(
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=s.connect_timeout,
                    read_timeout=s.read_timeout,
                    max_pool_connections=s.max_pool_connections,
                )
                kwargs: dict[str, Any] = {"config": config, "verify": s.verify_tls}
                if s.region:
                    kwargs["region_name"] = s.region
                if s.endpoint_url:
                    kwargs["endpoint_url"] = s.endpoint_url
                if s.access_key_id is not None and s.secret_access_key is not None:
                    kwargs["aws_access_key_id"] = s.access_key_id
                    kwargs["aws_secret_access_key"] = s.secret_access_key.get_secret_value()
                    if s.session_token is not None:
                        kwargs["aws_session_token"] = s.session_token.get_secret_value()
                stack = contextlib.AsyncExitStack()
                try:
                    self._client = await stack.enter_async_context(session.create_client("kms", **kwargs))
                except boto_exc.NoRegionError:
                    await stack.aclose()
                    raise KeyUnavailable(
                        "AWS KMS region unknown: set keys.aws_kms.region or S3PROXY_KMS_REGION"
                    ) from None
                self._stack = stack
        return self._client

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- one KMS call with retries ---------------------------------------

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        s = self._settings
        client = await self._get_client()
        deadline = self._clock() + s.retry_budget_seconds
        reason = "no attempt"
        for attempt in range(s.max_attempts):
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                self.attempts += 1
                async with asyncio.timeout(remaining):
                    result: dict[str, Any] = await getattr(client, operation)(**params)
                return result
            except boto_exc.ClientError as exc:
                reason = self._classify(operation, exc)
            except _CREDENTIAL_ERRORS as exc:
                raise KeyAccessDenied(f"AWS KMS credentials unavailable: {type(exc).__name__}") from None
            except _CONNECTION_ERRORS as exc:
                reason = f"{type(exc).__name__}: {_short(str(exc))}"
            if attempt + 1 >= s.max_attempts:
                break
            delay = self._jitter() * min(s.backoff_max_seconds, s.backoff_base_seconds * (2**attempt))
            if self._clock() + delay >= deadline:
                break
            await self._sleep(delay)
        raise KeyUnavailable(f"AWS KMS {operation} unavailable ({reason})")

    @staticmethod
    def _classify(operation: str, exc: boto_exc.ClientError) -> str:
        """Raise the permanent error for ``exc`` or return a retry reason."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = _short(str(error.get("Message", "")))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _RETRYABLE_CODES or status >= 500:
            return f"{code} (HTTP {status})"
        error_class = _PERMANENT_ERRORS.get(code, KeyServiceError)
        raise error_class(f"AWS KMS {operation}: {code}: {message}".rstrip(": ")) from None

    # -- KeyBackend -------------------------------------------------------

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        response = await self._call(
            "generate_data_key", KeyId=key_id, KeySpec="AES_256", EncryptionContext=check_context(context)
        )
        plaintext = bytearray(response["Plaintext"])
        if len(plaintext) != DEK_BYTES:
            raise KeyServiceError("AWS KMS returned a data key of the wrong size")
        wrapped = WrappedKey(
            backend=self.name,
            key_id=str(response.get("KeyId") or key_id),
            algorithm=ALGORITHM,
            blob=bytes(response["CiphertextBlob"]),
        )
        return DataKey(plaintext=plaintext, wrapped=wrapped)

    async def wrap_data_key(
        self, key_id: str, dek: bytes | bytearray, context: Mapping[str, str]
    ) -> WrappedKey:
        if len(dek) != DEK_BYTES:
            raise ValueError(f"data keys are {DEK_BYTES} bytes")
        response = await self._call(
            "encrypt", KeyId=key_id, Plaintext=bytes(dek), EncryptionContext=check_context(context)
        )
        return WrappedKey(
            backend=self.name,
            key_id=str(response.get("KeyId") or key_id),
            algorithm=ALGORITHM,
            blob=bytes(response["CiphertextBlob"]),
        )

    def _check_wrapped(self, wrapped: WrappedKey) -> None:
        if wrapped.backend != self.name:
            raise InvalidWrappedKey(f"wrapped key belongs to backend {wrapped.backend!r}, not 'aws-kms'")
        if wrapped.algorithm != ALGORITHM:
            raise InvalidWrappedKey(f"unsupported AWS KMS wrap algorithm {wrapped.algorithm!r}")
        if not wrapped.blob:
            raise InvalidWrappedKey("empty wrapped data key")

    async def decrypt_data_key(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        self._check_wrapped(wrapped)
        response = await self._call(
            "decrypt",
            CiphertextBlob=wrapped.blob,
            KeyId=wrapped.key_id,
            EncryptionContext=check_context(context),
        )
        plaintext = bytearray(response["Plaintext"])
        if len(plaintext) != DEK_BYTES:
            raise InvalidWrappedKey("AWS KMS returned a data key of the wrong size")
        return plaintext

    async def rewrap(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        to_key_id: str,
        to_context: Mapping[str, str],
    ) -> WrappedKey:
        self._check_wrapped(wrapped)
        response = await self._call(
            "re_encrypt",
            CiphertextBlob=wrapped.blob,
            SourceKeyId=wrapped.key_id,
            SourceEncryptionContext=check_context(context),
            DestinationKeyId=to_key_id,
            DestinationEncryptionContext=check_context(to_context),
        )
        return WrappedKey(
            backend=self.name,
            key_id=str(response.get("KeyId") or to_key_id),
            algorithm=ALGORITHM,
            blob=bytes(response["CiphertextBlob"]),
        )

    async def check(self) -> None:
        if self.default_key_id is None:
            return  # a read-only (migration) backend: no key to describe, nothing cheap to ask
        response = await self._call("describe_key", KeyId=self.default_key_id)
        meta = response.get("KeyMetadata", {})
        state = meta.get("KeyState", "Enabled" if meta.get("Enabled", True) else "Disabled")
        if state != "Enabled":
            raise KeyDisabled(f"AWS KMS key {meta.get('Arn', self.default_key_id)} is {state}")
        if meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT" or meta.get(
            "KeySpec", "SYMMETRIC_DEFAULT"
        ) != "SYMMETRIC_DEFAULT":
            raise KeyAccessDenied(
                f"AWS KMS key {meta.get('Arn', self.default_key_id)} is not a symmetric encryption key"
            )
