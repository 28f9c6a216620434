"""Reading encrypted objects: GET (whole, ranges, ``partNumber``) and HEAD.

Glue only: sizes and ranges come from ``crypto.sizes``, decryption from ``crypto.format`` /
``crypto.streams``; the envelope and the client-facing headers from ``http.objects``.  Bodies
stream; nothing is read whole except part headers and small probes.  Imports ``http.objects``
(never the reverse).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import (
    Envelope,
)
from s3proxy.crypto.errors import (
    FormatError,
    ManifestMismatch,
)
from s3proxy.crypto.format import (
    KPartDecryptor,
    SDecryptor,
    SRangeDecryptor,
    parse_k_header,
)
from s3proxy.crypto.manifest import Manifest
from s3proxy.crypto.streams import KObjectDecryptor
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
    resp = await ctx.state.backend.request(
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
            return await relay(ctx, await ctx.state.backend.request("HEAD", bucket, key, query=list(ctx.route.query), headers=read_headers(ctx)))
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
    if env.layout == "K":
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
        start, c_part = table[pn - 1]
        p_start = start - (pn - 1) * (sizes.K_PART_OVERHEAD if env.layout == "K" else 0)
        plen = c_part - sizes.K_PART_OVERHEAD if env.layout == "K" else size
        hdrs["Content-Range"] = f"bytes {p_start}-{p_start + plen - 1}/{size}" if plen else f"bytes */{size}"
        if env.layout == "K":
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
    resp = await ctx.state.backend.request("GET", bucket, key, query=_passthrough_query(ctx), headers=headers)
    if resp.status == 416 and parallel:
        resp.release()
        return await _foreign_or_refuse(ctx)  # an empty object: never one of ours
    ranged = "Content-Range" in resp.headers and resp.status in (200, 206)
    if resp.status != 200 and not ranged:
        return await backend_error(ctx, resp)
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
        if sealed.env.layout == "S":
            dec: SDecryptor | KObjectDecryptor = SDecryptor(sealed.dek, sealed.env.object_id)
        elif promises_manifest(sealed):
            mf = await checked_manifest(ctx, bucket, sealed, size, parts_from_etag(etag))
            dec = KObjectDecryptor(sealed.dek, sealed.env.object_id, len(mf.parts), mf.parts)
            sealed.contents = manifests.with_checksum(sealed.contents, mf)  # its checksum, if any
        else:
            dec = KObjectDecryptor(sealed.dek, sealed.env.object_id, parts_from_etag(etag))
    except BaseException:
        resp.release()
        raise
    if isinstance(dec, SDecryptor) and first_len == ct_total <= SMALL_OBJECT:
        try:
            return await _get_small(ctx, resp, sealed, dec, ct_total, size)
        finally:
            resp.release()
    out = web.StreamResponse(status=200, headers=out_headers(ctx, resp.headers, sealed.env, sealed.contents, whole=True))
    out.headers["Accept-Ranges"] = "bytes"
    out.content_length = size
    try:
        await out.prepare(ctx.request)
        ciphertext = _chain(resp.content.iter_any(), ctx, bucket, key, first_len, ct_total, etag)
        return await send_plaintext(ctx, out, _decrypt_stream(dec, ciphertext), size)
    finally:
        resp.release()


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
    return sealed.env.layout == "K" and sealed.contents is not None and sealed.contents.manifest


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


async def _decrypt_stream(
    dec: SDecryptor | KObjectDecryptor, ciphertext: AsyncIterator[bytes | bytearray | memoryview]
) -> AsyncIterator[bytes | bytearray | memoryview]:
    async for chunk in ciphertext:
        pieces = dec.update(chunk)
        for piece in pieces if isinstance(pieces, list) else (pieces,):
            if piece:
                yield piece
    tail = dec.finalize()
    if tail:
        yield tail


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
    resp = await ctx.state.backend.request(
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
    resp = await ctx.state.backend.request(
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
    """[(ciphertext offset, ciphertext length)] of each part, by position."""
    if env.layout == "S":
        return [(0, ct_total)]
    cache_key = (bucket, key, etag)
    cached = ctx.state.part_tables.get(cache_key)
    if cached is not None:
        return [(cached[2 * i], cached[2 * i + 1]) for i in range(len(cached) // 2)]
    n = parts_from_etag(etag)
    if n is not None and n < 1:
        raise integrity_error()
    q = version_query(ctx)
    H, OVH = sizes.K_HEADER_SIZE, sizes.K_PART_OVERHEAD
    if first_header is None:
        first_header = await fetch_bytes(ctx, bucket, key, 0, H, etag, q)
    c1, pn1 = _header_info(first_header)
    table: list[tuple[int, int]] | None = None
    last = ct_total - ((n or 1) - 1) * c1
    if n is not None and OVH <= last <= c1:
        guess = [(i * c1, c1) for i in range(n - 1)] + [((n - 1) * c1, last)]
        # Check the guess against the authenticated length in each part header.
        headers = await asyncio.gather(*(fetch_bytes(ctx, bucket, key, off, off + H, etag, q) for off, _ in guess[1:]))
        infos = [_header_info_or_none(h) for h in headers]
        if all(i is not None and i[0] == gc for i, (_, gc) in zip(infos, guess[1:], strict=True)):
            _check_order([pn1, *(i[1] for i in infos if i is not None)])
            table = guess
    if table is None:
        # Walk the authenticated-length part headers with small ranged GETs.
        table, off, numbers = [], 0, []
        while off < ct_total and len(table) < (n or sizes.MAX_PART_NUMBER):
            h = first_header if off == 0 else await fetch_bytes(ctx, bucket, key, off, off + H, etag, q)
            c, pn = _header_info(h)
            table.append((off, c))
            numbers.append(pn)
            off += c
        if off != ct_total or (n is not None and len(table) != n):
            raise integrity_error()
        _check_order(numbers)
    if len(ctx.state.part_tables) > 1024:
        ctx.state.part_tables.clear()
    ctx.state.part_tables[cache_key] = tuple(x for pair in table for x in pair)
    return table


def _check_order(part_numbers: list[int]) -> None:
    """Parts keep the order they were completed in: their numbers strictly increase."""
    if any(b <= a for a, b in zip(part_numbers, part_numbers[1:], strict=False)):
        raise integrity_error()


def _header_info_or_none(header: bytes) -> tuple[int, int] | None:
    try:
        h = parse_k_header(header)
    except FormatError:
        return None  # not a part boundary: the uniform-parts guess was wrong
    return h.plaintext_length + sizes.K_PART_OVERHEAD, h.part_number


def _header_info(header: bytes) -> tuple[int, int]:
    """(ciphertext length, part number) from a part header (authenticated later, on use)."""
    try:
        h = parse_k_header(header)
    except FormatError:
        raise integrity_error() from None
    return h.plaintext_length + sizes.K_PART_OVERHEAD, h.part_number


async def _get_partial(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    q = version_query(ctx)
    probe = await ctx.state.backend.request(
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
    env = sealed.env
    sse.check_customer_key(ctx, env)
    table = await part_table(ctx, bucket, key, env, etag, total, head[: sizes.K_HEADER_SIZE] if env.layout == "K" else None)
    size = await resolve_size(ctx, bucket, key, env, etag, total)
    part_number = ctx.route.q("partNumber")
    hdrs = out_headers(ctx, probe.headers, env, sealed.contents)
    hdrs["Accept-Ranges"] = "bytes"
    if part_number is not None:
        pn = _part_number(part_number)
        _check_no_range(ctx)
        _check_part_exists(pn, len(table))
        OVH = sizes.K_PART_OVERHEAD if env.layout == "K" else 0
        start = table[pn - 1][0] - (pn - 1) * OVH
        end = start + (table[pn - 1][1] - OVH if env.layout == "K" else size)
        if env.layout == "K":
            hdrs["x-amz-mp-parts-count"] = str(len(table))
    else:
        rng = parse_range(ctx.request.headers.get("Range"))
        assert rng is not None
        start, end = rng.resolve(size)
    length = end - start
    if promises_manifest(sealed) and end > size - (table[-1][1] - sizes.K_PART_OVERHEAD):  # reaches the last part
        mf = await checked_manifest(ctx, bucket, sealed, size, len(table))
        try:
            mf.check_parts([(None, c - sizes.K_PART_OVERHEAD) for _, c in table])
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
    return await relay(ctx, await ctx.state.backend.request("GET", ctx.bucket, ctx.key, query=list(ctx.route.query), headers=hdrs))


async def _stream_ciphertext(
    ctx: Ctx, bucket: str, key: str, start: int, end: int, etag: str, q: list[tuple[str, str]], head: bytes
) -> AsyncIterator[bytes | bytearray | memoryview]:
    if end <= len(head):
        yield head[start:end]
        return
    resp = await ctx.state.backend.request(
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
    """Authenticated plaintext [start, end), fetching only the chunks needed."""
    env, dek = sealed.env, sealed.dek
    bucket, key = bucket or ctx.bucket, key or ctx.key
    if start >= end:
        return
    if env.layout == "S":
        p = total and sizes.s_plaintext_size(total)
        span = sizes.s_span(p, start, end)
        if len(head) < sizes.S_HEADER_SIZE:
            head = await fetch_bytes(ctx, bucket, key, 0, sizes.S_HEADER_SIZE, etag, q)
        dec = SRangeDecryptor(dek, env.object_id, head[: sizes.S_HEADER_SIZE], p, span)
        async for chunk in _stream_ciphertext(ctx, bucket, key, span.ct_start, span.ct_end, etag, q, head):
            out = dec.update(chunk)
            if out:
                yield out
        tail = dec.finalize()
        if tail:
            yield tail
        return
    OVH, H = sizes.K_PART_OVERHEAD, sizes.K_HEADER_SIZE
    p_off = 0
    last_pn = 0
    for off, c_part in table:
        p_part = c_part - OVH
        a, b = max(start, p_off), min(end, p_off + p_part)
        p_off += p_part
        if a >= b:
            continue
        header = head[off: off + H] if off + H <= len(head) else await fetch_bytes(ctx, bucket, key, off, off + H, etag, q)
        span = sizes.k_span(p_part, a - (p_off - p_part), b - (p_off - p_part))
        kd = KPartDecryptor(dek, env.object_id, header, c_part, span)
        if kd.part_number <= last_pn:
            raise integrity_error()
        last_pn = kd.part_number
        async for chunk in _stream_ciphertext(ctx, bucket, key, off + span.ct_start, off + span.ct_end, etag, q, head):
            out = kd.update(chunk)
            if out:
                yield out
        tail = kd.finalize()
        if tail:
            yield tail


async def resolve_size(
    ctx: Ctx, bucket: str, key: str, env: Envelope, etag: str, ct_total: int, first_header: bytes | None = None
) -> int:
    """Plaintext size; for multipart objects on backends whose ETags lack ``-N``, walk the part headers."""
    if env.layout == "K" and parts_from_etag(etag) is None:
        table = await part_table(ctx, bucket, key, env, etag, ct_total, first_header)
        return ct_total - len(table) * sizes.K_PART_OVERHEAD
    return plaintext_size(env, ct_total, etag)
