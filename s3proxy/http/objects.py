"""Object operations on encrypted buckets: PUT, GET (ranges, parts), HEAD, copy.

Glue only: the byte format is ``crypto.format``/``crypto.sizes``, metadata is
``crypto.envelope``, keys come from the app's ``KeyManager``.  Bodies stream
both ways; nothing is read whole except part headers and small probes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws import checksums
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.backend import copies, ops
from s3proxy.backend.profiles import copies_pinned
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import (
    ENVELOPE_KEYS,
    SEALED_VERSION,
    USER_METADATA_LIMIT,
    Envelope,
    SealContents,
    decode_metadata,
    encode_metadata,
    make_envelope,
    new_object_id,
    open_seal,
    rebind,
    verify_binding,
)
from s3proxy.crypto.errors import FormatError, MetadataTooLarge
from s3proxy.crypto.format import SEncryptor
from s3proxy.crypto.objectinfo import parts_from_etag as parts_from_etag  # the one parser, for the handlers
from s3proxy.http import sse, tagging
from s3proxy.http.auth import RequestBody
from s3proxy.http.ctx import (
    Ctx,
    backend_error,
    forward_headers,
    response_headers,
    send_streamed,
)
from s3proxy.keys.base import WrappedKey

READ_SIZE = 1 << 20
META = "x-amz-meta-"
CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# Backend response headers that describe ciphertext and never reach the client.
CIPHERTEXT_HEADERS = ("content-range", "x-amz-mp-parts-count", "content-md5")


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


_ENVELOPE_HEADERS = tuple((META + k, k) for k in ENVELOPE_KEYS)


def envelope_fields(headers: Mapping[str, str]) -> dict[str, str]:
    """The envelope's part of ``user_metadata(headers)`` (issue 11): with aiohttp's headers, a
    case-insensitive multidict, its seven names are looked up (the last of repeated ones, as
    ``user_metadata`` keeps) instead of every header being lowered."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return user_metadata(headers)
    out = {}
    for name, k in _ENVELOPE_HEADERS:
        values = getall(name, None)
        if values:
            out[k] = values[-1]
    return out


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
    """What a new object's sealed block holds (None: the bucket writes v1, metadata in plaintext):
    the client's metadata, the verified checksum and MD5 ETag, and what the bucket seals besides:
    its ``seal_headers`` and, with ``tags: sealed``, the ``x-amz-tagging`` tags (checked as S3 does)."""
    settings = ctx.state.settings.bucket(bucket)
    meta = client_metadata(client_headers)
    if not settings.seal_metadata:
        return None
    tags = tagging.from_header(client_headers.get(tagging.TAGGING)) if tagging.sealed(settings) else {}
    return SealContents(meta, checksum, etag, tags=tags, headers=tagging.sealed_headers(settings, client_headers))


def envelope_metadata(env: Envelope) -> dict[str, str]:
    """``encode_metadata`` with the S3 error a client gets when its sealed metadata does not fit."""
    try:
        return encode_metadata(env)
    except MetadataTooLarge:
        raise metadata_too_large() from None


@dataclass
class Sealed:
    env: Envelope
    dek: bytearray
    contents: SealContents | None = None  # the opened sealed block (envelope v2)


def plaintext_size(env: Envelope, ct_total: int, etag: str | None) -> int:
    """Plaintext size from the stored size and ETag; the integrity error when they cannot be one's
    of this layout (or the part table would be needed: ``reads_body.resolve_size``)."""
    try:
        size = objectinfo.plaintext_size(env.layout, ct_total, etag)
    except FormatError:
        raise integrity_error() from None
    if size is None:
        raise integrity_error()
    return size


def read_envelope(headers: Mapping[str, str]) -> Envelope | None:
    try:
        return decode_metadata(envelope_fields(headers))
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
    are the ETag (when sealed), the sealed system headers, the tag count (buckets that seal tags)
    and, for a ``whole`` object read with ``x-amz-checksum-mode: ENABLED``, the checksum."""
    hidden: tuple[str, ...] = ("x-amz-checksum-", "x-amz-server-side-encryption")
    if env.version >= SEALED_VERSION:
        hidden = (*hidden, META)
    hdrs = response_headers(backend_headers, ctx.request_id, drop=CIPHERTEXT_HEADERS, drop_prefixes=hidden)
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
    tagging.answer(hdrs, contents, ctx.bucket_settings, dict(ctx.route.query))  # sealed headers, tag count
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
    headers = ctx.request.headers
    for base in CONDITIONAL:  # four look-ups instead of a pass over every request header
        values = headers.getall(prefix + base, None)
        if values:
            v = values[-1]  # a repeated header: the last one, as before
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
    head = await ctx.backend.request("HEAD", bucket, key, query=vq)
    head.release()
    backend_etag = head.headers.get("ETag")
    if head.status != 200 or not backend_etag:
        return conds
    try:
        env = decode_metadata(envelope_fields(head.headers))
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


async def map_if_match(ctx: Ctx, bucket: str, key: str, headers: dict[str, str], op: str) -> dict[str, str]:
    """A conditional write's ``If-Match`` (PutObject, CompleteMultipartUpload) with the target's
    client-facing ETag replaced by its backend ETag, as ``mapped_conditions`` does for reads: one
    HEAD (and, for v2, one DEK lookup), only when ``If-Match`` is present."""
    if "if-match" in headers and "If-Match" in ctx.request.headers:  # case-insensitive
        headers["if-match"] = (await mapped_conditions(ctx, bucket, key, [], op=op)).get("if-match", headers["if-match"])
    return headers


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


def write_headers(
    ctx: Ctx, env: Envelope, client_headers: Mapping[str, str] | None = None, bucket: str | None = None
) -> dict[str, str]:
    """Backend headers for a write to ``bucket`` (default the request's): the client's
    (``client_headers``, default the request's) plus the envelope, without what the envelope seals."""
    src = ctx.request.headers if client_headers is None else client_headers
    headers = forward_headers(src, body_changed=True)
    if env.version >= SEALED_VERSION:  # the client's metadata (and sealed headers, tags) in the sealed block only
        headers = {k: v for k, v in headers.items() if not k.startswith(META)}
        headers = tagging.for_backend(ctx.state.settings.bucket(bucket or ctx.bucket), headers)
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
    with sse.held_dek(dek):
        return await _encrypt_and_put(ctx, bucket, key, body, client_headers, sealed, dek, wrapped, context)


async def _encrypt_and_put(
    ctx: Ctx, bucket: str, key: str, body: PlainBody, client_headers: Mapping[str, str], sealed: SealContents | None,
    dek: bytearray, wrapped: WrappedKey, context: Mapping[str, str],
) -> web.StreamResponse:
    """The PUT of ``store_object``: the body encrypted under ``dek`` as it streams."""
    assert body.length is not None
    oid = new_object_id()
    env = make_envelope(dek, "S", oid, wrapped, context, bucket, key, sealed=sealed)
    enc = SEncryptor(dek, oid)

    async def ciphertext() -> AsyncIterator[bytes | bytearray | memoryview]:
        async for piece in body.chunks():
            out = enc.update(piece)
            if out:
                yield memoryview(out)  # aiohttp slices what it sends; slicing a bytearray copies
        yield memoryview(enc.finalize())

    headers = await map_if_match(ctx, bucket, key, write_headers(ctx, env, client_headers, bucket), "PutObject")
    resp = await send_streamed(
        ctx, "PUT", bucket, key, query=[], headers=headers,
        body=ciphertext(), content_length=objectinfo.stored_size(body.length),
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
    metadata-only self-copy of the current object, pinned on both sides to the stored ETag
    (``x-amz-copy-source-if-match`` and ``If-Match``: a write or DELETE that landed meanwhile
    fails it).  Skipped where the backend is known to ignore those conditions.  Best effort: on
    failure the object stays as stored, without the checksum.  On a versioned bucket the copy is
    a new version (returned), the PUT's version stays without it."""
    if not put_headers.get("ETag") or not copies_pinned(getattr(ctx.state, "backend_capabilities", None)):
        return None
    new_env = rebind(env, dek, bucket, key, sealed=dataclasses.replace(sealed, checksum=checksum))
    headers = write_headers(ctx, new_env, client_headers, bucket)
    headers.pop("x-amz-tagging", None)  # the copy keeps the object's tags (tagging directive COPY)
    headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-none-match")}  # the PUT's own
    try:
        done = await copies.self_copy(ops.Store.bound(ctx.backend, bucket), key, put_headers["ETag"], headers,
                                      pin_destination=True)
    except (ops.OpError, aiohttp.ClientError):
        return None
    return done.version_id


__all__ = ["Sealed", "put_object", "rebind"]
