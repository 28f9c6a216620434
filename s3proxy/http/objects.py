"""Object operations on encrypted buckets: PUT, GET (ranges, parts), HEAD, copy.

Glue only: the byte format is ``crypto.format``/``crypto.sizes``, metadata is
``crypto.envelope``, keys come from the app's ``KeyManager``.  Bodies stream
both ways; nothing is read whole except part headers and small probes.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws import checksums, xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.ranges import parse_range
from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import (
    SEALED_VERSION,
    USER_METADATA_LIMIT,
    Envelope,
    SealContents,
    decode_metadata,
    encode_metadata,
    is_reserved,
    make_envelope,
    new_object_id,
    open_seal,
    rebind,
    verify_binding,
)
from s3proxy.crypto.errors import FormatError, ManifestMismatch, MetadataTooLarge
from s3proxy.crypto.format import KPartDecryptor, SDecryptor, SEncryptor, SRangeDecryptor, parse_k_header
from s3proxy.crypto.manifest import Manifest
from s3proxy.crypto.streams import KObjectDecryptor
from s3proxy.http import sse
from s3proxy.http.auth import RequestBody
from s3proxy.http.ctx import (
    Ctx,
    SendWatchdog,
    backend_error,
    forward_headers,
    read_at_most,
    relay,
    response_headers,
    send_streamed,
)

READ_SIZE = 1 << 20
PROBE_BYTES = 64 * 1024
META = "x-amz-meta-"
CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# Backend response headers that describe ciphertext and never reach the client.
CIPHERTEXT_HEADERS = ("content-range", "x-amz-mp-parts-count", "content-md5")
_ETAG_PARTS = re.compile(r"-([0-9]{1,5})\"?$")


def integrity_error() -> S3Error:
    """A stored object that fails authentication. A 4xx, not a 500: retrying cannot help, and
    clients retry 5xx answers (rclone for 21 minutes); the metric counts it for operators."""
    return S3Error(
        "InvalidObjectState",
        "The stored object failed authentication (tampered, truncated or misplaced ciphertext).",
        403,
    )


def bad_backend(what: str) -> S3Error:
    return S3Error("ServiceUnavailable", f"the storage backend sent an invalid {what}", 503)


def backend_length(headers: Mapping[str, str]) -> int:
    """Content-Length of a backend response: ASCII digits, else a 503 (never a 500)."""
    n = parse_uint(headers.get("Content-Length", "0").strip())
    if n is None:
        raise bad_backend("Content-Length")
    return n


def backend_total(headers: Mapping[str, str]) -> int:
    """The complete length from a backend Content-Range (``bytes a-b/total``)."""
    n = parse_uint(headers.get("Content-Range", "").rsplit("/", 1)[-1].strip())
    if n is None:
        raise bad_backend("Content-Range")
    return n


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {k[len(META):].lower(): v for k, v in headers.items() if k.lower().startswith(META)}


def metadata_too_large() -> S3Error:
    return S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size.", 400)


def _wire_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def client_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's ``x-amz-meta-*`` (names lower case, repeated headers joined with ``,`` as on
    the wire to the backend); over S3's 2 KB (names plus values) is ``MetadataTooLarge``."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        n = k.lower()
        if n.startswith(META):
            name = n[len(META):]
            out[name] = out[name] + "," + v if name in out else v
    if sum(_wire_len(k) + _wire_len(v) for k, v in out.items()) > USER_METADATA_LIMIT:
        raise metadata_too_large()
    return out


def seal_for_write(
    ctx: Ctx, bucket: str, client_headers: Mapping[str, str],
    checksum: Mapping[str, str] | None = None, etag: str | None = None,
) -> SealContents | None:
    """What a new object's sealed block holds (None: the bucket writes v1, metadata in plaintext)."""
    meta = client_metadata(client_headers)
    if not ctx.state.settings.bucket(bucket).seal_metadata:
        return None
    return SealContents(meta, checksum, etag)


def envelope_metadata(env: Envelope) -> dict[str, str]:
    """``encode_metadata`` with the S3 error a client gets when its sealed metadata does not fit."""
    try:
        return encode_metadata(env)
    except MetadataTooLarge:
        raise metadata_too_large() from None


def parts_from_etag(etag: str | None) -> int | None:
    if not etag:
        return None
    m = _ETAG_PARTS.search(etag.strip())
    return int(m.group(1)) if m else None


@dataclass
class Sealed:
    env: Envelope
    dek: bytearray
    contents: SealContents | None = None  # the opened sealed block (envelope v2)


def plaintext_size(env: Envelope, ct_total: int, etag: str | None) -> int:
    try:
        if env.layout == "S":
            return sizes.s_plaintext_size(ct_total)
        n = parts_from_etag(etag)
        if n is None:
            raise integrity_error()
        return sizes.k_object_plaintext_size(ct_total, n)
    except FormatError:
        raise integrity_error() from None


async def resolve_size(
    ctx: Ctx, bucket: str, key: str, env: Envelope, etag: str, ct_total: int, first_header: bytes | None = None
) -> int:
    """Plaintext size; for multipart objects on backends whose ETags lack ``-N``, walk the part headers."""
    if env.layout == "K" and parts_from_etag(etag) is None:
        table = await part_table(ctx, bucket, key, env, etag, ct_total, first_header)
        return ct_total - len(table) * sizes.K_PART_OVERHEAD
    return plaintext_size(env, ct_total, etag)


def read_envelope(headers: Mapping[str, str]) -> Envelope | None:
    try:
        return decode_metadata(user_metadata(headers))
    except FormatError as e:
        raise S3Error("InvalidObjectState", f"unreadable s3proxy metadata: {type(e).__name__}", 403) from None


async def unseal(ctx: Ctx, headers: Mapping[str, str], bucket: str, key: str, op: str) -> Sealed | None:
    """Envelope + DEK of a stored object, its placement checked; None if not ours."""
    env = read_envelope(headers)
    if env is None:
        return None
    dek = await sse.unwrap(ctx, env, bucket, key, op)
    try:
        verify_binding(env, dek, bucket, key)
    except FormatError:
        ctx.state.metrics.integrity_failures.inc()
        raise S3Error(
            "AccessDenied", "The object's encryption metadata is not bound to this bucket and key.", 403
        ) from None
    return Sealed(env, dek, opened_seal(ctx, env, dek))


def opened_seal(ctx: Ctx, env: Envelope, dek: bytearray) -> SealContents | None:
    """``open_seal`` (binding verified before), a failure answered as an integrity error."""
    try:
        return open_seal(env, dek)
    except FormatError:
        ctx.state.metrics.integrity_failures.inc()
        raise integrity_error() from None


def unencrypted(ctx: Ctx) -> S3Error:
    return S3Error(
        "InvalidObjectState",
        "This object was not written through s3proxy (no encryption metadata); refusing to serve it.",
        403,
    )


def out_headers(
    ctx: Ctx, backend_headers: Mapping[str, str], env: Envelope, contents: SealContents | None = None,
    *, whole: bool = False,
) -> CIMultiDict[str]:
    """Client response headers of a stored object: ciphertext headers dropped, SSE headers ours;
    for an envelope v2 object the user metadata is the sealed block's, never the backend's, and so
    are the ETag (when sealed) and, for a ``whole`` object read with ``x-amz-checksum-mode:
    ENABLED``, the checksum."""
    hidden: tuple[str, ...] = ("x-amz-checksum-", "x-amz-server-side-encryption")
    if env.version >= SEALED_VERSION:
        hidden = (*hidden, META)
    drop = [h.lower() for h in backend_headers if h.lower().startswith(hidden)]
    hdrs = response_headers(backend_headers, ctx.request_id, drop=[*CIPHERTEXT_HEADERS, *drop])
    hdrs.update(sse.response_headers(ctx, env))
    etag = client_etag(backend_headers.get("ETag"), contents)
    if etag is not None:
        hdrs["ETag"] = etag
    if contents is not None:
        for name, value in contents.meta.items():
            hdrs[META + name] = value
        mode = ctx.request.headers.get("x-amz-checksum-mode", "")
        if whole and contents.checksum is not None and mode.upper() == "ENABLED":
            hdrs.update(checksums.response_checksum(contents.checksum))
    return hdrs


_PLAIN_ETAG = re.compile(r'"?[0-9a-fA-F]{32}"?')


def client_etag(backend_etag: str | None, contents: SealContents | None) -> str | None:
    """The ETag clients see for an encrypted object (docs/FORMAT.md 8, "Client-facing ETag"): the
    sealed MD5 of the plaintext when there is one; else a plain (MD5-shaped) backend ETag, the MD5
    of the *ciphertext*, marked as not an MD5 with ``-1``, as listings show it; else (``-N``) the
    backend's."""
    if contents is not None and contents.etag is not None:
        return contents.etag
    if backend_etag is not None and _PLAIN_ETAG.fullmatch(backend_etag.strip()):
        return '"' + backend_etag.strip().strip('"') + '-1"'
    return backend_etag


def abort_connection(ctx: Ctx, *, integrity: bool = True) -> None:
    if integrity:
        ctx.state.metrics.integrity_failures.inc()
    transport = ctx.request.transport
    if transport is not None:
        transport.abort()


def quote_etags(value: str) -> str:
    """S3 accepts unquoted ETags in If-Match-like headers; some backends compare literally."""
    out = []
    for tok in value.split(","):
        t = tok.strip()
        if t and t != "*" and not t.startswith(('"', "W/")):
            t = f'"{t}"'
        out.append(t)
    return ", ".join(out)


def cond_headers(ctx: Ctx, prefix: str = "") -> dict[str, str]:
    """Conditional headers (``prefix`` = "x-amz-copy-source-" for a copy's source), ETags quoted."""
    out = {}
    for k, v in ctx.request.headers.items():
        name = k.lower()
        if name.startswith(prefix) and name[len(prefix):] in CONDITIONAL:
            base = name[len(prefix):]
            out[base] = quote_etags(v) if base in ("if-match", "if-none-match") else v
    return out


def read_headers(ctx: Ctx) -> dict[str, str]:
    """Headers a read (GET/HEAD) forwards: the conditions, and ``Origin`` so that the backend adds
    the bucket's CORS response headers (kept by ``out_headers``)."""
    out = cond_headers(ctx)
    origin = ctx.request.headers.get("Origin")
    if origin is not None:
        out["origin"] = origin
    return out


async def read_conditions(ctx: Ctx) -> dict[str, str]:
    """``read_headers`` with client-facing ETags in If-Match/If-None-Match mapped to the backend's."""
    headers = read_headers(ctx)
    op = "HeadObject" if ctx.request.method == "HEAD" else "GetObject"
    headers.update(await mapped_conditions(ctx, ctx.bucket, ctx.key, version_query(ctx), op=op))
    return headers


_ETAG_CONDITIONS = ("if-match", "if-none-match")


async def mapped_conditions(
    ctx: Ctx, bucket: str, key: str, vq: list[tuple[str, str]], prefix: str = "", op: str = "CopyObject"
) -> dict[str, str]:
    """``cond_headers`` with the object's client-facing ETag (sealed ``"e"``, envelope v2) replaced
    by its backend ETag.  Costs one HEAD and one DEK lookup, only when an If-Match or If-None-Match
    is present; the request made with the result is pinned to that backend ETag, so an object
    replaced in between fails If-Match and passes If-None-Match, as it should.  Anything unusual
    (no object, no envelope, a failing one) leaves the conditions as they are: the request that
    follows answers it."""
    conds = cond_headers(ctx, prefix)
    if not any(c in conds for c in _ETAG_CONDITIONS):
        return conds
    head = await ctx.state.backend.request("HEAD", bucket, key, query=vq)
    head.release()
    backend_etag = head.headers.get("ETag")
    if head.status != 200 or not backend_etag:
        return conds
    try:
        env = decode_metadata(user_metadata(head.headers))
    except FormatError:
        return conds
    if env is None:
        return conds
    aliases = {client_etag(backend_etag, None)}
    if env.version >= SEALED_VERSION:
        dek = await sse.unwrap(ctx, env, bucket, key, op, copy_source=bool(prefix))
        try:
            verify_binding(env, dek, bucket, key)
            aliases.add(client_etag(backend_etag, open_seal(env, dek)))
        except FormatError:
            return conds
        finally:
            dek[:] = bytes(len(dek))
    names = {a.strip('"') for a in aliases if a is not None and a != backend_etag}
    for c in _ETAG_CONDITIONS:
        if c in conds:
            conds[c] = _map_etags(conds[c], names, backend_etag)
    return conds


def _map_etags(value: str, client: set[str], backend: str) -> str:
    out = []
    for tok in value.split(","):
        t = tok.strip()
        weak = t.startswith("W/")
        if (t[2:] if weak else t).strip('"') in client:
            t = ("W/" if weak else "") + backend
        out.append(t)
    return ", ".join(out)


def version_query(ctx: Ctx) -> list[tuple[str, str]]:
    return [(k, v) for k, v in ctx.route.query if k == "versionId"]


# --------------------------------------------------------------------- PUT


def write_headers(ctx: Ctx, env: Envelope, client_headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Backend headers for a write: the client's (``client_headers``, default the request's) plus the envelope."""
    src = ctx.request.headers if client_headers is None else client_headers
    headers = forward_headers(src, body_changed=True)
    if env.version >= SEALED_VERSION:  # the client's metadata is in the sealed block only
        headers = {k: v for k, v in headers.items() if not k.startswith(META)}
    for k, v in envelope_metadata(env).items():
        headers[META + k] = v
    return headers


class PlainBody(Protocol):
    """A plaintext body of known length: ``RequestBody`` for PUT, the file part of a POST form."""

    length: int | None

    def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]: ...

    def verified_checksums(self) -> dict[str, str]: ...


async def put_object(ctx: Ctx) -> web.StreamResponse:
    return await store_object(ctx, ctx.bucket, ctx.key, RequestBody(ctx.request, ctx.caller.auth), ctx.request.headers)


async def store_object(
    ctx: Ctx, bucket: str, key: str, body: PlainBody, client_headers: Mapping[str, str]
) -> web.StreamResponse:
    """Encrypt ``body`` as one S-layout object at bucket/key; ``client_headers`` carry its metadata.

    Shared by PutObject and POST object (browser forms).  Answers 200 with the client-facing headers.
    """
    if body.length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    if body.length > ctx.state.settings.limits.max_object_size:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.", 400)
    # Values the client gave in headers, kept sealed; the backend PUT fails unless they verify.
    checksum = checksums.stored_checksum(body.verified_checksums())
    etag = checksums.etag_from_md5(client_headers.get("Content-MD5"))
    sealed = seal_for_write(ctx, bucket, client_headers, checksum, etag)
    dek, wrapped, context = await sse.data_key_for_write(ctx, bucket, key, body.length, "PutObject")
    oid = new_object_id()
    env = make_envelope(dek, "S", oid, wrapped, context, bucket, key, sealed=sealed)
    enc = SEncryptor(dek, oid)

    async def ciphertext() -> AsyncIterator[bytes | bytearray | memoryview]:
        async for piece in body.chunks():
            out = enc.update(piece)
            if out:
                yield memoryview(out)  # aiohttp slices what it sends; slicing a bytearray copies
        yield memoryview(enc.finalize())

    resp = await send_streamed(
        ctx, "PUT", bucket, key, query=[], headers=write_headers(ctx, env, client_headers),
        body=ciphertext(), content_length=sizes.s_ciphertext_size(body.length),
    )
    ctx.state.metrics.encrypted.inc(body.length)
    ctx.state.metrics.bytes_in.inc(body.length)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    await resp.read()
    hdrs = out_headers(ctx, resp.headers, env)
    hdrs.update(body.verified_checksums())
    resp.release()
    if sealed is not None:
        late = checksums.stored_checksum(body.verified_checksums()) if sealed.checksum is None else None
        if late is not None:  # an aws-chunked trailer: known only now, after the metadata went out
            version = await _seal_late_checksum(ctx, bucket, key, env, dek, sealed, late, client_headers, resp.headers)
            if version is not None:
                hdrs["x-amz-version-id"] = version
    etag = client_etag(resp.headers.get("ETag"), sealed)
    if etag is not None:
        hdrs["ETag"] = etag
    return web.Response(status=200, headers=hdrs)


async def _seal_late_checksum(
    ctx: Ctx, bucket: str, key: str, env: Envelope, dek: bytearray, sealed: SealContents,
    checksum: dict[str, str], client_headers: Mapping[str, str], put_headers: Mapping[str, str],
) -> str | None:
    """Add a trailing checksum (verified) to the sealed block of the object just stored: one
    metadata-only self-copy, pinned to the stored ETag so a concurrent write is never clobbered.
    Best effort: on failure the object stays as stored, without the checksum.  On a versioned
    bucket the copy is a new version (returned), the PUT's version stays without it."""
    new_env = rebind(env, dek, bucket, key, sealed=SealContents(sealed.meta, checksum, sealed.etag))
    headers = write_headers(ctx, new_env, client_headers)
    headers.pop("x-amz-tagging", None)  # the copy keeps the object's tags (tagging directive COPY)
    headers["x-amz-copy-source"] = ctx.state.backend.copy_source(bucket, key, put_headers.get("x-amz-version-id"))
    headers["x-amz-metadata-directive"] = "REPLACE"
    if put_headers.get("ETag"):
        headers["x-amz-copy-source-if-match"] = put_headers["ETag"]
    try:
        resp = await ctx.state.backend.request("PUT", bucket, key, headers=headers)
        await resp.read()
        resp.release()
    except aiohttp.ClientError:
        return None
    return resp.headers.get("x-amz-version-id") if resp.status == 200 else None


# --------------------------------------------------------------------- GET / HEAD


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
    sealed.dek[:] = bytes(len(sealed.dek))
    ct_total = backend_length(resp.headers)
    etag = resp.headers.get("ETag")
    if env.layout == "K":
        from s3proxy.http.listing import learn_multipart_etag

        learn_multipart_etag(ctx, etag)
    size = await resolve_size(ctx, bucket, key, env, etag or "", ct_total)
    hdrs = out_headers(ctx, resp.headers, env, sealed.contents, whole=part_number is None)
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
        else:
            dec = KObjectDecryptor(sealed.dek, sealed.env.object_id, parts_from_etag(etag))
    except BaseException:
        resp.release()
        raise
    out = web.StreamResponse(status=200, headers=out_headers(ctx, resp.headers, sealed.env, sealed.contents, whole=True))
    out.headers["Accept-Ranges"] = "bytes"
    out.content_length = size
    try:
        await out.prepare(ctx.request)
        ciphertext = _chain(resp.content.iter_any(), ctx, bucket, key, first_len, ct_total, etag)
        return await send_plaintext(ctx, out, _decrypt_stream(dec, ciphertext), size)
    finally:
        resp.release()


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
    pieces = _decrypt_range(ctx, sealed, table, total, start, end, etag, head, q)
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


async def _decrypt_range(
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


# --------------------------------------------------------------------- attributes


async def get_object_attributes(ctx: Ctx) -> web.StreamResponse:
    from s3proxy.http.listing import rewrite_attributes

    # The envelope first: an SSE-C object's attributes (its size) need its key, as in S3.
    head = await ctx.state.backend.request("HEAD", ctx.bucket, ctx.key, query=version_query(ctx))
    head.release()
    env = read_envelope(head.headers) if head.status == 200 else None
    contents: SealContents | None = None
    if env is not None:
        sse.check_customer_key(ctx, env)
        # attributes (sizes, part layout) only of an object whose envelope is bound here
        sealed = await unseal(ctx, head.headers, ctx.bucket, ctx.key, "GetObjectAttributes")
        if sealed is not None:
            sealed.dek[:] = bytes(len(sealed.dek))
            contents = sealed.contents
    elif head.status == 200 and not ctx.bucket_settings.allows_unencrypted(ctx.key):
        raise unencrypted(ctx)
    query = list(ctx.route.query)
    if head.status == 200 and not version_query(ctx) and head.headers.get("x-amz-version-id", "null") != "null":
        query.append(("versionId", head.headers["x-amz-version-id"]))  # the version whose key was checked
    resp = await ctx.state.backend.request(
        "GET", ctx.bucket, ctx.key, query=query,
        headers=forward_headers(ctx.request.headers, body_changed=False, drop=[sse.C_ALG, sse.C_KEY, sse.C_MD5]),
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await resp.read()
    resp.release()
    if head.status != 200:  # appeared between the HEAD and the GET: its key was not checked
        raise S3Error("ServiceUnavailable", "The object changed while its attributes were read; retry.", 503)
    if env is not None:
        wanted = {a.strip().lower() for a in ctx.request.headers.get("x-amz-object-attributes", "").split(",")}
        checksum = contents.checksum if contents is not None and "checksum" in wanted else None
        body = rewrite_attributes(body, env.layout, client_etag(head.headers.get("ETag"), contents), checksum)
    hdrs = response_headers(resp.headers, ctx.request_id)
    return web.Response(status=200, body=body, headers=hdrs)


# --------------------------------------------------------------------- copy


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    src, _, qs = value.partition("?")
    src = unquote(src)
    if src.startswith("/"):
        src = src[1:]
    bucket, sep, key = src.partition("/")
    if not sep or not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey", 400)
    version = None
    for part in qs.split("&"):
        k, _, v = part.partition("=")
        if k == "versionId":
            version = unquote(v)
    return bucket, key, version


def check_source_access(ctx: Ctx, bucket: str, key: str) -> None:
    from s3proxy.http.authz import allowed

    ident = ctx.caller.identity
    if ident is None or not allowed(ident, "read", bucket, key, None):
        raise S3Error("AccessDenied", "Access Denied", 403)


@dataclass
class CopySource:
    bucket: str
    key: str
    version: str | None
    vq: list[tuple[str, str]]
    head: aiohttp.ClientResponse  # released; headers only
    env: Envelope
    dek: bytearray
    conds: dict[str, str] = field(default_factory=dict)  # the copy-source conditions, ETags mapped


async def open_copy_source(ctx: Ctx, op: str) -> CopySource:
    """HEAD the ``x-amz-copy-source`` (its conditions applied), check access, unwrap its key
    and its placement binding."""
    bucket, key, version = parse_copy_source(ctx.request.headers["x-amz-copy-source"])
    check_source_access(ctx, bucket, key)
    if ctx.state.settings.bucket(bucket).mode != "encrypt":
        raise S3Error("NotImplemented", "copying from a passthrough bucket into an encrypted one is not supported", 501)
    vq = [("versionId", version)] if version else []
    conds = await mapped_conditions(ctx, bucket, key, vq, "x-amz-copy-source-")
    head = await ctx.state.backend.request("HEAD", bucket, key, query=vq, headers=conds)
    head.release()
    if head.status != 200:
        if head.status == 404:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
        if head.status in (304, 412):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
        raise S3Error("AccessDenied" if head.status == 403 else "InternalError", "cannot read the copy source", head.status)
    env = read_envelope(head.headers)
    if env is None:
        raise S3Error("InvalidObjectState", "The copy source was not written through s3proxy (no encryption metadata).", 403)
    sse.check_copy_source_key(ctx, env)
    dek = await sse.unwrap(ctx, env, bucket, key, op, copy_source=True)
    try:
        verify_binding(env, dek, bucket, key)
    except FormatError:
        raise S3Error("AccessDenied", "The source object's encryption metadata is not bound to its name.", 403) from None
    return CopySource(bucket, key, version, vq, head, env, dek, conds)


# A copy onto itself must change something, as on AWS S3: the metadata (REPLACE directive), the
# storage class, the website redirect location or the encryption.  A header naming any of these
# counts even when its value equals the object's; a copy of a named source version (a restore) is
# always allowed.  Followed: the CopyObject error text, and AWS-recorded responses in LocalStack's
# tests/aws/services/s3/test_s3.py (test_s3_copy_object_in_place*: storage class / redirect / SSE
# headers allow it, a metadata header without REPLACE or an ACL header does not).
SELF_COPY_MESSAGE = (
    "This copy request is illegal because it is trying to copy an object to itself without changing the "
    "object's metadata, storage class, website redirect location or encryption attributes."
)
_SELF_COPY_CHANGES = ("x-amz-storage-class", "x-amz-website-redirect-location", sse.SSE, sse.C_ALG)


def check_self_copy(ctx: Ctx, src: CopySource) -> None:
    if (src.bucket, src.key) != (ctx.bucket, ctx.key) or src.version is not None:
        return
    h = ctx.request.headers
    if h.get("x-amz-metadata-directive", "").upper() == "REPLACE" or any(n in h for n in _SELF_COPY_CHANGES):
        return
    if src.env.wrapped.backend == "sse-c":
        return  # no destination customer key: the copy drops SSE-C, an encryption change
    src.dek[:] = bytes(len(src.dek))
    raise S3Error("InvalidRequest", SELF_COPY_MESSAGE, 400)


async def copy_object(ctx: Ctx) -> web.StreamResponse:
    from s3proxy.http import multipart

    src = await open_copy_source(ctx, "CopyObject")
    check_self_copy(ctx, src)
    src_bucket, src_key, src_version, vq, head, env, src_dek = (
        src.bucket, src.key, src.version, src.vq, src.head, src.env, src.dek
    )
    directive = ctx.request.headers.get("x-amz-metadata-directive", "COPY").upper()
    sealed = copy_seal(ctx, src, directive)
    new_env = await sse.rewrap_for(ctx, env, src_dek, src_bucket, ctx.bucket, ctx.key, sealed=sealed)
    if directive == "REPLACE":
        headers = forward_headers(ctx.request.headers, body_changed=True, drop=["x-amz-copy-source", "x-amz-metadata-directive"])
    else:
        headers = {k: v for k, v in head.headers.items() if k.lower().startswith(META) and not k.lower().startswith(META + "s3proxy-")}
        for h in ("Content-Type", "Content-Encoding", "Content-Disposition", "Content-Language", "Cache-Control", "Expires", "x-amz-website-redirect-location"):
            if h in head.headers:
                headers[h.lower()] = head.headers[h]
        for k, v in forward_headers(ctx.request.headers, body_changed=True, drop=["x-amz-copy-source", "x-amz-metadata-directive"]).items():
            if k.startswith(("x-amz-tagging", "x-amz-storage-class", "x-amz-acl", "x-amz-grant", "x-amz-object-lock")):
                headers[k] = v
    if new_env.version >= SEALED_VERSION:  # the client's metadata is in the sealed block only
        headers = {k: v for k, v in headers.items() if not k.lower().startswith(META)}
    for k, v in envelope_metadata(new_env).items():
        headers[META + k] = v
    for k, v in src.conds.items():
        headers["x-amz-copy-source-" + k] = v
    if env.layout == "K":
        if sealed is not None and sealed.manifest:  # same object id and DEK: the same manifest
            from s3proxy.http import manifests

            await manifests.copy_manifest(ctx, src_bucket, env.object_id, src_dek)
        return await multipart.copy_multipart(ctx, src_bucket, src_key, vq, head.headers, env, new_env, headers)
    headers["x-amz-copy-source"] = ctx.state.backend.copy_source(src_bucket, src_key, src_version)
    headers["x-amz-metadata-directive"] = "REPLACE"
    resp = await ctx.state.backend.request("PUT", ctx.bucket, ctx.key, headers=headers)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await resp.read()
    resp.release()
    em = re.search(rb"<ETag>([^<]*)</ETag>", body)
    etag = client_etag(xmlsafe.text(em.group(1).decode()) if em else None, sealed)  # the same plaintext's
    if em is not None and etag is not None:
        body = body[: em.start()] + b"<ETag>" + escape(etag).encode() + b"</ETag>" + body[em.end():]
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["content-length"])
    hdrs.update(sse.response_headers(ctx, new_env))
    return web.Response(status=200, body=body, headers=hdrs)


def copy_seal(ctx: Ctx, src: CopySource, directive: str) -> SealContents | None:
    """The sealed block of a copy: the source's metadata (COPY; from its sealed block or, for a
    v1 source, its plaintext metadata) or the request's (REPLACE), with the source's checksum and
    ETag (same plaintext).  None (a v1 copy) only when the source is v1 and the destination
    bucket does not seal; a sealed source's metadata is never written back in plaintext."""
    contents = opened_seal(ctx, src.env, src.dek)
    if directive == "REPLACE":
        meta = client_metadata(ctx.request.headers)
    elif contents is not None:
        meta = dict(contents.meta)
    else:
        meta = {k: v for k, v in user_metadata(src.head.headers).items() if not is_reserved(k)}
    if contents is None and not ctx.bucket_settings.seal_metadata:
        return None
    if contents is None:
        return SealContents(meta)
    return SealContents(meta, contents.checksum, contents.etag, contents.manifest)


def copy_result_xml(etag: str, last_modified: str, tag: str = "CopyObjectResult") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{tag} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<LastModified>{escape(last_modified)}</LastModified><ETag>{escape(etag)}</ETag></{tag}>"
    ).encode()


__all__ = [
    "Sealed",
    "copy_object",
    "get_object",
    "get_object_attributes",
    "head_object",
    "put_object",
    "rebind",
]
