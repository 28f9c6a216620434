"""Reading encrypted objects: GET of a whole object and HEAD (ranges and ``partNumber`` in
``http.reads_range``, the shared fetch/send helpers in ``http.reads_body``).

Glue only: sizes, part tables and ``partNumber`` spans come from ``crypto.objectinfo``,
decryption from ``crypto.format`` / ``crypto.streams`` (no layout arithmetic here); the envelope
and the client-facing headers from ``http.objects``.  Bodies stream; nothing is read whole except
part headers and small probes.  A large GET reads the backend's pieces without joining them and
decrypts them into a few reused buffers, writing to the client once per 256 KiB of plaintext
(``crypto.streams.decrypt_batches``, ``OutBuffers``, issue 11).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import objectinfo, streams
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import KObjectDecryptor, SDecryptor
from s3proxy.http import manifests, sse
from s3proxy.http.ctx import Ctx, backend_error, read_at_most, relay
from s3proxy.http.objects import (
    Sealed,
    backend_length,
    backend_total,
    integrity_error,
    out_headers,
    parts_from_etag,
    read_conditions,
    read_envelope,
    read_headers,
    unencrypted,
    unseal,
    version_query,
)
from s3proxy.http.reads_body import (
    checked_manifest,
    fetch_pieces,
    foreign_or_refuse,
    part_table,
    passthrough_query,
    promises_manifest,
    resolve_size,
    send_plaintext,
)
from s3proxy.http.reads_range import check_no_range, check_part_exists, get_partial, parse_part_number

__all__ = ["SMALL_OBJECT", "get_object", "head_object"]


# Whole S objects up to this many ciphertext bytes are decrypted in memory and sent as one
# response (``_get_small``); at 64 requests in flight that is at most ~32 MiB of buffers.
SMALL_OBJECT = 128 * 1024


async def head_object(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    part_number = ctx.route.q("partNumber")
    resp = await ctx.backend.request(
        "HEAD", bucket, key, query=version_query(ctx), headers=await read_conditions(ctx)
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    resp.release()
    env = read_envelope(resp.headers)
    if env is None:
        if ctx.bucket_settings.s3ec.read:
            from s3proxy.http import s3ec_read

            served = await s3ec_read.head(ctx, resp.headers)
            if served is not None:
                return served
        if ctx.bucket_settings.allows_unencrypted(ctx.key):
            return await relay(ctx, await ctx.backend.request("HEAD", bucket, key, query=list(ctx.route.query), headers=read_headers(ctx)))
        raise unencrypted(ctx)
    sse.check_customer_key(ctx, env)
    # HEAD answers only for an object whose envelope is bound to this bucket and key, as GET
    # does: a DEK cache hit costs one HMAC, a miss one unwrap.
    sealed = await unseal(ctx, resp.headers, bucket, key, "HeadObject")
    assert sealed is not None  # env is not None
    try:  # a multipart object's checksum is in its manifest (http/manifests.py)
        contents = await manifests.checksum_contents(
            ctx, bucket, env, sealed.dek, sealed.contents, wanted=part_number is None and manifests.checksum_mode_enabled(ctx))
    finally:
        sealed.dek[:] = bytes(len(sealed.dek))
    ct_total = backend_length(resp.headers)
    etag = resp.headers.get("ETag")
    if objectinfo.in_parts(env.layout):
        from s3proxy.http.memo import learn_multipart_etag

        learn_multipart_etag(ctx, etag)
    size = await resolve_size(ctx, bucket, key, env, etag or "", ct_total)
    hdrs = out_headers(ctx, resp.headers, env, contents, whole=part_number is None)
    status = 200
    if part_number is not None:
        pn = parse_part_number(part_number)
        check_no_range(ctx)
        table = await part_table(ctx, bucket, key, env, etag or "", ct_total, None)
        check_part_exists(pn, len(table))
        p_start, p_end = objectinfo.part_range(env.layout, table, pn, size)
        plen = p_end - p_start
        hdrs["Content-Range"] = f"bytes {p_start}-{p_end - 1}/{size}" if plen else f"bytes */{size}"
        if objectinfo.in_parts(env.layout):
            hdrs["x-amz-mp-parts-count"] = str(len(table))
        size, status = plen, 206
    hdrs["Accept-Ranges"] = "bytes"
    out = web.StreamResponse(status=status, headers=hdrs)
    out.content_length = size
    await out.prepare(ctx.request)
    await out.write_eof()
    return out


async def get_object(ctx: Ctx) -> web.StreamResponse:
    rng = parse_range(ctx.request.headers.get("Range"))
    if rng is None and ctx.route.q("partNumber") is None:
        return await _get_full(ctx)
    return await get_partial(ctx)


async def _segments(
    ctx: Ctx, bucket: str, key: str, start: int, total: int, etag: str, q: list[tuple[str, str]]
) -> AsyncIterator[list[bytes]]:
    """Ciphertext [start, total) fetched as concurrent ranged GETs, yielded in order, a segment
    at a time (the pieces the backend sent it in)."""
    cfg = ctx.state.settings.backend
    seg, window = cfg.get_segment_size, cfg.get_parallelism
    if ctx.state.backend.spare_connections() < max(window * 2, cfg.max_connections // 4):
        # A busy pool: one connection per GET, so a few large reads cannot take the
        # connections every other request needs (per-identity limits count requests).
        window = 1
    starts = iter(range(start, total, seg))
    pending: collections.deque[asyncio.Task[list[bytes]]] = collections.deque()

    def schedule() -> None:
        s = next(starts, None)
        if s is not None:
            pending.append(asyncio.ensure_future(fetch_pieces(ctx, bucket, key, s, min(s + seg, total), etag, q)))

    try:
        for _ in range(window):
            schedule()
        while pending:
            pieces = await pending.popleft()
            schedule()
            yield pieces
    finally:
        for t in pending:
            t.cancel()


async def _get_full(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    backend_cfg = ctx.state.settings.backend
    parallel = backend_cfg.get_parallelism > 1
    headers = await read_conditions(ctx)
    if parallel:
        # The first segment comes with the metadata; the rest, if any, in parallel.
        headers["Range"] = f"bytes=0-{backend_cfg.get_segment_size - 1}"
    resp = await ctx.backend.request("GET", bucket, key, query=passthrough_query(ctx), headers=headers)
    if resp.status == 416 and parallel:
        resp.release()
        return await foreign_or_refuse(ctx)  # an empty object: never one of ours
    ranged = "Content-Range" in resp.headers and resp.status in (200, 206)
    if resp.status != 200 and not ranged:
        return await backend_error(ctx, resp)
    sealed: Sealed | None = None
    try:
        sealed = await unseal(ctx, resp.headers, bucket, key, "GetObject")
        if sealed is None:
            resp.release()
            return await foreign_or_refuse(ctx)
        sse.check_customer_key(ctx, sealed.env)
        first_len = backend_length(resp.headers)
        ct_total = backend_total(resp.headers) if ranged else first_len
        etag = resp.headers.get("ETag", "")
        size = await resolve_size(ctx, bucket, key, sealed.env, etag, ct_total)
        if not objectinfo.in_parts(sealed.env.layout):
            dec: SDecryptor | KObjectDecryptor = SDecryptor(sealed.dek, sealed.env.object_id)
        elif promises_manifest(sealed):
            mf = await checked_manifest(ctx, bucket, sealed, size, parts_from_etag(etag))
            dec = KObjectDecryptor(sealed.dek, sealed.env.object_id, len(mf.parts), mf.parts)
            sealed.contents = manifests.with_checksum(sealed.contents, mf)  # its checksum, if any
        else:
            dec = KObjectDecryptor(sealed.dek, sealed.env.object_id, parts_from_etag(etag))
    except BaseException:
        resp.release()
        if sealed is not None:
            sealed.dek[:] = bytes(len(sealed.dek))
        raise
    if isinstance(dec, SDecryptor) and first_len == ct_total <= SMALL_OBJECT:
        try:
            return await _get_small(ctx, resp, sealed, dec, ct_total, size)
        finally:
            resp.release()
            sealed.dek[:] = bytes(len(sealed.dek))
    out = web.StreamResponse(status=200, headers=out_headers(ctx, resp.headers, sealed.env, sealed.contents, whole=True))
    out.headers["Accept-Ranges"] = "bytes"
    out.content_length = size
    try:
        await out.prepare(ctx.request)
        ciphertext = _batches(resp, ctx, bucket, key, first_len, ct_total, etag)
        return await send_plaintext(ctx, out, streams.decrypt_batches(dec, ciphertext, streams.OutBuffers()), size)
    finally:
        resp.release()
        sealed.dek[:] = bytes(len(sealed.dek))


async def _get_small(
    ctx: Ctx, resp: aiohttp.ClientResponse, sealed: Sealed, dec: SDecryptor, ct_total: int, size: int
) -> web.StreamResponse:
    """A small S object that came whole with its metadata: decrypted whole, then sent as one
    response.  Nothing is sent before the last chunk is authenticated, so a tampered or truncated
    object is a clean S3 error instead of a cut connection (issue 11: one response instead of a
    streamed one saves the per-request cost of the streaming pipeline)."""
    ciphertext = await read_at_most(resp, SMALL_OBJECT + 1)
    try:
        plaintext = dec.update(ciphertext)
        plaintext += dec.finalize()
    except FormatError:
        plaintext = None
    if plaintext is None or len(ciphertext) != ct_total or len(plaintext) != size:
        ctx.state.metrics.integrity_failures.inc()
        raise integrity_error()
    out = web.Response(status=200, body=plaintext,
                       headers=out_headers(ctx, resp.headers, sealed.env, sealed.contents, whole=True))
    out.headers["Accept-Ranges"] = "bytes"
    ctx.state.metrics.decrypted.inc(size)
    ctx.state.metrics.bytes_out.inc(size)
    return out


async def _batches(
    first: aiohttp.ClientResponse, ctx: Ctx, bucket: str, key: str, first_len: int, total: int, etag: str
) -> AsyncIterator[Sequence[bytes]]:
    """The stored ciphertext in batches of backend pieces (``streams.decrypt_batches``): the
    first response's one by one as they arrive (``readchunk``: never joined), then the segments
    after it whole, as fetched."""
    read = first.content.readchunk
    while True:
        data, end_of_chunk = await read()
        if data:
            yield (data,)
        elif not end_of_chunk:  # (b"", False): the end of the body
            break
    if first_len < total:
        async for pieces in _segments(ctx, bucket, key, first_len, total, etag, version_query(ctx)):
            yield pieces
