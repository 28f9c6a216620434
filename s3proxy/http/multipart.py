"""Multipart uploads on encrypted buckets, stateless across replicas.

CreateMultipartUpload wraps a data key and stores the envelope as the
object's metadata.  The UploadId returned to the client is the backend's id
plus ``~`` plus an upload token (object id, wrapped DEK, context), so any
replica can encrypt any part without shared state.  Each part is one K-layout
part (``crypto.format``); sizes in ListParts are the plaintext sizes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import (
    Envelope,
    decode_upload_token,
    encode_upload_token,
    make_envelope,
    new_object_id,
)
from s3proxy.crypto.format import FormatError, KPartEncryptor
from s3proxy.http import sse
from s3proxy.http.auth import RequestBody
from s3proxy.http.errors import S3Error
from s3proxy.http.handlers import (
    Ctx,
    backend_error,
    forward_headers,
    read_at_most,
    relay,
    response_headers,
    send_streamed,
)
from s3proxy.http.listing import _CHECKSUM_EL, rewrite_parts
from s3proxy.http.objects import (
    META,
    Sealed,
    _decrypt_range,
    copy_result_xml,
    open_copy_source,
    part_table,
    resolve_size,
    unseal,
    write_headers,
)
from s3proxy.keys.base import WrappedKey

SEP = "~"
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]*)</UploadId>")


def backend_upload_id(ctx: Ctx, client_id: str) -> str:
    """The backend's id; also accepts a bare backend id (as ListMultipartUploads shows them),
    which is enough for ListParts, Complete and Abort but not for UploadPart."""
    backend_id, sep, token = client_id.rpartition(SEP)
    if not sep:
        return client_id
    split_upload_id(ctx, client_id)
    return backend_id


def split_upload_id(ctx: Ctx, client_id: str) -> tuple[str, bytes, WrappedKey, dict[str, str]]:
    backend_id, sep, token = client_id.rpartition(SEP)
    if not sep or not backend_id:
        raise S3Error("NoSuchUpload", "The specified upload does not exist (not created through s3proxy).", 404)
    try:
        object_id, wrapped, context = decode_upload_token(token)
    except (FormatError, ValueError):
        raise S3Error("NoSuchUpload", "The specified upload does not exist (malformed upload id).", 404) from None
    if dict(context).get("bucket") != ctx.bucket:
        raise S3Error("NoSuchUpload", "The specified upload does not exist.", 404)
    return backend_id, object_id, wrapped, dict(context)


def _backend_query(ctx: Ctx, backend_id: str) -> list[tuple[str, str]]:
    return [(k, backend_id if k == "uploadId" else v) for k, v in ctx.route.query]


async def create(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    dek, wrapped, context = await sse.data_key_for_write(ctx, bucket, key, None, "CreateMultipartUpload")
    env = make_envelope(dek, "K", new_object_id(), wrapped, context, bucket, key)
    resp = await ctx.state.backend.request("POST", bucket, key, query=list(ctx.route.query), headers=write_headers(ctx, env))
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await read_at_most(resp, 1 << 20)
    resp.release()
    token = encode_upload_token(env)
    body = _UPLOAD_ID.sub(lambda m: b"<UploadId>" + m.group(1) + SEP.encode() + token.encode() + b"</UploadId>", body)
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["x-amz-checksum-algorithm", "x-amz-checksum-type"])
    hdrs.update(sse.response_headers(ctx, env))
    return web.Response(status=200, body=body, headers=hdrs)


def _part_number(ctx: Ctx) -> int:
    v = ctx.route.q("partNumber") or ""
    if not v.isdigit() or not 1 <= int(v) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", 400)
    return int(v)


async def _upload_dek(ctx: Ctx, op: str) -> tuple[str, bytes, bytearray, Envelope | None]:
    backend_id, object_id, wrapped, context = split_upload_id(ctx, ctx.route.q("uploadId") or "")
    dek = await sse.unwrap_key(ctx, wrapped, context, ctx.bucket, ctx.key, op)
    return backend_id, object_id, dek, None


async def _send_part(
    ctx: Ctx, backend_id: str, pn: int, dek: bytearray, object_id: bytes, p: int, plaintext: AsyncIterator[bytes | bytearray | memoryview]
) -> aiohttp.ClientResponse:
    enc = KPartEncryptor(dek, object_id, pn, p)

    async def ciphertext() -> AsyncIterator[bytes | bytearray | memoryview]:
        yield enc.header()
        async for piece in plaintext:
            out = enc.update(piece)
            if out:
                yield memoryview(out)  # aiohttp slices what it sends; slicing a bytearray copies
        yield memoryview(enc.finalize())

    query = [("partNumber", str(pn)), ("uploadId", backend_id)]
    return await send_streamed(
        ctx, "PUT", ctx.bucket, ctx.key, query=query,
        headers={k: v for k, v in forward_headers(ctx.request.headers, body_changed=True).items()
                 if not k.startswith("x-amz-copy-source")},
        body=ciphertext(), content_length=sizes.k_part_ciphertext_size(p),
    )


async def upload_part(ctx: Ctx) -> web.StreamResponse:
    pn = _part_number(ctx)
    body = RequestBody(ctx.request, ctx.caller.auth)
    if body.length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    if body.length > ctx.state.settings.limits.max_part_size:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed part size.", 400)
    backend_id, object_id, dek, _ = await _upload_dek(ctx, "UploadPart")
    resp = await _send_part(ctx, backend_id, pn, dek, object_id, body.length, body.chunks())
    ctx.state.metrics.encrypted.inc(body.length)
    ctx.state.metrics.bytes_in.inc(body.length)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    await resp.read()
    resp.release()
    hdrs = response_headers(resp.headers, ctx.request_id, drop=[h.lower() for h in resp.headers if h.lower().startswith("x-amz-checksum-")])
    hdrs.update(body.verified_checksums())
    _sse_headers_for_upload(ctx, hdrs)
    return web.Response(status=200, headers=hdrs)


def _sse_headers_for_upload(ctx: Ctx, hdrs: CIMultiDict[str]) -> None:
    client_id = ctx.route.q("uploadId") or ""
    if SEP not in client_id:
        return
    _, _, wrapped, _ = split_upload_id(ctx, client_id)
    if wrapped.backend == "sse-c":
        hdrs[sse.C_ALG] = "AES256"
        hdrs[sse.C_MD5] = wrapped.key_id
    else:
        hdrs[sse.SSE] = "aws:kms"
        hdrs[sse.KMS_KEY] = ctx.state.keys.key_id_for_display(wrapped)


def _copy_range(value: str | None, size: int) -> tuple[int, int]:
    if value is None:
        return 0, size
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", value.strip())
    if not m:
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last", 400)
    a, b = int(m.group(1)), int(m.group(2))
    if a > b or b >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return a, b + 1


async def upload_part_copy(ctx: Ctx) -> web.StreamResponse:
    """Decrypt the source range and re-encrypt it as a part of this upload."""
    pn = _part_number(ctx)
    src = await open_copy_source(ctx, "UploadPartCopy")
    src_bucket, src_key, vq, head, env, src_dek = src.bucket, src.key, src.vq, src.head, src.env, src.dek
    etag = head.headers.get("ETag", "")
    total = int(head.headers.get("Content-Length", "0"))
    size = await resolve_size(ctx, src_bucket, src_key, env, etag, total)
    start, end = _copy_range(ctx.request.headers.get("x-amz-copy-source-range"), size)
    table = await part_table(ctx, src_bucket, src_key, env, etag, total, None)
    backend_id, object_id, dek, _ = await _upload_dek(ctx, "UploadPartCopy")
    plaintext = _decrypt_range(ctx, Sealed(env, src_dek), table, total, start, end, etag, b"", vq, src_bucket, src_key)
    resp = await _send_part(ctx, backend_id, pn, dek, object_id, end - start, plaintext)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    await resp.read()
    resp.release()
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["etag", "content-type"])
    _sse_headers_for_upload(ctx, hdrs)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = copy_result_xml(resp.headers.get("ETag", ""), now, "CopyPartResult")
    return web.Response(status=200, body=body, headers=hdrs, content_type="application/xml")


_PART_CHECKSUM = _CHECKSUM_EL


def _check_complete_xml(xml: bytes) -> None:
    """S3's MalformedXML for a body that isn't a CompleteMultipartUpload document."""
    import xml.etree.ElementTree as ET

    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400) from None
    if root.tag.rsplit("}", 1)[-1] != "CompleteMultipartUpload" or not any(
        el.tag.rsplit("}", 1)[-1] == "Part" for el in root
    ):
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400)


async def complete(ctx: Ctx) -> web.StreamResponse:
    backend_id = backend_upload_id(ctx, ctx.route.q("uploadId") or "")
    body = RequestBody(ctx.request, ctx.caller.auth)
    xml = await body.read_all(ctx.state.settings.limits.max_xml_body)
    _check_complete_xml(xml)
    xml = _PART_CHECKSUM.sub(b"", xml)
    headers = forward_headers(ctx.request.headers, body_changed=True, drop=["x-amz-mp-object-size"])
    resp = await ctx.state.backend.request(
        "POST", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id), headers=headers, body=xml,
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    out = await read_at_most(resp, 1 << 20)
    resp.release()
    out = _CHECKSUM_EL.sub(b"", out)
    hdrs = response_headers(resp.headers, ctx.request_id, drop=[h.lower() for h in resp.headers if h.lower().startswith(("x-amz-checksum-", "x-amz-server-side-encryption"))])
    _sse_headers_for_upload(ctx, hdrs)
    return web.Response(status=200, body=out, headers=hdrs)


async def abort(ctx: Ctx) -> web.StreamResponse:
    backend_id = backend_upload_id(ctx, ctx.route.q("uploadId") or "")
    resp = await ctx.state.backend.request("DELETE", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id))
    return await relay(ctx, resp)


async def list_parts(ctx: Ctx) -> web.StreamResponse:
    client_id = ctx.route.q("uploadId") or ""
    backend_id = backend_upload_id(ctx, client_id)
    resp = await ctx.state.backend.request("GET", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id))
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await read_at_most(resp, 16 << 20)
    resp.release()
    hdrs = response_headers(resp.headers, ctx.request_id)
    return web.Response(status=200, body=rewrite_parts(body, client_id), headers=hdrs)


async def list_uploads(ctx: Ctx) -> web.StreamResponse:
    resp = await ctx.state.backend.request("GET", ctx.bucket, None, query=list(ctx.route.query))
    return await relay(ctx, resp)


async def _source_tagging(ctx: Ctx, bucket: str, key: str, vq: list[tuple[str, str]]) -> str:
    """The source object's tags as an ``x-amz-tagging`` header value ('' if none)."""
    from urllib.parse import quote
    from xml.sax.saxutils import unescape

    r = await ctx.state.backend.request("GET", bucket, key, query=[("tagging", ""), *vq])
    body = await read_at_most(r, 1 << 16)
    r.release()
    if r.status != 200:
        return ""
    pairs = re.findall(rb"<Tag>\s*<Key>(.*?)</Key>\s*<Value>(.*?)</Value>\s*</Tag>", body, re.S)
    return "&".join(
        f"{quote(unescape(k.decode()), safe='')}={quote(unescape(v.decode()), safe='')}" for k, v in pairs
    )


async def copy_multipart(
    ctx: Ctx,
    src_bucket: str,
    src_key: str,
    vq: list[tuple[str, str]],
    src_headers: object,
    env: Envelope,
    new_env: Envelope,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Server-side copy of a K-layout object, part by part (keeps sizes exact)."""
    from multidict import CIMultiDictProxy

    assert isinstance(src_headers, CIMultiDictProxy | CIMultiDict)
    etag = src_headers.get("ETag", "")
    total = int(src_headers.get("Content-Length", "0"))
    table = await part_table(ctx, src_bucket, src_key, env, etag, total, None)
    backend = ctx.state.backend
    create_headers = {k: v for k, v in headers.items() if not k.startswith("x-amz-copy-source-if-")}
    if ctx.request.headers.get("x-amz-tagging-directive", "COPY").upper() == "COPY":
        # A new upload starts untagged; S3's CopyObject keeps the source's tags by default.
        create_headers.pop("x-amz-tagging", None)
        tags = await _source_tagging(ctx, src_bucket, src_key, vq)
        if tags:
            create_headers["x-amz-tagging"] = tags
    resp = await backend.request("POST", ctx.bucket, ctx.key, query=[("uploads", "")], headers=create_headers)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    m = _UPLOAD_ID.search(await read_at_most(resp, 1 << 20))
    resp.release()
    if m is None:
        raise S3Error("InternalError", "backend returned no UploadId", 500)
    upload_id = m.group(1).decode()
    source = backend.copy_source(src_bucket, src_key, vq[0][1] if vq else None)
    sem = asyncio.Semaphore(8)

    async def copy_part(i: int, off: int, c: int) -> str:
        async with sem:
            r = await backend.request(
                "PUT", ctx.bucket, ctx.key, query=[("partNumber", str(i)), ("uploadId", upload_id)],
                headers={"x-amz-copy-source": source, "x-amz-copy-source-range": f"bytes={off}-{off + c - 1}",
                         "x-amz-copy-source-if-match": etag},
            )
            data = await read_at_most(r, 1 << 16)
            r.release()
            em = re.search(rb"<ETag>([^<]*)</ETag>", data)
            if r.status != 200 or em is None:
                raise S3Error("InternalError", f"server-side copy of part {i} failed ({r.status})", 500)
            return em.group(1).decode()

    try:
        etags = await asyncio.gather(*(copy_part(i + 1, off, c) for i, (off, c) in enumerate(table)))
        parts = "".join(f"<Part><PartNumber>{i + 1}</PartNumber><ETag>{e}</ETag></Part>" for i, e in enumerate(etags))
        xml = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        r = await backend.request("POST", ctx.bucket, ctx.key, query=[("uploadId", upload_id)], body=xml)
        data = await read_at_most(r, 1 << 20)
        r.release()
        em = re.search(rb"<ETag>([^<]*)</ETag>", data)
        if r.status != 200 or em is None:
            raise S3Error("InternalError", "completing the server-side copy failed", 500)
    except BaseException:
        r2 = await backend.request("DELETE", ctx.bucket, ctx.key, query=[("uploadId", upload_id)])
        r2.release()
        raise
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    hdrs = CIMultiDict({"x-amz-request-id": ctx.request_id})
    if "x-amz-version-id" in r.headers:
        hdrs["x-amz-version-id"] = r.headers["x-amz-version-id"]
    hdrs.update(sse.response_headers(ctx, new_env))
    from xml.sax.saxutils import unescape

    return web.Response(
        status=200, body=copy_result_xml(unescape(em.group(1).decode()), now), headers=hdrs, content_type="application/xml"
    )


__all__ = ["META", "escape", "unseal"]
