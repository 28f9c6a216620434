"""Multipart uploads on encrypted buckets, stateless across replicas.

CreateMultipartUpload wraps a data key and stores the envelope as the
object's metadata.  The UploadId returned to the client is the backend's id
plus ``~`` plus an upload token (object id, wrapped DEK, context), so any
replica can encrypt any part without shared state.  Each part is one K-layout
part (``crypto.format``); in ListParts each part's size is its plaintext size.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws import checksums, xmlsafe
from s3proxy.aws.checksums import Checker
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import make_envelope, new_object_id
from s3proxy.crypto.errors import FormatError, InvalidUploadToken, UnsupportedFormatVersion
from s3proxy.crypto.format import KPartEncryptor
from s3proxy.crypto.manifest import upload_record_mac
from s3proxy.crypto.upload_token import UploadToken, decode_upload_token, encode_upload_token, verify_upload_token
from s3proxy.http import manifests, sidecars, sse
from s3proxy.http.auth import RequestBody
from s3proxy.http.ctx import Ctx, backend_error, forward_headers, read_at_most, relay, response_headers, send_streamed
from s3proxy.http.listing import CHECKSUM_EL, rewrite_parts
from s3proxy.http.objects import (
    META,
    map_if_match,
    seal_for_write,
    unseal,
    write_headers,
)
from s3proxy.keys.base import WrappedKey
from s3proxy.observability import get_logger

log = get_logger("s3proxy.multipart")

SEP = "~"
UPLOAD_ID = re.compile(rb"<UploadId>([^<]*)</UploadId>")


def _parse_upload_id(ctx: Ctx, client_id: str) -> tuple[str, UploadToken | None]:
    """(backend id, token) from a client's UploadId; the token is still unauthenticated.

    A bare backend id (as ListMultipartUploads shows them) has no token."""
    backend_id, sep, text = client_id.rpartition(SEP)
    if not sep:
        if not client_id:
            raise _no_such_upload()
        return client_id, None
    if not backend_id:
        raise _no_such_upload()
    try:
        token = decode_upload_token(text)
    except UnsupportedFormatVersion:
        raise _no_such_upload(
            "The upload was started by an earlier s3proxy version whose upload ids are not authenticated; start it again."
        ) from None
    except (FormatError, ValueError):
        raise _no_such_upload() from None
    if token.context.get("bucket") != ctx.bucket:
        raise _no_such_upload()
    return backend_id, token


def _no_such_upload(
    msg: str = "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
) -> S3Error:
    return S3Error("NoSuchUpload", msg, 404)


@dataclass
class OpenUpload:
    """An upload whose token verified: its DEK may encrypt parts for ``ctx.bucket``/``ctx.key``."""

    backend_id: str
    object_id: bytes
    wrapped: WrappedKey
    dek: bytearray


async def open_upload(ctx: Ctx, op: str, client_id: str | None = None) -> OpenUpload:
    """Unwrap the token's DEK and verify that s3proxy issued the token for this bucket, key and
    backend upload; anything else is NoSuchUpload, before a byte reaches the backend."""
    backend_id, token = _parse_upload_id(ctx, client_id if client_id is not None else ctx.route.q("uploadId") or "")
    if token is None:
        raise _no_such_upload("UploadPart needs the UploadId that CreateMultipartUpload returned through s3proxy.")
    dek = await sse.unwrap_key(ctx, token.wrapped, token.context, ctx.bucket, ctx.key, op)
    try:
        verify_upload_token(token, dek, ctx.bucket, ctx.key, backend_id)
    except InvalidUploadToken:
        dek[:] = bytes(len(dek))
        log.warning("upload_token_refused", op=op, bucket=ctx.bucket, identity=ctx.identity_name)
        raise _no_such_upload() from None
    return OpenUpload(backend_id, token.object_id, token.wrapped, dek)


async def _checked_backend_id(ctx: Ctx, op: str) -> tuple[str, WrappedKey | None]:
    """The backend id of an upload that belongs to ``ctx.bucket``/``ctx.key`` (Complete, Abort,
    ListParts). Proven by the token's tag when s3proxy can get the DEK without the client
    (a KMS/HSM/local key, or SSE-C with the key sent); otherwise, and for bare backend ids,
    by the backend's own listing of uploads under this exact key. Never by trusting the
    backend to refuse an upload id used under another key: S3 stand-ins accept that."""
    backend_id, token = _parse_upload_id(ctx, ctx.route.q("uploadId") or "")
    if token is not None and (token.wrapped.backend != "sse-c" or sse.C_KEY in ctx.request.headers):
        up = await open_upload(ctx, op)
        up.dek[:] = bytes(len(up.dek))
        return backend_id, token.wrapped
    if not await _upload_listed(ctx, backend_id):
        raise _no_such_upload()
    return backend_id, token.wrapped if token is not None else None


async def _upload_listed(ctx: Ctx, backend_id: str) -> bool:
    """Whether the backend lists ``backend_id`` as an upload of exactly ``ctx.key``."""
    markers: list[tuple[str, str]] = []
    names = ctx.state.backend.names  # encrypted object names: the backend lists stored keys
    key = await names.stored_key(ctx.bucket, ctx.key) if names is not None else ctx.key
    for _ in range(_MAX_LIST_PAGES):
        query = [("uploads", ""), ("prefix", key), ("max-uploads", "1000"), *markers]
        try:
            resp = await ctx.backend.request("GET", ctx.bucket, None, query=query)
        except aiohttp.ClientError as e:
            raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
        data = await read_at_most(resp, 8 << 20)
        resp.release()
        if resp.status != 200:
            raise S3Error("ServiceUnavailable", "the storage backend could not list multipart uploads", 503)
        root = _backend_xml(data)
        for up in _children(root, "Upload"):
            if _text(up, "Key") == key and _text(up, "UploadId") == backend_id:
                return True
        if _text(root, "IsTruncated") != "true":
            return False
        nk, nu = _text(root, "NextKeyMarker"), _text(root, "NextUploadIdMarker")
        if not nk and not nu:
            return False
        markers = [("key-marker", nk or ""), ("upload-id-marker", nu or "")]
    return False


_MAX_LIST_PAGES = 20


_backend_xml = xmlsafe.parse_backend
_children = xmlsafe.children
_text = xmlsafe.child_text


def _backend_query(ctx: Ctx, backend_id: str) -> list[tuple[str, str]]:
    return [(k, backend_id if k == "uploadId" else v) for k, v in ctx.route.query]


async def create(ctx: Ctx) -> web.StreamResponse:
    bucket, key = ctx.bucket, ctx.key
    mode = checksums.upload_mode(ctx.request.headers.get("x-amz-checksum-algorithm"),
                                 ctx.request.headers.get("x-amz-checksum-type"))  # S3's refusals, before anything
    sealed = seal_for_write(ctx, bucket, ctx.request.headers)
    dek, wrapped, context = await sse.data_key_for_write(ctx, bucket, key, None, "CreateMultipartUpload")
    if sealed is not None and wrapped.backend != "sse-c":
        # Complete can write the manifest only with the DEK, which SSE-C uploads hold back.
        sealed = dataclasses.replace(sealed, manifest=True)
    env = make_envelope(dek, "K", new_object_id(), wrapped, context, bucket, key, sealed=sealed)
    resp = await ctx.backend.request("POST", bucket, key, query=list(ctx.route.query), headers=write_headers(ctx, env))
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await read_at_most(resp, 1 << 20)
    resp.release()
    m = UPLOAD_ID.search(body)
    if m is None:
        dek[:] = bytes(len(dek))
        raise S3Error("ServiceUnavailable", "the storage backend returned no UploadId", 503)
    backend_id = xmlsafe.text(m.group(1).decode("utf-8", "replace"))
    token = encode_upload_token(env, dek, bucket, key, backend_id)
    alg, typ = mode or (None, None)
    mac = upload_record_mac(dek, bucket, key, backend_id, alg, typ) if mode is not None else None
    dek[:] = bytes(len(dek))
    client_id = backend_id + SEP + token
    sidecar = sidecars.UploadSidecar(client_id, alg, typ, mac)
    if not await sidecars.put_upload(ctx, backend_id, sidecar):
        await _abort_backend(ctx, backend_id)
        raise S3Error("ServiceUnavailable", "the storage backend refused the upload's record; retry", 503)
    body = body[: m.start()] + b"<UploadId>" + escape(client_id).encode() + b"</UploadId>" + body[m.end() :]
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["x-amz-checksum-algorithm", "x-amz-checksum-type"])
    hdrs.update(sse.response_headers(ctx, env))
    if mode is not None:
        hdrs["x-amz-checksum-algorithm"], hdrs["x-amz-checksum-type"] = mode
    return web.Response(status=200, body=body, headers=hdrs)


async def _abort_backend(ctx: Ctx, backend_id: str) -> None:
    try:
        r = await ctx.backend.request("DELETE", ctx.bucket, ctx.key, query=[("uploadId", backend_id)])
        r.release()
    except aiohttp.ClientError:
        log.warning("create_abort_failed", bucket=ctx.bucket)


def part_number_arg(ctx: Ctx) -> int:
    n = parse_uint(ctx.route.q("partNumber"), max_digits=5)
    if n is None or not 1 <= n <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", 400)
    return n


async def send_part(
    ctx: Ctx, backend_id: str, pn: int, dek: bytearray, object_id: bytes, p: int,
    plaintext: AsyncIterator[bytes | bytearray | memoryview], headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Encrypt ``plaintext`` (``p`` bytes) as K part ``pn`` and stream it to the backend upload;
    ``headers`` default to the client's, without its copy-source headers."""
    enc = KPartEncryptor(dek, object_id, pn, p)

    async def ciphertext() -> AsyncIterator[bytes | bytearray | memoryview]:
        yield enc.header()
        async for piece in plaintext:
            out = enc.update(piece)
            if out:
                yield memoryview(out)  # aiohttp slices what it sends; slicing a bytearray copies
        yield memoryview(enc.finalize())

    query = [("partNumber", str(pn)), ("uploadId", backend_id)]
    if headers is None:
        headers = {k: v for k, v in forward_headers(ctx.request.headers, body_changed=True).items()
                   if not k.startswith("x-amz-copy-source")}
    return await send_streamed(
        ctx, "PUT", ctx.bucket, ctx.key, query=query, headers=headers,
        body=ciphertext(), content_length=objectinfo.stored_part_size(p),
    )


async def upload_part(ctx: Ctx) -> web.StreamResponse:
    pn = part_number_arg(ctx)
    body = RequestBody(ctx.request, ctx.caller.auth)
    if body.length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    if body.length > ctx.state.settings.limits.max_part_size:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed part size.", 400)
    up = await open_upload(ctx, "UploadPart")
    try:
        sent = [n for n in body.checker.names if n.startswith("x-amz-checksum-")]
        hasher = await part_hasher(ctx, up, sent)
        chunks = body.chunks() if hasher is None else hashed(body.chunks(), hasher)
        resp = await send_part(ctx, up.backend_id, pn, up.dek, up.object_id, body.length, chunks)
        ctx.state.metrics.encrypted.inc(body.length)
        ctx.state.metrics.bytes_in.inc(body.length)
        if resp.status != 200:
            return await backend_error(ctx, resp)
        await resp.read()
        resp.release()
        hdrs = response_headers(resp.headers, ctx.request_id, drop=[h.lower() for h in resp.headers if h.lower().startswith("x-amz-checksum-")])
        hdrs.update(body.verified_checksums())
        hdrs.update(await record_part(ctx, up, pn, resp.headers.get("ETag", ""), hasher))
    finally:
        up.dek[:] = bytes(len(up.dek))
    sse_headers_for_upload(ctx, hdrs, up.wrapped)
    return web.Response(status=200, headers=hdrs)


class PartHasher(checksums.Hasher):
    """The plaintext digest of one part of an upload with a checksum algorithm; ``mode`` its
    (algorithm, type)."""

    def __init__(self, mode: tuple[str, str]) -> None:
        super().__init__(mode[0])
        self.mode = mode


async def part_hasher(ctx: Ctx, up: OpenUpload, sent: list[str]) -> PartHasher | None:
    """A hasher for a part of ``up`` when the upload has a checksum algorithm (its record's MAC
    verified); a part whose checksum (``sent``: x-amz-checksum-* header or declared trailer
    names) is of another algorithm is refused first (``InvalidRequest``, as S3).  SSE-C
    uploads keep no part checksums (Complete has no DEK to read them)."""
    if up.wrapped.backend == "sse-c":
        return None
    mode = await manifests.upload_mode(ctx, up.backend_id, up.dek)
    manifests.part_algorithm(sent, mode)
    return None if mode is None else PartHasher(mode)


async def hashed(
    chunks: AsyncIterator[bytes | bytearray | memoryview], hasher: checksums.Hasher,
) -> AsyncIterator[bytes | bytearray | memoryview]:
    async for piece in chunks:
        hasher.update(piece)
        yield piece


def with_part_checksum(xml: bytes, sums: dict[str, str]) -> bytes:
    """A CopyPartResult with the part's ``Checksum<ALG>`` (``sums``: what ``record_part`` answered)."""
    for name, value in sums.items():
        el = checksums.ELEMENTS[name.removeprefix("x-amz-checksum-").upper()]
        xml = manifests.add_to_root(xml, f"<{el}>{escape(value)}</{el}>".encode("ascii"))
    return xml


async def record_part(ctx: Ctx, up: OpenUpload, pn: int, etag: str, hasher: PartHasher | None) -> dict[str, str]:
    """Write the part's record (its plaintext checksum, verified or computed) once the backend
    stored it; the response header that names it."""
    if hasher is None:
        return {}
    digest = hasher.digest()
    await manifests.record_part(ctx, up.dek, up.object_id, up.backend_id, etag, pn, hasher.algorithm, digest)
    return {"x-amz-checksum-" + hasher.algorithm.lower(): base64.b64encode(digest).decode("ascii")}


def sse_headers_for_upload(ctx: Ctx, hdrs: CIMultiDict[str], wrapped: WrappedKey | None) -> None:
    if wrapped is None:
        return
    if wrapped.backend == "sse-c":
        hdrs[sse.C_ALG] = "AES256"
        hdrs[sse.C_MD5] = wrapped.key_id
    else:
        hdrs[sse.SSE] = "aws:kms"
        hdrs[sse.KMS_KEY] = ctx.state.keys.key_id_for_display(wrapped)


async def complete(ctx: Ctx) -> web.StreamResponse:
    up = await _upload_with_dek(ctx)
    if up is None:
        backend_id, wrapped = await _checked_backend_id(ctx, "CompleteMultipartUpload")
    else:
        backend_id, wrapped = up.backend_id, up.wrapped
    manifest = None
    try:
        body = RequestBody(ctx.request, ctx.caller.auth)
        # x-amz-checksum-<alg> of a Complete is the object's checksum (manifests.object_checksum),
        # not the XML body's: only Content-MD5 is checked against the body.
        body.checker = Checker.from_headers({k: v for k, v in ctx.request.headers.items() if k.lower() == "content-md5"}, [])
        # Parsed with DTDs refused in every encoding, and re-written by s3proxy: the backend never
        # sees the client's bytes, nor the plaintext checksums (they describe plaintext).
        parts = xmlsafe.complete_parts(await body.read_all(ctx.state.settings.limits.max_xml_body))
        if up is not None:  # before the backend's Complete: a completed object never lacks it
            manifest = await manifests.complete_manifest(ctx, up.dek, up.object_id, up.backend_id, parts)
            if manifest is not None:  # None: no such upload (a retried Complete): the backend answers
                await manifests.put_manifest(ctx, manifest, up.dek)
    finally:
        if up is not None:
            up.dek[:] = bytes(len(up.dek))
    xml = xmlsafe.complete_xml(parts, include_checksums=False)
    headers = forward_headers(ctx.request.headers, body_changed=True, drop=["x-amz-mp-object-size"])
    headers = await map_if_match(ctx, ctx.bucket, ctx.key, headers, "CompleteMultipartUpload")
    resp = await ctx.backend.request(
        "POST", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id), headers=headers, body=xml,
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    out = await read_at_most(resp, 1 << 20)
    resp.release()
    out = CHECKSUM_EL.sub(b"", out)
    if manifest is not None and manifest.checksum is not None:
        out = manifests.add_checksum_xml(out, manifest.checksum)
    await sidecars.delete_upload(ctx, backend_id, parts=manifest is None or manifest.checksum is not None)
    hdrs = response_headers(resp.headers, ctx.request_id, drop=[h.lower() for h in resp.headers if h.lower().startswith(("x-amz-checksum-", "x-amz-server-side-encryption"))])
    sse_headers_for_upload(ctx, hdrs, wrapped)
    await _learn_multipart_etags(ctx)
    return web.Response(status=200, body=out, headers=hdrs)


async def _upload_with_dek(ctx: Ctx, op: str = "CompleteMultipartUpload") -> OpenUpload | None:
    """The upload opened (token verified, DEK unwrapped) when s3proxy can get the DEK without
    the client: every key backend but SSE-C.  A bare backend id (from an old listing) is
    resolved through its sidecar.  None: Complete goes on without a manifest (an upload whose
    envelope promised one then fails every read: fail closed)."""
    client_id = ctx.route.q("uploadId") or ""
    backend_id, token = _parse_upload_id(ctx, client_id)
    if token is None:
        sc = await sidecars.get_upload(ctx, backend_id)
        if sc is None:
            return None
        client_id = sc.client_id
        backend_id, token = _parse_upload_id(ctx, client_id)
    if token is None or token.wrapped.backend == "sse-c":
        return None
    return await open_upload(ctx, op, client_id)


async def _learn_multipart_etags(ctx: Ctx) -> None:
    """The first multipart object this process completes tells (one HEAD, once) whether the
    backend keeps "-N" on multipart ETags, so listings need no HEADs from then on (issue 16).
    The ETag of the Complete answer itself is no proof: rclone serve s3 answers "-N" there but
    lists and HEADs a plain ETag."""
    from s3proxy.http import memo

    if ctx.state.settings.backend.multipart_etags != "auto" or memo.multipart_etags_known(ctx):
        return
    try:
        resp = await ctx.backend.request("HEAD", ctx.bucket, ctx.key)
    except aiohttp.ClientError:
        return
    resp.release()
    if resp.status == 200:
        memo.learn_multipart_etag(ctx, resp.headers.get("ETag"))


async def abort(ctx: Ctx) -> web.StreamResponse:
    backend_id, _ = await _checked_backend_id(ctx, "AbortMultipartUpload")
    resp = await ctx.backend.request("DELETE", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id))
    if resp.status in (204, 200, 404):  # 404: gone already; its sidecar too
        await sidecars.delete_upload(ctx, backend_id, parts=None)
    return await relay(ctx, resp)


async def list_parts(ctx: Ctx) -> web.StreamResponse:
    """The backend's part list in plaintext sizes, with each part's verified checksum (from its
    record) when the upload has a checksum algorithm and s3proxy holds the DEK."""
    client_id = ctx.route.q("uploadId") or ""
    up = await _upload_with_dek(ctx, "ListParts")
    try:
        if up is None:
            backend_id, _ = await _checked_backend_id(ctx, "ListParts")
        else:
            backend_id = up.backend_id
        resp = await ctx.backend.request("GET", ctx.bucket, ctx.key, query=_backend_query(ctx, backend_id))
        if resp.status != 200:
            return await backend_error(ctx, resp)
        body = await read_at_most(resp, 16 << 20)
        resp.release()
        body = rewrite_parts(body, client_id)
        if up is not None:
            body = await manifests.list_parts_checksums(ctx, up.dek, up.object_id, up.backend_id, body)
    finally:
        if up is not None:
            up.dek[:] = bytes(len(up.dek))
    hdrs = response_headers(resp.headers, ctx.request_id)
    return web.Response(status=200, body=body, headers=hdrs)


async def list_uploads(ctx: Ctx) -> web.StreamResponse:
    """The backend's listing with the upload ids CreateMultipartUpload returned (from the
    upload sidecars), without the proxy's own keys; an ``upload-id-marker`` may be either id."""
    marker = ctx.route.q("upload-id-marker")
    query = [(k, sidecars.backend_marker(v) if k == "upload-id-marker" else v) for k, v in ctx.route.query]
    resp = await ctx.backend.request("GET", ctx.bucket, None, query=query)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    body = await read_at_most(resp, 16 << 20)
    resp.release()
    body = sidecars.hide_reserved(body, ctx.route.q("encoding-type") == "url")
    body = await sidecars.client_upload_ids(ctx, body)
    if marker:
        body = re.sub(rb"<UploadIdMarker>[^<]*</UploadIdMarker>",
                      lambda _: b"<UploadIdMarker>" + escape(marker).encode() + b"</UploadIdMarker>", body, count=1)
    return web.Response(status=200, body=body, headers=response_headers(resp.headers, ctx.request_id))


__all__ = ["META", "escape", "unseal"]
