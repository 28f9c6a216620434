"""GET and HEAD of objects written by the AWS S3 Encryption Client (per-bucket ``s3ec.read``).

The S3EC's format is parsed and decrypted by ``s3proxy.crypto.s3ec``; this module
does the I/O.  One GCM tag authenticates a whole S3EC object, so no plaintext may
leave before its last byte is checked: the ciphertext is spooled to a temporary
file (never memory) while the tag is checked, then the requested bytes are
decrypted from the spool.  The first byte therefore waits for the whole object;
objects above ``s3ec.max_object_size`` are refused rather than sent unchecked.
Legacy CBC content (opt-in, unauthenticated by design) streams straight through.

Data keys are unwrapped by the aws-kms key backend through the key manager (cache,
audit, metrics as for s3proxy's own objects), with the encryption context the
object stores, as the S3EC's KMS keyring does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import IO

import aiohttp
from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import s3ec
from s3proxy.http import sse
from s3proxy.http.ctx import Ctx, backend_error, read_at_most, response_headers
from s3proxy.keys.base import WrappedKey

META = "x-amz-meta-"
INSTRUCTION_LIMIT = 64 * 1024
SPOOL_PIECE = 1 << 20


def _user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {k[len(META):].lower(): v for k, v in headers.items() if k.lower().startswith(META)}


def _integrity(ctx: Ctx, what: str) -> S3Error:
    ctx.state.metrics.integrity_failures.inc()
    return S3Error("InvalidObjectState", f"The S3 Encryption Client object failed verification: {what}.", 403)


async def describe(ctx: Ctx, headers: Mapping[str, str], bucket: str, key: str) -> s3ec.S3ECObject | None:
    """The S3EC description of the object whose backend headers are given; None if not an S3EC object."""
    cfg = ctx.bucket_settings.s3ec
    meta = _user_metadata(headers)
    kind = s3ec.kind(meta)
    instruction = None
    if kind != "object":
        if kind is None and not cfg.instruction_files:
            return None
        instruction = await _instruction_file(ctx, bucket, key + cfg.instruction_suffix, required=kind is not None)
        if instruction is None:
            return None
    try:
        return s3ec.parse(meta, instruction, allow_legacy=cfg.legacy)
    except s3ec.S3ECLegacyRefused as e:
        raise S3Error(
            "InvalidObjectState",
            f"The object was written by the S3 Encryption Client in a legacy mode ({e}); "
            "set the bucket's s3ec.legacy to read it.", 403,
        ) from None
    except s3ec.S3ECUnsupported as e:
        raise S3Error("NotImplemented", f"S3 Encryption Client object: {e}.", 501) from None
    except s3ec.S3ECError as e:
        raise _integrity(ctx, str(e)) from None


async def _instruction_file(ctx: Ctx, bucket: str, key: str, *, required: bool) -> dict[str, str] | None:
    resp = await ctx.backend.request("GET", bucket, key, query=[], headers={})
    try:
        if resp.status == 404:
            if required:
                raise _integrity(ctx, "its instruction file is missing")
            return None
        if resp.status != 200:
            raise S3Error("InternalError", f"The backend answered {resp.status} for the instruction file.", 500)
        body = await read_at_most(resp, INSTRUCTION_LIMIT)
    finally:
        resp.release()
    if len(body) >= INSTRUCTION_LIMIT:
        raise _integrity(ctx, "its instruction file is too large")
    try:
        parsed = s3ec.parse_instruction_file(body)
    except s3ec.S3ECError as e:
        if not required:
            return None  # "<key>.instruction" that is not an instruction file: a plain object after all
        raise _integrity(ctx, str(e)) from None
    if not required and s3ec.INSTRUCTION_MARKER not in parsed and not any(k.startswith("x-amz-") for k in parsed):
        return None
    return parsed


async def _data_key(ctx: Ctx, obj: s3ec.S3ECObject, bucket: str, key: str, op: str) -> bytearray:
    key_id = ctx.bucket_settings.s3ec.kms_key_id or ""
    wrapped = WrappedKey(backend="aws-kms", key_id=key_id, algorithm="KMS", blob=obj.encrypted_key)
    return await sse.unwrap_key(ctx, wrapped, s3ec.kms_context(obj), bucket, key, op)


def _headers(ctx: Ctx, backend_headers: Mapping[str, str]) -> web.StreamResponse:
    crypto = [h.lower() for h in backend_headers if h.lower().startswith(META + "x-amz-")]
    drop = [*crypto, "content-range", "x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-sha1",
            "x-amz-checksum-sha256", "x-amz-checksum-crc64nvme", "x-amz-checksum-type", "content-md5"]
    return web.StreamResponse(headers=response_headers(backend_headers, ctx.request_id, drop=drop))


def _size(ctx: Ctx, obj: s3ec.S3ECObject, ct_size: int) -> int | None:
    try:
        return s3ec.plaintext_size(obj, ct_size)
    except s3ec.S3ECError as e:
        raise _integrity(ctx, str(e)) from None


async def head(ctx: Ctx, backend_headers: Mapping[str, str]) -> web.StreamResponse | None:
    """HEAD of an S3EC object (its plaintext length), or None when the object is not one."""
    obj = await describe(ctx, backend_headers, ctx.bucket, ctx.key)
    if obj is None:
        return None
    ct_size = int(backend_headers.get("Content-Length", "0"))
    size = _size(ctx, obj, ct_size)
    if size is None:
        raise S3Error("NotImplemented", "The plaintext length of this legacy CBC object is not stored; GET it.", 501)
    out = _headers(ctx, backend_headers)
    out.headers["Accept-Ranges"] = "bytes"
    out.content_length = size
    await out.prepare(ctx.request)
    await out.write_eof()
    return out


async def get(ctx: Ctx, query: list[tuple[str, str]], headers: dict[str, str]) -> web.StreamResponse | None:
    """GET of an S3EC object, whole or ranged, or None when the object is not one (the caller refuses)."""
    bucket, key = ctx.bucket, ctx.key
    resp = await ctx.backend.request("GET", bucket, key, query=query, headers=headers)
    try:
        if resp.status != 200:
            return await backend_error(ctx, resp)
        obj = await describe(ctx, resp.headers, bucket, key)
        if obj is None:
            return None
        ct_size = int(resp.headers.get("Content-Length", "0"))
        cfg = ctx.bucket_settings.s3ec
        if obj.authenticated and ct_size > cfg.max_object_size:
            raise S3Error(
                "NotImplemented",
                "This S3 Encryption Client object is larger than the bucket's s3ec.max_object_size; "
                "it cannot be authenticated before it is sent. Migrate it (s3proxy migrate).", 501,
            )
        size = _size(ctx, obj, ct_size)
        dek = await _data_key(ctx, obj, bucket, key, "GetObject")
        try:
            if not obj.authenticated:
                return await _stream_legacy(ctx, obj, dek, resp, size)
            with tempfile.TemporaryFile(dir=cfg.spool_dir) as spool:
                await _spool_and_verify(ctx, obj, dek, resp, spool)
                assert size is not None
                return await _send_from_spool(ctx, obj, dek, resp.headers, spool, size)
        finally:
            dek[:] = bytes(len(dek))
    finally:
        resp.release()


async def _spool_and_verify(
    ctx: Ctx, obj: s3ec.S3ECObject, dek: bytearray, resp: aiohttp.ClientResponse, spool: IO[bytes]
) -> None:
    try:
        dec = s3ec.ContentDecryptor(obj, dek)
        async for chunk in resp.content.iter_chunked(SPOOL_PIECE):
            spool.write(chunk)
            dec.update(chunk)  # the plaintext is discarded: this pass only checks the tag
        dec.finalize()
    except s3ec.S3ECError as e:
        raise _integrity(ctx, str(e)) from None


async def _send_from_spool(
    ctx: Ctx, obj: s3ec.S3ECObject, dek: bytearray, backend_headers: Mapping[str, str], spool: IO[bytes], size: int
) -> web.StreamResponse:
    out = _headers(ctx, backend_headers)
    out.headers["Accept-Ranges"] = "bytes"
    start, end = 0, size
    rng = parse_range(ctx.request.headers.get("Range"))
    if rng is not None:
        start, end = rng.resolve(size)
        out.set_status(206)
        out.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    out.content_length = end - start
    await out.prepare(ctx.request)
    block = start // s3ec.BLOCK
    dec = s3ec.ctr_range_decryptor(obj, dek, block)
    spool.seek(block * s3ec.BLOCK)
    skip = start - block * s3ec.BLOCK
    remaining = end - block * s3ec.BLOCK
    while remaining > 0:
        piece = spool.read(min(SPOOL_PIECE, remaining))
        if not piece:
            raise ConnectionResetError("S3EC spool shorter than the object")
        remaining -= len(piece)
        plain = dec.update(piece)
        if skip:
            plain, skip = plain[skip:], 0
        await out.write(plain)
    ctx.state.metrics.decrypted.inc(end - start)
    ctx.state.metrics.bytes_out.inc(end - start)
    await out.write_eof()
    return out


async def _stream_legacy(
    ctx: Ctx, obj: s3ec.S3ECObject, dek: bytearray, resp: aiohttp.ClientResponse, size: int | None
) -> web.StreamResponse:
    """CBC content (opt-in legacy): no tag to wait for; whole objects only, ranges read from the start."""
    out = _headers(ctx, resp.headers)
    rng = parse_range(ctx.request.headers.get("Range"))
    start, end = 0, size
    if rng is not None and size is not None:
        start, end = rng.resolve(size)
        out.set_status(206)
        out.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if end is not None:
        out.content_length = end - start
    await out.prepare(ctx.request)
    dec = s3ec.ContentDecryptor(obj, dek)
    pos = 0
    try:
        async for chunk in resp.content.iter_chunked(SPOOL_PIECE):
            pos = await _write_window(out, dec.update(chunk), pos, start, end)
        await _write_window(out, dec.finalize(), pos, start, end)
    except s3ec.S3ECError:
        ctx.state.metrics.integrity_failures.inc()
        if ctx.request.transport is not None:
            ctx.request.transport.close()
        raise ConnectionResetError("S3EC legacy object failed to decrypt mid-body") from None
    await out.write_eof()
    return out


async def _write_window(out: web.StreamResponse, plain: bytes, pos: int, start: int, end: int | None) -> int:
    lo, hi = max(start - pos, 0), len(plain) if end is None else min(end - pos, len(plain))
    if hi > lo:
        await out.write(plain[lo:hi])
    return pos + len(plain)
