"""What every read of an encrypted object shares (split from ``http.reads``, issue 10): ranged
ciphertext fetches pinned to an ETag (``fetch_bytes``, ``fetch_pieces``, ``body_pieces``), the part
table and plaintext size (``part_table``, ``resolve_size``), the completeness manifest check,
sending authenticated plaintext (``send_plaintext``), and the answer for objects that are not ours
(``foreign_or_refuse``).  Imported by ``http.reads`` and ``http.reads_range``, never the reverse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.crypto import objectinfo, streams
from s3proxy.crypto.envelope import Envelope
from s3proxy.crypto.errors import FormatError, ManifestMismatch
from s3proxy.crypto.manifest import Manifest
from s3proxy.http import manifests
from s3proxy.http.ctx import Ctx, SendWatchdog, relay
from s3proxy.http.objects import (
    Sealed,
    abort_connection,
    integrity_error,
    parts_from_etag,
    plaintext_size,
    read_headers,
    unencrypted,
    version_query,
)


def passthrough_query(ctx: Ctx) -> list[tuple[str, str]]:
    return [(k, v) for k, v in ctx.route.query if k != "partNumber"]


async def foreign_or_refuse(ctx: Ctx) -> web.StreamResponse:
    if ctx.bucket_settings.s3ec.read:
        from s3proxy.http import s3ec_read

        served = await s3ec_read.get(ctx, passthrough_query(ctx), read_headers(ctx))
        if served is not None:
            return served
    if not ctx.bucket_settings.allows_unencrypted(ctx.key):
        raise unencrypted(ctx)
    hdrs = read_headers(ctx)
    if "Range" in ctx.request.headers:
        hdrs["Range"] = ctx.request.headers["Range"]
    return await relay(ctx, await ctx.backend.request("GET", ctx.bucket, ctx.key, query=list(ctx.route.query), headers=hdrs))


def promises_manifest(sealed: Sealed) -> bool:
    return objectinfo.in_parts(sealed.env.layout) and sealed.contents is not None and sealed.contents.manifest


async def checked_manifest(ctx: Ctx, bucket: str, sealed: Sealed, size: int, n_parts: int | None) -> Manifest:
    """The object's completeness manifest, checked against what the listing-free facts say (total
    plaintext length, the ETag's part count); the integrity error if it is missing or differs."""
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
    if not is_range_response(resp, start, end):
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
        if not is_range_response(resp, start, end):
            data = (await resp.read())[start:end]  # the backend ignored Range and sent the whole object
            if len(data) != end - start:
                raise integrity_error()
            return [data]
        want, declared = end - start, resp.content_length
        if declared is not None and declared != want:  # aiohttp never reads past a Content-Length
            raise integrity_error()
        pieces: list[bytes] = []
        read, keep, n = resp.content.readchunk, pieces.append, 0
        while True:
            data, end_of_chunk = await read()
            if data:
                keep(data)
                if declared is None and (n := n + len(data)) > want:  # no length: bound it here
                    raise integrity_error()
            elif not end_of_chunk:
                break
    finally:
        resp.release()
    if sum(map(len, pieces)) != want:
        raise integrity_error()
    return pieces


async def body_pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as the pieces aiohttp received, never joined (``iter_any`` joins whatever is
    buffered: a memmove of most of a large body, issue 11); ``readchunk`` itself, without the
    iterator around it."""
    read = resp.content.readchunk
    while True:
        data, end_of_chunk = await read()
        if data:
            yield data
        elif not end_of_chunk:  # (b"", False): the end of the body
            return


def is_range_response(resp: aiohttp.ClientResponse, start: int, end: int) -> bool:
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


async def resolve_size(
    ctx: Ctx, bucket: str, key: str, env: Envelope, etag: str, ct_total: int, first_header: bytes | None = None
) -> int:
    """Plaintext size; for multipart objects on backends whose ETags lack ``-N``, walk the part headers."""
    if objectinfo.needs_part_table(env.layout, etag):
        table = await part_table(ctx, bucket, key, env, etag, ct_total, first_header)
        return objectinfo.size_from_table(env.layout, table)
    return plaintext_size(env, ct_total, etag)
