"""Reading encrypted objects: GET (whole, ranges, ``partNumber``) and HEAD.

Glue only: sizes, part tables and ``partNumber`` spans come from ``crypto.objectinfo``,
decryption from ``crypto.format`` / ``crypto.streams`` (no layout arithmetic here); the envelope
and the client-facing headers from ``http.objects``.  Bodies stream; nothing is read whole except part headers and small probes.  Imports ``http.objects``
(never the reverse).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import objectinfo, streams
from s3proxy.crypto.envelope import (
    Envelope,
)
from s3proxy.crypto.errors import (
    FormatError,
    ManifestMismatch,
)
from s3proxy.crypto.format import KObjectDecryptor, SDecryptor
from s3proxy.crypto.manifest import Manifest
from s3proxy.http import manifests, sse
from s3proxy.http.ctx import (
    Ctx,
    SendWatchdog,
    backend_error,
    read_at_most,
    relay,
)
from s3proxy.http.objects import (
    Sealed,
    abort_connection,
    backend_length,
    backend_total,
    integrity_error,
    out_headers,
    parts_from_etag,
    plaintext_size,
    read_conditions,
    read_envelope,
    read_headers,
    unencrypted,
    unseal,
    version_query,
)

PROBE_BYTES = 64 * 1024
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
        pn = _part_number(part_number)
        _check_no_range(ctx)
        table = await part_table(ctx, bucket, key, env, etag or "", ct_total, None)
        _check_part_exists(pn, len(table))
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


def _part_number(value: str) -> int:
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
def _check_no_range(ctx: Ctx) -> None:
    if "Range" in ctx.request.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter", 400)


def _check_part_exists(pn: int, parts: int) -> None:
    if pn > parts:
        raise S3Error(
            "InvalidPartNumber", "The requested partnumber is not satisfiable", 416,
            extra={"PartNumberRequested": str(pn), "ActualPartCount": str(parts)},
        )


async def get_object(ctx: Ctx) -> web.StreamResponse:
    rng = parse_range(ctx.request.headers.get("Range"))
    if rng is None and ctx.route.q("partNumber") is None:
        return await _get_full(ctx)
    return await _get_partial(ctx)


def _passthrough_query(ctx: Ctx) -> list[tuple[str, str]]:
    return [(k, v) for k, v in ctx.route.query if k != "partNumber"]


async def _segments(
    ctx: Ctx, bucket: str, key: str, start: int, total: int, etag: str, q: list[tuple[str, str]]
) -> AsyncIterator[bytes | bytearray | memoryview]:
    """Ciphertext [start, total) fetched as concurrent ranged GETs, yielded in order."""
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
            for piece in pieces:
                yield piece
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
    resp = await ctx.backend.request("GET", bucket, key, query=_passthrough_query(ctx), headers=headers)
    if resp.status == 416 and parallel:
        resp.release()
        return await _foreign_or_refuse(ctx)  # an empty object: never one of ours
    ranged = "Content-Range" in resp.headers and resp.status in (200, 206)
    if resp.status != 200 and not ranged:
        return await backend_error(ctx, resp)
    sealed: Sealed | None = None
    try:
        sealed = await unseal(ctx, resp.headers, bucket, key, "GetObject")
        if sealed is None:
            resp.release()
            return await _foreign_or_refuse(ctx)
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
        ciphertext = _chain(resp.content.iter_any(), ctx, bucket, key, first_len, ct_total, etag)
        return await send_plaintext(ctx, out, streams.decrypt_stream(dec, ciphertext), size)
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


def promises_manifest(sealed: Sealed) -> bool:
    return objectinfo.in_parts(sealed.env.layout) and sealed.contents is not None and sealed.contents.manifest


async def checked_manifest(ctx: Ctx, bucket: str, sealed: Sealed, size: int, n_parts: int | None) -> Manifest:
    """The object's completeness manifest, checked against what the listing-free facts say (total
    plaintext length, the ETag's part count); the integrity error if it is missing or differs."""
    from s3proxy.http import manifests

    try:
        mf = await manifests.get_manifest(ctx, bucket, sealed.env.object_id, sealed.dek)
        if mf.total != size or (n_parts is not None and n_parts != len(mf.parts)):
            raise ManifestMismatch("object length or part count differs from its manifest")
    except ManifestMismatch:
        ctx.state.metrics.integrity_failures.inc()
        raise integrity_error() from None
    return mf


async def send_plaintext(
    ctx: Ctx, out: web.StreamResponse, pieces: AsyncIterator[bytes | bytearray | memoryview], length: int,
    first: bytes | bytearray | memoryview = b"",
) -> web.StreamResponse:
    """Write authenticated plaintext to a prepared response: exactly ``length`` bytes or an aborted connection."""
    sent = 0
    watchdog = SendWatchdog(ctx)
    try:
        if first:
            sent += len(first)
            await watchdog.write(out, first)
        async for piece in pieces:
            sent += len(piece)
            if sent > length:  # more plaintext than the (unauthenticated) length promised
                raise integrity_error()
            await watchdog.write(out, piece)
    except BaseException as e:
        # Headers are out: the only honest signal left is a broken connection.  Only a failed
        # authentication counts as an integrity failure, not a client that went away.
        abort_connection(ctx, integrity=isinstance(e, FormatError | S3Error) and not watchdog.timed_out)
        raise ConnectionResetError(f"GetObject aborted mid-body: {type(e).__name__}") from None
    finally:
        watchdog.close()
    if sent != length:
        abort_connection(ctx)
        raise ConnectionResetError("GetObject size mismatch")
    ctx.state.metrics.decrypted.inc(length)
    ctx.state.metrics.bytes_out.inc(length)
    await out.write_eof()
    return out


async def _chain(
    first: AsyncIterator[bytes], ctx: Ctx, bucket: str, key: str, first_len: int, total: int, etag: str
) -> AsyncIterator[bytes | bytearray | memoryview]:
    async for chunk in first:
        yield chunk
    if first_len < total:
        async for seg in _segments(ctx, bucket, key, first_len, total, etag, version_query(ctx)):
            yield seg


async def fetch_bytes(ctx: Ctx, bucket: str, key: str, start: int, end: int, etag: str, query: list[tuple[str, str]]) -> bytes:
    """Ciphertext [start, end) of a stored object, pinned to ``etag``."""
    if end <= start:
        return b""
    resp = await ctx.backend.request(
        "GET", bucket, key, query=query, headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag}
    )
    try:
        if resp.status not in (200, 206):
            raise S3Error("PreconditionFailed", "The object changed while it was being read.", 412) if resp.status == 412 else integrity_error()
        data = await resp.read()
    finally:
        resp.release()
    if not _is_range_response(resp, start, end):
        data = data[start:end]  # the backend ignored Range and sent the whole object
    if len(data) != end - start:
        raise integrity_error()
    return data


async def fetch_pieces(
    ctx: Ctx, bucket: str, key: str, start: int, end: int, etag: str, query: list[tuple[str, str]]
) -> list[bytes]:
    """Ciphertext [start, end) pinned to ``etag``, as the pieces the backend sent: no join, no
    second copy (joining each 4 MiB segment was a quarter of a large GET's CPU)."""
    if end <= start:
        return []
    resp = await ctx.backend.request(
        "GET", bucket, key, query=query, headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag}
    )
    try:
        if resp.status not in (200, 206):
            raise S3Error("PreconditionFailed", "The object changed while it was being read.", 412) if resp.status == 412 else integrity_error()
        if not _is_range_response(resp, start, end):
            data = (await resp.read())[start:end]  # the backend ignored Range and sent the whole object
            if len(data) != end - start:
                raise integrity_error()
            return [data]
        pieces: list[bytes] = []
        n, want = 0, end - start
        async for piece in resp.content.iter_any():
            n += len(piece)
            if n > want:
                raise integrity_error()
            pieces.append(piece)
    finally:
        resp.release()
    if n != want:
        raise integrity_error()
    return pieces


def _is_range_response(resp: aiohttp.ClientResponse, start: int, end: int) -> bool:
    """206, or a 200 that still carries the asked-for Content-Range (rclone's S3 server does that)."""
    if resp.status == 206:
        return True
    cr = resp.headers.get("Content-Range", "")
    return resp.status == 200 and cr.startswith(f"bytes {start}-{end - 1}/")


async def part_table(
    ctx: Ctx, bucket: str, key: str, env: Envelope, etag: str, ct_total: int, first_header: bytes | None
) -> list[tuple[int, int]]:
    """[(ciphertext offset, ciphertext length)] of each part, by position: one part for an S
    object, else ``crypto.streams.k_part_table`` (the uniform-size guess checked against the part
    headers, else a walk of them, part numbers strictly increasing), cached per ETag."""
    single = objectinfo.single_part_table(env.layout, ct_total)
    if single is not None:
        return single
    cache_key = (bucket, key, etag)
    cached = ctx.state.part_tables.get(cache_key)
    if cached is not None:
        return [(cached[2 * i], cached[2 * i + 1]) for i in range(len(cached) // 2)]
    q = version_query(ctx)

    async def fetch(start: int, end: int) -> bytes:
        return await fetch_bytes(ctx, bucket, key, start, end, etag, q)

    try:
        table = await streams.k_part_table(fetch, ct_total, parts_from_etag(etag), first_header)
    except FormatError:
        raise integrity_error() from None
    if len(ctx.state.part_tables) > 1024:
        ctx.state.part_tables.clear()
    ctx.state.part_tables[cache_key] = tuple(x for pair in table for x in pair)
    return table


async def _get_partial(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    probe = await ctx.backend.request(
        "GET", bucket, key, query=_passthrough_query(ctx),
        headers={**await read_conditions(ctx), "Range": f"bytes=0-{PROBE_BYTES - 1}"},
    )
    if probe.status not in (200, 206):
        if probe.status == 416:
            probe.release()
            return await _foreign_or_refuse(ctx)
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
        return await _foreign_or_refuse(ctx)
    with sse.held_dek(sealed.dek):  # zeroed once the body is sent or the read failed
        return await _send_range(ctx, sealed, probe.headers, head, total, etag)


async def _send_range(
    ctx: Ctx, sealed: Sealed, probe_headers: Mapping[str, str], head: bytes, total: int, etag: str
) -> web.StreamResponse:
    """The 206 of ``_get_partial``: a ``Range`` or a ``partNumber`` of the object ``sealed`` opened."""
    bucket, key, q = ctx.bucket, ctx.key, version_query(ctx)
    env = sealed.env
    sse.check_customer_key(ctx, env)
    table = await part_table(ctx, bucket, key, env, etag, total, head[: objectinfo.header_size(env.layout)] or None)
    size = await resolve_size(ctx, bucket, key, env, etag, total)
    part_number = ctx.route.q("partNumber")
    hdrs = out_headers(ctx, probe_headers, env, sealed.contents)
    hdrs["Accept-Ranges"] = "bytes"
    if part_number is not None:
        pn = _part_number(part_number)
        _check_no_range(ctx)
        _check_part_exists(pn, len(table))
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
    pieces = decrypt_range(ctx, sealed, table, total, start, end, etag, head, q)
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


async def _foreign_or_refuse(ctx: Ctx) -> web.StreamResponse:
    if ctx.bucket_settings.s3ec.read:
        from s3proxy.http import s3ec_read

        served = await s3ec_read.get(ctx, _passthrough_query(ctx), read_headers(ctx))
        if served is not None:
            return served
    if not ctx.bucket_settings.allows_unencrypted(ctx.key):
        raise unencrypted(ctx)
    hdrs = read_headers(ctx)
    if "Range" in ctx.request.headers:
        hdrs["Range"] = ctx.request.headers["Range"]
    return await relay(ctx, await ctx.backend.request("GET", ctx.bucket, ctx.key, query=list(ctx.route.query), headers=hdrs))


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
        if not _is_range_response(resp, start, end):
            raise integrity_error() if resp.status != 412 else S3Error("PreconditionFailed", "The object changed while it was being read.", 412)
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.release()


async def decrypt_range(
    ctx: Ctx, sealed: Sealed, table: list[tuple[int, int]], total: int, start: int, end: int, etag: str,
    head: bytes, q: list[tuple[str, str]], bucket: str | None = None, key: str | None = None,
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
        pieces = streams.decrypt_k_range(dek, env.object_id, table, start, end, fetch, stream)
    else:
        header = await fetch(0, objectinfo.header_size(env.layout))
        p = objectinfo.size_from_table(env.layout, table)
        pieces = streams.decrypt_s_range(dek, env.object_id, header, p, start, end, stream)
    async for out in pieces:
        yield out


async def resolve_size(
    ctx: Ctx, bucket: str, key: str, env: Envelope, etag: str, ct_total: int, first_header: bytes | None = None
) -> int:
    """Plaintext size; for multipart objects on backends whose ETags lack ``-N``, walk the part headers."""
    if objectinfo.needs_part_table(env.layout, etag):
        table = await part_table(ctx, bucket, key, env, etag, ct_total, first_header)
        return objectinfo.size_from_table(env.layout, table)
    return plaintext_size(env, ct_total, etag)
