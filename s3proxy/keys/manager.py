"""``KeyManager``: the one object the HTTP handlers ask for data keys.

It puts the pieces together: the key policy chooses the key, the data-key
cache saves backend calls, the backends wrap and unwrap, and every use is
written to the audit log and counted in metrics.  One manager lives on the
app (built by ``registry.build_key_manager``) and is closed with it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from . import sse_c
from .audit import AuditInfo, AuditLog
from .base import (
    DataKey,
    KeyAccessDenied,
    KeyBackend,
    KeyNotFound,
    KeyServiceError,
    WrappedKey,
    check_context,
    zeroize,
)
from .cache import DataKeyCache
from .policy import KeyPolicy

T = TypeVar("T")

__all__ = ["AuditInfo", "KeyManager"]


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        # One per call to a backend, whatever its outcome: with a cloud KMS, each is
        # a billed request (docs/DEPLOYMENT.md, "Key-service cost").  ``call`` as
        # in the two metrics below: generate_data_key, decrypt_data_key,
        # wrap_data_key, rewrap, check.
        self.calls = Counter(
            "s3proxy_key_service_calls",
            "Calls to the key service (billable requests with a cloud KMS), by backend and call",
            ["backend", "call"],
            registry=registry,
        )
        self.latency = Histogram(
            "s3proxy_key_backend_seconds",
            "Key-backend call latency",
            ["backend", "call"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.errors = Counter(
            "s3proxy_key_backend_errors",
            "Key-backend call errors",
            ["backend", "call", "error"],
            registry=registry,
        )


class KeyManager:
    def __init__(
        self,
        *,
        backends: Mapping[str, KeyBackend],
        write_backend: str,
        policy: KeyPolicy,
        cache: DataKeyCache,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ):
        if write_backend not in backends:
            raise ValueError(f"write backend {write_backend!r} is not among the backends")
        self._backends = dict(backends)
        self._write_backend = backends[write_backend]
        self.policy = policy
        self.cache = cache
        self.audit = audit if audit is not None else AuditLog(None)
        self._clock = clock
        self._metrics = _Metrics(registry) if registry is not None else None

    @property
    def write_backend(self) -> KeyBackend:
        return self._write_backend

    @property
    def backends(self) -> Mapping[str, KeyBackend]:
        return dict(self._backends)

    # -- helpers --------------------------------------------------------------

    def _ms(self, started: float) -> float:
        return (self._clock() - started) * 1000.0

    async def _backend_call(
        self,
        info: AuditInfo | None,
        backend: KeyBackend,
        call: str,
        key_id: str | None,
        context: Mapping[str, str] | None,
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        if self._metrics is not None:
            self._metrics.calls.labels(backend.name, call).inc()
        started = self._clock()
        try:
            result = await fn()
        except KeyServiceError as exc:
            elapsed = self._clock() - started
            self.audit.backend_event(
                info,
                call=call,
                backend=backend.name,
                key_id=key_id,
                outcome=type(exc).__name__,
                error=str(exc),
                latency_ms=elapsed * 1000.0,
                context=context,
            )
            if self._metrics is not None:
                self._metrics.latency.labels(backend.name, call).observe(elapsed)
                self._metrics.errors.labels(backend.name, call, type(exc).__name__).inc()
            raise
        elapsed = self._clock() - started
        if isinstance(result, DataKey):
            key_id = result.wrapped.key_id
        elif isinstance(result, WrappedKey):
            key_id = result.key_id
        self.audit.backend_event(
            info,
            call=call,
            backend=backend.name,
            key_id=key_id,
            outcome="ok",
            latency_ms=elapsed * 1000.0,
            context=context,
        )
        if self._metrics is not None:
            self._metrics.latency.labels(backend.name, call).observe(elapsed)
        return result

    def _backend_for(self, wrapped: WrappedKey) -> KeyBackend:
        if wrapped.backend == sse_c.BACKEND:
            raise KeyAccessDenied("the object is encrypted with a customer-provided key (SSE-C)")
        backend = self._backends.get(wrapped.backend)
        if backend is None:
            raise KeyNotFound(
                f"the object's key is in the {wrapped.backend!r} key backend, which is not configured"
            )
        return backend

    def _audit_object(
        self,
        audit: AuditInfo | None,
        backend: str,
        key_id: str | None,
        cache: str,
        started: float | None,
        context: Mapping[str, str] | None,
        exc: KeyServiceError | None = None,
    ) -> None:
        """One audit line for an object operation that used (or failed to get) a data key."""
        if not self.audit.enabled:  # target "off": skip building a record nobody writes
            return
        self.audit.object_event(
            audit,
            backend=backend,
            key_id=key_id,
            cache=cache,
            outcome="ok" if exc is None else type(exc).__name__,
            error=None if exc is None else str(exc),
            latency_ms=0.0 if started is None else self._ms(started),
            context=context,
        )

    # -- the API of the handlers ---------------------------------------------

    async def data_key_for_write(
        self,
        *,
        bucket: str,
        key: str,
        requested_key_id: str | None,
        extra_context: Mapping[str, str] | None,
        object_bytes: int | None,
        audit: AuditInfo,
    ) -> DataKey:
        """A DEK for a new object or part (the caller owns ``plaintext`` and may zero it).

        Raises KeyAccessDenied when the client asked (SSE-KMS header) for a
        key the policy does not allow; any KeyServiceError of the backend.
        """
        started = self._clock()
        backend = self._write_backend
        key_id: str | None = requested_key_id
        context: dict[str, str] | None = None
        try:
            if extra_context and "bucket" in extra_context:
                raise ValueError("extra_context may not override 'bucket'")
            key_id = self.policy.choose(bucket, key, requested_key_id)
            context = check_context({"bucket": bucket, **(extra_context or {})})
            ctx, kid = context, key_id

            async def load() -> DataKey:
                return await self._backend_call(
                    audit, backend, "generate_data_key", kid, ctx, lambda: backend.generate_data_key(kid, ctx)
                )

            data_key, status = await self.cache.data_key_for_write(backend.name, kid, ctx, object_bytes, load)
        except KeyServiceError as exc:
            self._audit_object(audit, backend.name, key_id, "none", started, context, exc)
            raise
        self._audit_object(audit, backend.name, data_key.wrapped.key_id, status, started, context)
        return data_key

    async def data_key_for_read(
        self, wrapped: WrappedKey, context: Mapping[str, str], audit: AuditInfo
    ) -> bytearray:
        """The DEK of an object (the caller's own copy)."""
        started = self._clock()
        ctx = check_context(context)
        try:
            backend = self._backend_for(wrapped)

            async def load() -> bytearray:
                return await self._backend_call(
                    audit,
                    backend,
                    "decrypt_data_key",
                    wrapped.key_id,
                    ctx,
                    lambda: backend.decrypt_data_key(wrapped, ctx),
                )

            dek, status = await self.cache.data_key_for_read(wrapped, ctx, load)
        except KeyServiceError as exc:
            self._audit_object(audit, wrapped.backend, wrapped.key_id, "none", started, ctx, exc)
            raise
        self._audit_object(audit, wrapped.backend, wrapped.key_id, status, started, ctx)
        return dek

    async def rewrap(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        to_key_id: str,
        to_context: Mapping[str, str],
        *,
        audit: AuditInfo | None = None,
    ) -> WrappedKey:
        """Re-wrap a DEK under ``to_key_id`` of the *write* backend, bound to ``to_context``.

        Same backend: the backend's own rewrap (KMS ReEncrypt never shows the
        DEK).  Another backend (migration, e.g. local -> aws-kms): unwrap with
        the old one, wrap with the new one.  Never cached.
        """
        src = self._backend_for(wrapped)
        dst = self._write_backend
        ctx, to_ctx = check_context(context), check_context(to_context)
        if src is dst:
            return await self._backend_call(
                audit, src, "rewrap", wrapped.key_id, to_ctx, lambda: src.rewrap(wrapped, ctx, to_key_id, to_ctx)
            )

        dek = await self._backend_call(
            audit, src, "decrypt_data_key", wrapped.key_id, ctx, lambda: src.decrypt_data_key(wrapped, ctx)
        )
        try:
            return await self._backend_call(
                audit, dst, "wrap_data_key", to_key_id, to_ctx, lambda: dst.wrap_data_key(to_key_id, dek, to_ctx)
            )
        finally:
            zeroize(dek)

    async def wrap_data_key(
        self,
        key_id: str,
        dek: bytes | bytearray,
        context: Mapping[str, str],
        *,
        audit: AuditInfo | None = None,
    ) -> WrappedKey:
        """Wrap an existing DEK with the write backend (e.g. copying an SSE-C object to SSE-KMS).

        The caller chooses ``key_id`` (normally ``policy.choose(...)``).  Audited, never cached.
        """
        ctx = check_context(context)
        backend = self._write_backend
        return await self._backend_call(
            audit, backend, "wrap_data_key", key_id, ctx, lambda: backend.wrap_data_key(key_id, dek, ctx)
        )

    def key_id_for_display(self, wrapped: WrappedKey) -> str:
        """The value for ``x-amz-server-side-encryption-aws-kms-key-id``.

        AWS KMS: the key ARN KMS reported.  Local and PKCS#11: the key id /
        label as configured (the same string a client may request).
        """
        return wrapped.key_id

    async def check(self) -> None:
        """Readiness: every configured backend answers (raises the first KeyServiceError)."""
        for backend in self._backends.values():
            await self._backend_call(
                None, backend, "check", getattr(backend, "default_key_id", None), None, backend.check
            )

    async def close(self) -> None:
        """Close every backend (even if one fails), zero the cache, close the audit log."""
        first_error: BaseException | None = None
        for backend in self._backends.values():
            try:
                await backend.close()
            except Exception as exc:  # close the others anyway
                first_error = first_error or exc
        self.cache.clear()
        self.audit.close()
        if first_error is not None:
            raise first_error

    # -- SSE-C ----------------------------------------------------------------

    def sse_c_wrap(
        self,
        customer_key: bytes | bytearray,
        dek: bytes | bytearray,
        context: Mapping[str, str],
        *,
        audit: AuditInfo | None = None,
    ) -> WrappedKey:
        """Wrap ``dek`` under a client's SSE-C key (backend "sse-c", key id = base64 MD5 of the key)."""
        started = self._clock()
        wrapped = sse_c.sse_c_wrap(customer_key, dek, context)
        self._audit_object(audit, sse_c.BACKEND, wrapped.key_id, "none", started, context)
        return wrapped

    def sse_c_data_key(
        self, customer_key: bytes | bytearray, context: Mapping[str, str], *, audit: AuditInfo | None = None
    ) -> DataKey:
        """A fresh DEK wrapped under a client's SSE-C key (the caller owns ``plaintext`` and may zero it)."""
        started = self._clock()
        data_key = sse_c.sse_c_data_key(customer_key, context)
        self._audit_object(audit, sse_c.BACKEND, data_key.wrapped.key_id, "none", started, context)
        return data_key

    def sse_c_unwrap(
        self,
        customer_key: bytes | bytearray,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        *,
        audit: AuditInfo | None = None,
    ) -> bytearray:
        """Unwrap with the client's SSE-C key; a wrong key raises InvalidWrappedKey."""
        started = self._clock()
        try:
            dek = sse_c.sse_c_unwrap(customer_key, wrapped, context)
        except KeyServiceError as exc:
            self._audit_object(audit, sse_c.BACKEND, wrapped.key_id, "none", started, context, exc)
            raise
        self._audit_object(audit, sse_c.BACKEND, wrapped.key_id, "none", started, context)
        return dek
