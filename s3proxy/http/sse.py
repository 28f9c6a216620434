"""Server-side-encryption request semantics: SSE-KMS headers and SSE-C.

SSE-KMS headers let a client choose the key (where policy allows it) and add
encryption context.  SSE-C headers carry a customer key that wraps the
object's data key; neither the backend nor the key service ever sees it.
Both go through the ``KeyManager`` (``ctx.state.keys``), which writes the audit
line with the request id and identity.  The customer key is held in a
``bytearray`` that is zeroed as soon as it has wrapped or unwrapped the data key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3proxy.aws.errors import S3Error
from s3proxy.crypto.envelope import Envelope, SealContents, rebind
from s3proxy.keys.base import InvalidWrappedKey, WrappedKey, zeroize
from s3proxy.keys.manager import AuditInfo

if TYPE_CHECKING:
    from s3proxy.http.ctx import Ctx

SSE = "x-amz-server-side-encryption"
KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
KMS_CTX = "x-amz-server-side-encryption-context"
C_ALG = "x-amz-server-side-encryption-customer-algorithm"
C_KEY = "x-amz-server-side-encryption-customer-key"
C_MD5 = "x-amz-server-side-encryption-customer-key-md5"
# The copy source's customer key: x-amz-copy-source-server-side-encryption-customer-*
# (the "x-amz-" of the plain names is not repeated after the prefix).
CS_PREFIX = "x-amz-copy-source-"
CS_ALG = CS_PREFIX + C_ALG.removeprefix("x-amz-")
CS_KEY = CS_PREFIX + C_KEY.removeprefix("x-amz-")
CS_MD5 = CS_PREFIX + C_MD5.removeprefix("x-amz-")


@dataclass(frozen=True)
class CustomerKey:
    key: bytearray  # zeroed by ``clear()`` once used
    md5_b64: str

    def clear(self) -> None:
        zeroize(self.key)

    def __repr__(self) -> str:  # never show the key
        return f"CustomerKey(md5_b64={self.md5_b64!r})"


def customer_key(headers: Mapping[str, str], prefix: str = "", *, secure: bool, require_https: bool) -> CustomerKey | None:
    """The SSE-C key in ``headers``: the object's (``prefix`` "") or the copy source's (``CS_PREFIX``)."""
    if prefix == CS_PREFIX:
        names = (CS_ALG, CS_KEY, CS_MD5)
    elif prefix == "":
        names = (C_ALG, C_KEY, C_MD5)
    else:
        raise ValueError(f"unknown SSE-C header prefix {prefix!r}")
    alg, key_b64, md5 = (headers.get(n) for n in names)
    if alg is None and key_b64 is None and md5 is None:
        return None
    if alg != "AES256":
        raise S3Error("InvalidEncryptionAlgorithmError", "The encryption request you specified is not valid. The valid value is AES256.", 400)
    if not key_b64 or not md5:
        raise S3Error("InvalidRequest", "The SSE-C request must provide the customer key and its MD5.", 400)
    try:
        key = bytearray(base64.b64decode(key_b64, validate=True))
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The secret key was invalid for the specified algorithm.", 400) from None
    ck = CustomerKey(key, base64.b64encode(hashlib.md5(key).digest()).decode())
    try:
        if len(key) != 32:
            raise S3Error("InvalidArgument", "The secret key was invalid for the specified algorithm.", 400)
        if not hmac.compare_digest(ck.md5_b64, md5.strip()):
            raise S3Error("InvalidArgument", "The calculated MD5 hash of the key did not match the hash that was provided.", 400)
        if require_https and not secure:
            raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection.", 400)
    except S3Error:
        ck.clear()
        raise
    return ck


def _ck(ctx: Ctx, prefix: str = "") -> CustomerKey | None:
    return customer_key(
        ctx.request.headers, prefix, secure=ctx.request.secure,
        require_https=ctx.state.settings.require_https_for_sse_c,
    )


@contextmanager
def _customer_key(ctx: Ctx, prefix: str = "") -> Iterator[CustomerKey | None]:
    """The request's SSE-C key for the length of a ``with`` block, zeroed when it ends."""
    ck = _ck(ctx, prefix)
    try:
        yield ck
    finally:
        if ck is not None:
            ck.clear()


@contextmanager
def held_dek(dek: bytearray) -> Iterator[bytearray]:
    """A handler's data key for the length of a ``with`` block, zeroed when it ends (also on error)."""
    try:
        yield dek
    finally:
        zeroize(dek)


def _extra_context(ctx: Ctx) -> dict[str, str]:
    raw = ctx.request.headers.get(KMS_CTX)
    if not raw:
        return {}
    try:
        value = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The encryption context must be base64-encoded JSON.", 400) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise S3Error("InvalidArgument", "The encryption context must be a JSON object of strings.", 400)
    if "bucket" in value:
        raise S3Error("InvalidArgument", "The encryption context key 'bucket' is reserved.", 400)
    return value


def audit_info(ctx: Ctx, op: str, bucket: str, key: str) -> AuditInfo:
    return AuditInfo(request_id=ctx.request_id, identity=ctx.identity_name, operation=op, bucket=bucket, key=key)


def requested_key_id(ctx: Ctx) -> str | None:
    mode = ctx.request.headers.get(SSE)
    if mode is None:
        if KMS_KEY in ctx.request.headers:
            raise S3Error("InvalidArgument", "Server Side Encryption with KMS key id requires x-amz-server-side-encryption: aws:kms.", 400)
        return None
    if mode not in ("aws:kms", "AES256", "aws:kms:dsse"):
        raise S3Error("InvalidArgument", "The encryption method specified is not supported", 400)
    return ctx.request.headers.get(KMS_KEY) if mode.startswith("aws:kms") else None


async def data_key_for_write(ctx: Ctx, bucket: str, key: str, nbytes: int | None, op: str) -> tuple[bytearray, WrappedKey, dict[str, str]]:
    ck = _ck(ctx)  # no ``with _customer_key``: a generator context per request, for the rare SSE-C one
    if ck is not None:
        try:
            if SSE in ctx.request.headers:
                raise S3Error("InvalidArgument", "Server Side Encryption with Customer provided key is incompatible with the encryption method specified", 400)
            context = {"bucket": bucket}
            dk = ctx.state.keys.sse_c_data_key(ck.key, context, audit=audit_info(ctx, op, bucket, key))
            return dk.plaintext, dk.wrapped, context
        finally:
            ck.clear()
    extra = _extra_context(ctx)
    dk = await ctx.state.keys.data_key_for_write(
        bucket=bucket, key=key, requested_key_id=requested_key_id(ctx), extra_context=extra or None,
        object_bytes=nbytes, audit=audit_info(ctx, op, bucket, key),
    )
    return dk.plaintext, dk.wrapped, {"bucket": bucket, **extra}


async def unwrap(ctx: Ctx, env: Envelope, bucket: str, key: str, op: str, *, copy_source: bool = False) -> bytearray:
    return await unwrap_key(ctx, env.wrapped, env.context, bucket, key, op, copy_source=copy_source)


async def unwrap_key(
    ctx: Ctx, wrapped: WrappedKey, context: Mapping[str, str], bucket: str, key: str, op: str, *, copy_source: bool = False
) -> bytearray:
    audit = audit_info(ctx, op, bucket, key)
    if wrapped.backend == "sse-c":
        with _customer_key(ctx, CS_PREFIX if copy_source else "") as ck:
            if ck is None:
                raise S3Error("InvalidRequest", "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.", 400)
            try:
                return ctx.state.keys.sse_c_unwrap(ck.key, wrapped, dict(context), audit=audit)
            except InvalidWrappedKey:
                raise S3Error("AccessDenied", "The provided SSE-C key does not match the object's key.", 403) from None
    return await ctx.state.keys.data_key_for_read(wrapped, dict(context), audit)


_KEY_MESSAGES = {
    "": ("The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
         "The provided SSE-C key does not match the object's key.",
         "The encryption parameters are not applicable to this object."),
    CS_PREFIX: ("The source object was stored using SSE-C; provide the copy-source customer key.",
                "The provided copy-source SSE-C key does not match the source object's key.",
                "The copy-source encryption parameters are not applicable to this object."),
}


def _check_key(ctx: Ctx, env: Envelope, prefix: str) -> None:
    missing, wrong, unexpected = _KEY_MESSAGES[prefix]
    ck = _ck(ctx, prefix)
    if ck is None:
        if env.wrapped.backend == "sse-c":
            raise S3Error("InvalidRequest", missing, 400)
        return
    try:
        if env.wrapped.backend != "sse-c":
            raise S3Error("InvalidRequest", unexpected, 400)
        if not hmac.compare_digest(ck.md5_b64, env.wrapped.key_id):
            raise S3Error("AccessDenied", wrong, 403)
    finally:
        ck.clear()


def check_customer_key(ctx: Ctx, env: Envelope) -> None:
    """HEAD/GET: SSE-C objects need the key; others must not be sent one."""
    _check_key(ctx, env, "")


def check_copy_source_key(ctx: Ctx, env: Envelope) -> None:
    """CopyObject/UploadPartCopy: an SSE-C source needs its key (x-amz-copy-source-server-side-encryption-customer-*);
    other sources must not be sent one."""
    _check_key(ctx, env, CS_PREFIX)


def response_headers(ctx: Ctx, env: Envelope) -> dict[str, str]:
    if env.wrapped.backend == "sse-c":
        return {C_ALG: "AES256", C_MD5: env.wrapped.key_id}
    return {SSE: "aws:kms", KMS_KEY: ctx.state.keys.key_id_for_display(env.wrapped)}


async def rewrap_for(
    ctx: Ctx, env: Envelope, dek: bytearray, src_bucket: str, dst_bucket: str, dst_key: str,
    sealed: SealContents | None = None,
) -> Envelope:
    """The envelope for a copy of ``env`` at (dst_bucket, dst_key): same DEK and body; ``sealed``
    replaces the sealed block's contents (and makes a v1 source's copy v2), see ``rebind``."""
    new_ctx = {**dict(env.context), "bucket": dst_bucket}
    audit = audit_info(ctx, "CopyObject", dst_bucket, dst_key)
    with _customer_key(ctx) as ck:
        if ck is not None:
            wrapped = ctx.state.keys.sse_c_wrap(ck.key, dek, new_ctx, audit=audit)
            return rebind(env, dek, dst_bucket, dst_key, wrapped=wrapped, context=new_ctx, sealed=sealed)
    requested = requested_key_id(ctx)
    if env.wrapped.backend == "sse-c" or requested is not None or src_bucket != dst_bucket:
        keys = ctx.state.keys
        to_key = keys.policy.choose(dst_bucket, dst_key, requested)
        if env.wrapped.backend == "sse-c":
            wrapped = await keys.wrap_data_key(to_key, dek, new_ctx, audit=audit)
        else:
            wrapped = await keys.rewrap(env.wrapped, dict(env.context), to_key, new_ctx, audit=audit)
        return rebind(env, dek, dst_bucket, dst_key, wrapped=wrapped, context=new_ctx, sealed=sealed)
    return rebind(env, dek, dst_bucket, dst_key, sealed=sealed)
