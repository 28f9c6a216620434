"""GET with a ``Range`` header or ``?partNumber=N`` of an encrypted object (split from
``http.reads``, issue 10): a probe for the envelope and the first part header, the part table,
then only the chunks the range needs, decrypted and authenticated piece by piece
(``decrypt_range``, also used by ``http.copy``).  Imports ``http.reads_body``; imported by
``http.reads``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import objectinfo, streams
from s3proxy.crypto.errors import FormatError, ManifestMismatch
from s3proxy.http import sse
from s3proxy.http.ctx import Ctx, backend_error, read_at_most
from s3proxy.http.objects import (
    Sealed,
    backend_length,
    backend_total,
    integrity_error,
    out_headers,
    read_conditions,
    unseal,
    version_query,
)
from s3proxy.http.reads_body import (
    body_pieces,
    checked_manifest,
    fetch_bytes,
    foreign_or_refuse,
    is_range_response,
    part_table,
    passthrough_query,
    promises_manifest,
    resolve_size,
    send_plaintext,
)

PROBE_BYTES = 64 * 1024


def parse_part_number(value: str) -> int:
    n = parse_uint(value, max_digits=5)
    if n is None or not 1 <= n <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", 400)
    return n


# GET/HEAD ?partNumber=N, as AWS S3 answers (AWS-recorded responses in LocalStack's
# tests/aws/services/s3/test_s3.py::test_get_object_part, recorded 2026-02): N beyond the object's
# parts is 416 InvalidPartNumber "The requested partnumber is not satisfiable" with
# PartNumberRequested and ActualPartCount (1 for an object not uploaded in parts; HEAD: no body);
# partNumber=1 of such an object is a 206 of the whole object without x-amz-mp-parts-count;
# partNumber with a Range header is 400 InvalidRequest.
def check_no_range(ctx: Ctx) -> None:
    if "Range" in ctx.request.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter", 400)


def check_part_exists(pn: int, parts: int) -> None:
    if pn > parts:
        raise S3Error(
            "InvalidPartNumber", "The requested partnumber is not satisfiable", 416,
            extra={"PartNumberRequested": str(pn), "ActualPartCount": str(parts)},
        )


async def get_partial(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    probe = await ctx.backend.request(
        "GET", bucket, key, query=passthrough_query(ctx),
        headers={**await read_conditions(ctx), "Range": f"bytes=0-{PROBE_BYTES - 1}"},
    )
    if probe.status not in (200, 206):
        if probe.status == 416:
            probe.release()
            return await foreign_or_refuse(ctx)
        return await backend_error(ctx, probe)
    try:
        head = await read_at_most(probe, PROBE_BYTES)
        if "Content-Range" in probe.headers:
            total = backend_total(probe.headers)
        else:
            total = backend_length(probe.headers)
    finally:
        probe.release()
    etag = probe.headers.get("ETag", "")
    sealed = await unseal(ctx, probe.headers, bucket, key, "GetObject")
    if sealed is None:
        return await foreign_or_refuse(ctx)
    with sse.held_dek(sealed.dek):  # zeroed once the body is sent or the read failed
        return await _send_range(ctx, sealed, probe.headers, head, total, etag)


async def _send_range(
    ctx: Ctx, sealed: Sealed, probe_headers: Mapping[str, str], head: bytes, total: int, etag: str
) -> web.StreamResponse:
    """The 206 of ``get_partial``: a ``Range`` or a ``partNumber`` of the object ``sealed`` opened."""
    bucket, key, q = ctx.bucket, ctx.key, version_query(ctx)
    env = sealed.env
    sse.check_customer_key(ctx, env)
    table = await part_table(ctx, bucket, key, env, etag, total, head[: objectinfo.header_size(env.layout)] or None)
    size = await resolve_size(ctx, bucket, key, env, etag, total)
    part_number = ctx.route.q("partNumber")
    hdrs = out_headers(ctx, probe_headers, env, sealed.contents)
    hdrs["Accept-Ranges"] = "bytes"
    if part_number is not None:
        pn = parse_part_number(part_number)
        check_no_range(ctx)
        check_part_exists(pn, len(table))
        start, end = objectinfo.part_range(env.layout, table, pn, size)
        if objectinfo.in_parts(env.layout):
            hdrs["x-amz-mp-parts-count"] = str(len(table))
    else:
        rng = parse_range(ctx.request.headers.get("Range"))
        assert rng is not None
        start, end = rng.resolve(size)
    length = end - start
    if promises_manifest(sealed) and end > objectinfo.last_part_start(table):  # reaches the last part
        mf = await checked_manifest(ctx, bucket, sealed, size, len(table))
        try:
            mf.check_parts([(None, p) for _, p in objectinfo.part_spans(table)])
        except ManifestMismatch:
            ctx.state.metrics.integrity_failures.inc()
            raise integrity_error() from None
    hdrs["Content-Range"] = f"bytes {start}-{end - 1}/{size}" if length else f"bytes */{size}"
    pieces = decrypt_range(ctx, sealed, table, total, start, end, etag, head, q, buffers=streams.OutBuffers())
    out = web.StreamResponse(status=206, headers=hdrs)
    out.content_length = length
    first: bytes | bytearray | memoryview = b""
    try:
        # Produce the first authenticated piece before committing to a 206.
        async for first in pieces:  # noqa: B007 - take one piece, keep the generator
            break
    except FormatError:
        ctx.state.metrics.integrity_failures.inc()
        raise integrity_error() from None
    await out.prepare(ctx.request)
    return await send_plaintext(ctx, out, pieces, length, first)


async def _stream_ciphertext(
    ctx: Ctx, bucket: str, key: str, start: int, end: int, etag: str, q: list[tuple[str, str]], head: bytes
) -> AsyncIterator[bytes | bytearray | memoryview]:
    if end <= len(head):
        yield head[start:end]
        return
    resp = await ctx.backend.request(
        "GET", bucket, key, query=q, headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag}
    )
    try:
        if not is_range_response(resp, start, end):
            raise integrity_error() if resp.status != 412 else S3Error("PreconditionFailed", "The object changed while it was being read.", 412)
        async for chunk in body_pieces(resp):
            yield chunk
    finally:
        resp.release()


async def decrypt_range(
    ctx: Ctx, sealed: Sealed, table: list[tuple[int, int]], total: int, start: int, end: int, etag: str,
    head: bytes, q: list[tuple[str, str]], bucket: str | None = None, key: str | None = None,
    buffers: streams.OutBuffers | None = None,
) -> AsyncIterator[bytes | bytearray | memoryview]:
    """Authenticated plaintext [start, end), fetching only the chunks needed (``crypto.streams``:
    headers through ``fetch``, chunks through ``stream``; what the probe ``head`` holds is not
    fetched again).  Parts out of order raise ``PartOrderError``, a ``FormatError``."""
    env, dek = sealed.env, sealed.dek
    bucket, key = bucket or ctx.bucket, key or ctx.key
    if start >= end:
        return

    async def fetch(a: int, b: int) -> bytes:
        return head[a:b] if b <= len(head) else await fetch_bytes(ctx, bucket, key, a, b, etag, q)

    def stream(a: int, b: int) -> AsyncIterator[bytes | bytearray | memoryview]:
        return _stream_ciphertext(ctx, bucket, key, a, b, etag, q, head)

    if objectinfo.in_parts(env.layout):
        pieces = streams.decrypt_k_range(dek, env.object_id, table, start, end, fetch, stream, buffers)
    else:
        header = await fetch(0, objectinfo.header_size(env.layout))
        p = objectinfo.size_from_table(env.layout, table)
        pieces = streams.decrypt_s_range(dek, env.object_id, header, p, start, end, stream, buffers)
    async for out in pieces:
        yield out
