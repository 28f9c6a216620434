"""Server-side copies: CopyObject, UploadPartCopy and the part-by-part copy of multipart sources.

A copy decrypts the source (``http.reads``) and encrypts it again for the destination (a new
envelope bound to the destination's bucket and key), or, for a metadata-only self-copy, re-seals
the envelope.  The backend requests of a part-by-part copy (Create, UploadPartCopy, Complete,
Abort) are ``backend.copies``, shared with the tools; this module adds the fallback through the
proxy for a backend without UploadPartCopy, and maps failures to S3 errors (``copy_error``).
Sits above ``http.objects``, ``http.reads`` and ``http.multipart``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws import xmlsafe
from s3proxy.aws.copysource import parse_copy_source
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.backend import copies, ops
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import (
    SEALED_VERSION,
    Envelope,
    SealContents,
    is_reserved,
    verify_binding,
)
from s3proxy.crypto.errors import (
    FormatError,
)
from s3proxy.http import sse, tagging
from s3proxy.http.ctx import (
    Ctx,
    backend_error,
    forward_headers,
    read_at_most,
    response_headers,
)
from s3proxy.http.multipart import (
    hashed,
    open_upload,
    part_hasher,
    part_number_arg,
    record_part,
    send_part,
    sse_headers_for_upload,
    with_part_checksum,
)
from s3proxy.http.objects import (
    META,
    Sealed,
    backend_length,
    client_etag,
    client_metadata,
    envelope_metadata,
    integrity_error,
    mapped_conditions,
    opened_seal,
    read_envelope,
    user_metadata,
)
from s3proxy.http.reads_body import part_table, resolve_size
from s3proxy.http.reads_range import decrypt_range
from s3proxy.observability import get_logger

log = get_logger("s3proxy.copy")

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
    head = await ctx.backend.request("HEAD", bucket, key, query=vq, headers=conds)
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
    src = await open_copy_source(ctx, "CopyObject")
    with sse.held_dek(src.dek):  # the source's data key, zeroed when the copy is done
        return await _copy_object(ctx, src)


async def _copy_object(ctx: Ctx, src: CopySource) -> web.StreamResponse:
    check_self_copy(ctx, src)
    src_bucket, src_key, src_version, vq, head, env, src_dek = (
        src.bucket, src.key, src.version, src.vq, src.head, src.env, src.dek
    )
    directive = ctx.request.headers.get("x-amz-metadata-directive", "COPY").upper()
    contents = opened_seal(ctx, env, src_dek)
    tags = await copy_tags(ctx, src, contents)
    dest_seals_tags = tagging.sealed(ctx.bucket_settings)
    sealed = copy_seal(ctx, src, directive, contents, tags if dest_seals_tags else None)
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
    if new_env.version >= SEALED_VERSION:  # the client's metadata (sealed headers, tags) in the sealed block only
        headers = {k: v for k, v in headers.items() if not k.lower().startswith(META)}
        headers = tagging.for_backend(ctx.bucket_settings, headers, sealed.headers if sealed is not None else ())
    if tags is not None:  # a bucket that seals tags is involved: the proxy says what the backend keeps
        headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-amz-tagging")}
        headers[tagging.DIRECTIVE] = "REPLACE"
        if tags and not dest_seals_tags:
            headers[tagging.TAGGING] = tagging.to_header(tags)
    for k, v in envelope_metadata(new_env).items():
        headers[META + k] = v
    for k, v in src.conds.items():
        headers["x-amz-copy-source-" + k] = v
    if objectinfo.in_parts(env.layout):  # copied part by part (its "-N" ETag and manifest stay)
        if sealed is not None and sealed.manifest:  # same object id and DEK: the same manifest
            from s3proxy.http import manifests

            await manifests.copy_manifest(ctx, src_bucket, env.object_id, src_dek)
        if tags is None:  # plain to plain: the request's tags (REPLACE) or the source's backend tags
            replace = tag_directive(ctx) == "REPLACE"
            mp_tags = headers.get(tagging.TAGGING) if replace else await _source_tagging(ctx, src_bucket, src_key, vq)
        else:
            mp_tags = headers.get(tagging.TAGGING)
        return await copy_multipart(ctx, src_bucket, src_key, vq, head.headers, env, new_env, headers, mp_tags or None)
    headers["x-amz-copy-source"] = ctx.state.backend.copy_source(src_bucket, src_key, src_version)
    headers["x-amz-metadata-directive"] = "REPLACE"
    if head.headers.get("ETag"):  # the source whose envelope was read: a write since then fails the copy (412)
        headers.setdefault("x-amz-copy-source-if-match", head.headers["ETag"])
    resp = await ctx.backend.request("PUT", ctx.bucket, ctx.key, headers=headers)
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


def copy_seal(
    ctx: Ctx, src: CopySource, directive: str, contents: SealContents | None, tags: Mapping[str, str] | None
) -> SealContents | None:
    """The sealed block of a copy: the source's metadata and sealed headers (COPY; from its sealed
    block or, for a v1 source, its plaintext metadata; plus the source's plaintext headers the
    destination seals) or the request's (REPLACE), the ``tags`` when the destination seals tags,
    and the source's checksum and ETag (same plaintext).  None (a v1 copy) only when the source is
    v1 and the destination bucket does not seal; what a source sealed is never written back in
    plaintext."""
    settings = ctx.bucket_settings
    if directive == "REPLACE":
        meta = client_metadata(ctx.request.headers)
        headers = tagging.sealed_headers(settings, ctx.request.headers)
    else:
        meta = dict(contents.meta) if contents is not None else {
            k: v for k, v in user_metadata(src.head.headers).items() if not is_reserved(k)
        }
        headers = {**tagging.sealed_headers(settings, src.head.headers), **(contents.headers if contents else {})}
    if contents is None and not settings.seal_metadata:
        return None
    if contents is None:
        return SealContents(meta, tags=tags or {}, headers=headers)
    return SealContents(meta, contents.checksum, contents.etag, contents.manifest, tags or {}, headers)


def tag_directive(ctx: Ctx) -> str:
    directive = ctx.request.headers.get(tagging.DIRECTIVE, "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown tagging directive.", 400)
    return directive


async def copy_tags(ctx: Ctx, src: CopySource, contents: SealContents | None) -> dict[str, str] | None:
    """A copy's tags when a bucket that seals tags is involved (None: both keep tags plain, the
    backend's copy carries them): the request's (directive REPLACE, checked as S3 does) or the
    source's (COPY: its sealed ``"t"``, or its backend tags when its bucket keeps them plain)."""
    src_seals = tagging.sealed(ctx.state.settings.bucket(src.bucket))
    if not src_seals and not tagging.sealed(ctx.bucket_settings):
        return None
    if tag_directive(ctx) == "REPLACE":
        return tagging.from_header(ctx.request.headers.get(tagging.TAGGING))
    if src_seals:
        return dict(contents.tags) if contents is not None else {}
    return dict(parse_qsl(await _source_tagging(ctx, src.bucket, src.key, src.vq), keep_blank_values=True))


def copy_result_xml(etag: str, last_modified: str, tag: str = "CopyObjectResult") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{tag} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<LastModified>{escape(last_modified)}</LastModified><ETag>{escape(etag)}</ETag></{tag}>"
    ).encode()


def _copy_range(value: str | None, size: int) -> tuple[int, int]:
    if value is None:
        return 0, size
    first, dash, last = value.strip().removeprefix("bytes=").partition("-")
    a, b = parse_uint(first), parse_uint(last)
    if not value.strip().startswith("bytes=") or not dash or a is None or b is None:
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last", 400)
    if a > b or b >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return a, b + 1


async def upload_part_copy(ctx: Ctx) -> web.StreamResponse:
    """Decrypt the source range and re-encrypt it as a part of this upload."""
    pn = part_number_arg(ctx)
    src = await open_copy_source(ctx, "UploadPartCopy")
    with sse.held_dek(src.dek):  # the source's data key, zeroed when the part is sent
        return await _upload_part_copy(ctx, pn, src)


async def _upload_part_copy(ctx: Ctx, pn: int, src: CopySource) -> web.StreamResponse:
    src_bucket, src_key, vq, head, env, src_dek = src.bucket, src.key, src.vq, src.head, src.env, src.dek
    etag = head.headers.get("ETag", "")
    total = backend_length(head.headers)
    size = await resolve_size(ctx, src_bucket, src_key, env, etag, total)
    start, end = _copy_range(ctx.request.headers.get("x-amz-copy-source-range"), size)
    table = await part_table(ctx, src_bucket, src_key, env, etag, total, None)
    up = await open_upload(ctx, "UploadPartCopy")
    plaintext = decrypt_range(ctx, Sealed(env, src_dek), table, total, start, end, etag, b"", vq, src_bucket, src_key)
    try:
        hasher = await part_hasher(ctx, up, [])  # the upload's checksum algorithm, computed as S3 does
        if hasher is not None:
            plaintext = hashed(plaintext, hasher)
        resp = await send_part(ctx, up.backend_id, pn, up.dek, up.object_id, end - start, plaintext)
        if resp.status != 200:
            return await backend_error(ctx, resp)
        await resp.read()
        resp.release()
        sums = await record_part(ctx, up, pn, resp.headers.get("ETag", ""), hasher)
    except FormatError:
        raise _source_integrity_error(ctx) from None
    finally:
        up.dek[:] = bytes(len(up.dek))
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["etag", "content-type"])
    sse_headers_for_upload(ctx, hdrs, up.wrapped)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = with_part_checksum(copy_result_xml(resp.headers.get("ETag", ""), now, "CopyPartResult"), sums)
    return web.Response(status=200, body=body, headers=hdrs, content_type="application/xml")


def _source_integrity_error(ctx: Ctx) -> S3Error:
    """The copy source failed authentication while it was read (a tampered chunk, parts out of
    order): the integrity error a GET of it answers, counted the same way."""
    ctx.state.metrics.integrity_failures.inc()
    return integrity_error()


async def _source_tagging(ctx: Ctx, bucket: str, key: str, vq: list[tuple[str, str]]) -> str:
    """The source object's tags as an ``x-amz-tagging`` header value ('' if none)."""
    from urllib.parse import quote

    r = await ctx.backend.request("GET", bucket, key, query=[("tagging", ""), *vq])
    body = await read_at_most(r, 1 << 16)
    r.release()
    if r.status != 200:
        return ""
    pairs = re.findall(rb"<Tag>\s*<Key>(.*?)</Key>\s*<Value>(.*?)</Value>\s*</Tag>", body, re.S)
    return "&".join(
        f"{quote(xmlsafe.text(k.decode()), safe='')}={quote(xmlsafe.text(v.decode()), safe='')}" for k, v in pairs
    )


async def copy_multipart(
    ctx: Ctx,
    src_bucket: str,
    src_key: str,
    vq: list[tuple[str, str]],
    src_headers: Mapping[str, str],
    env: Envelope,
    new_env: Envelope,
    headers: dict[str, str],
    tags: str | None,
    *,
    if_match: str | None = None,
) -> web.StreamResponse:
    """Server-side copy of a K-layout object, part by part (keeps sizes exact): ``copies.copy_parts``.

    Part 1 is copied first: a backend without UploadPartCopy (rclone serve s3 answers 200 and
    stores an empty part; others a 4xx or 501) makes the copy fall back to decrypting and
    re-encrypting each part through the proxy, with the same part boundaries, into a fresh
    upload.  Failures are 4xx, 501 or 503, never 500: clients retry a 500.  ``tags``: the new
    object's ``x-amz-tagging`` (a new upload starts untagged; None: no tags).  ``if_match``:
    the ETag the destination must still have at Complete (a self-copy: 412
    ``PreconditionFailed`` when a write landed meanwhile, 404 ``NoSuchKey`` when a DELETE did)."""
    etag = src_headers.get("ETag", "")
    total = backend_length(src_headers)
    table = await part_table(ctx, src_bucket, src_key, env, etag, total, None)
    create = {k: v for k, v in headers.items() if not k.startswith(("x-amz-copy-source-if-", "x-amz-tagging"))}
    if tags:
        create[tagging.TAGGING] = tags
    store = ops.Store.bound(ctx.backend, ctx.bucket)
    source = copies.Source(src_bucket, src_key, etag, vq[0][1] if vq else None)

    async def reencrypt(upload_id: str) -> list[str]:
        return await _reencrypt_parts(ctx, src_bucket, src_key, vq, env, etag, total, table, upload_id)

    try:
        try:
            done = await copies.copy_parts(store, ctx.key, source, table, create, if_match=if_match)
        except copies.CopyUnsupported:
            log.info("copy_reencrypt_fallback", bucket=ctx.bucket, parts=len(table))
            done = await copies.fill_upload(store, ctx.key, create, reencrypt, if_match=if_match)
    except ops.OpError as e:
        raise copy_error(e, "the server-side copy") from None
    hdrs = CIMultiDict({"x-amz-request-id": ctx.request_id})
    if done.version_id:
        hdrs["x-amz-version-id"] = done.version_id
    hdrs.update(sse.response_headers(ctx, new_env))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return web.Response(status=200, body=copy_result_xml(done.etag, now), headers=hdrs, content_type="application/xml")


def copy_error(e: ops.OpError, what: str) -> S3Error:
    """The client's error for a failed backend copy: 404 ``NoSuchKey`` (deleted meanwhile), 412
    ``PreconditionFailed`` (changed meanwhile), the backend's own 4xx when it refused the
    request with a plausible S3 error code, else 503 (never a 500: clients retry a 500)."""
    if isinstance(e, ops.ObjectGone):
        return S3Error("NoSuchKey", "The specified key does not exist.", 404)
    if isinstance(e, ops.ObjectChanged):
        return S3Error("PreconditionFailed", "The object changed during the copy.", 412)
    if isinstance(e, ops.Refused) and e.code is not None:
        return S3Error(e.code, f"The storage backend refused {what}.", e.status)
    log.warning("copy_failed", what=what, error=str(e))
    return S3Error("ServiceUnavailable", f"{what} failed on the storage backend", 503)


async def _reencrypt_parts(
    ctx: Ctx, src_bucket: str, src_key: str, vq: list[tuple[str, str]], env: Envelope, etag: str, total: int,
    table: list[tuple[int, int]], upload_id: str,
) -> list[str]:
    """Copy a K object's parts through the proxy: decrypt each source part (authenticated) and
    encrypt it again as the same-numbered part of ``upload_id``, streaming (bounded memory).
    Same DEK and object id as the source (``rebind`` keeps both), part sizes unchanged."""
    dek = await sse.unwrap(ctx, env, src_bucket, src_key, "CopyObject", copy_source=True)
    sealed = Sealed(env, dek)
    sem = asyncio.Semaphore(4)
    spans = objectinfo.part_spans(table)

    async def one(pn: int, start: int, p: int) -> str:
        async with sem:
            plaintext = decrypt_range(ctx, sealed, table, total, start, start + p, etag, b"", vq, src_bucket, src_key)
            try:
                r = await send_part(ctx, upload_id, pn, dek, env.object_id, p, plaintext, headers={})
            except aiohttp.ClientError as e:
                raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
            except FormatError:
                raise _source_integrity_error(ctx) from None
            await r.read()
            r.release()
            e_tag = r.headers.get("ETag")
            if r.status != 200 or not e_tag:
                if r.status >= 500 and r.status != 501:
                    raise S3Error("ServiceUnavailable", f"uploading part {pn} of the copy failed ({r.status})", 503)
                raise S3Error("NotImplemented", "The storage backend supports neither UploadPartCopy nor this copy.", 501)
            ctx.state.metrics.encrypted.inc(p)
            return e_tag

    etags = [""] * len(spans)

    async def slot(i: int, start: int, p: int) -> None:
        etags[i] = await one(i + 1, start, p)

    try:  # the first failure cancels the other parts, and waits for them, before the DEK is zeroed
        await ops.run_all([slot(i, s, p) for i, (s, p) in enumerate(spans)])
        return etags
    finally:
        dek[:] = bytes(len(dek))
