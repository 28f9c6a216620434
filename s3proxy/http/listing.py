"""Listings with plaintext sizes, computed from what the backend returns.

ListObjects (V1/V2) and ListObjectVersions entries carry the ciphertext
``Size`` and the ``ETag``; the layout follows from the ETag (``-N`` suffix:
multipart, K layout) and the size math inverts exactly, so no extra backend
requests are made -- except for entries whose layout the listing hides (a plain
ETag on a backend not known to put ``-N`` on multipart ETags, or a plain ETag
whose size is no S size): those are HEADed, see ``resolve_listing``.  Objects
written around the proxy are left as the backend reported them.  The XML is rewritten in
place with regular expressions so everything else stays byte-identical.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from urllib.parse import unquote
from xml.sax.saxutils import unescape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws.errors import S3Error
from s3proxy.crypto import sizes
from s3proxy.crypto.errors import FormatError
from s3proxy.http.ctx import Ctx, backend_error, forward_headers, read_at_most, response_headers
from s3proxy.http.memo import PARTS_RE, EtagMemo, etag_memo

MAX_LISTING = 64 * 1024 * 1024
_ENTRY = re.compile(rb"<(Contents|Version)>(.*?)</\1>", re.S)
SIZE_EL = re.compile(rb"<Size>(\d+)</Size>")
ETAG_EL = re.compile(rb"<ETag>(.*?)</ETag>", re.S)
CHECKSUM_EL = re.compile(rb"<Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>[^<]*</Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>")


def plaintext_from_listing(size: int, etag: bytes) -> int | None:
    m = PARTS_RE.search(etag.strip())
    try:
        if m:
            return sizes.k_object_plaintext_size(size, int(m.group(1)))
        return sizes.s_plaintext_size(size)
    except (FormatError, ValueError):
        return None


def _fix_entry(m: re.Match[bytes], *, strict: bool = False) -> bytes:
    body = m.group(2)
    sm, em = SIZE_EL.search(body), ETAG_EL.search(body)
    if sm is None or em is None:
        return m.group(0)
    plain = plaintext_from_listing(int(sm.group(1)), em.group(1))
    if plain is None:
        if strict:
            raise _Hidden
        return m.group(0)
    body = body[: sm.start()] + b"<Size>%d</Size>" % plain + body[sm.end():]
    body = opaque_etag(CHECKSUM_EL.sub(b"", body))
    tag = m.group(1)
    return b"<" + tag + b">" + body + b"</" + tag + b">"


# A plain 32-hex ETag in a listing reads as "the MD5 of the content" to clients (rclone, s3cmd),
# but the backend's is the MD5 of the ciphertext and the client-facing one (envelope v2 "e") is
# only known to HEAD/GET.  Listings therefore mark encrypted objects' plain ETags as not-an-MD5
# with a "-1" suffix (the multipart form): clients that need the MD5 read it with HEAD
# (docs/FORMAT.md 8, "Client-facing ETag").
_PLAIN_ETAG = re.compile(rb"<ETag>((?:&quot;|&#34;|\")?)([0-9a-fA-F]{32})((?:&quot;|&#34;|\")?)</ETag>")


def opaque_etag(entry: bytes) -> bytes:
    """An encrypted listing entry with its plain (MD5-shaped) ETag marked as not an MD5."""
    # quoted as AWS quotes ETags, also where the backend did not (rclone serve s3)
    return _PLAIN_ETAG.sub(
        lambda e: b"<ETag>" + (e.group(1) or b"&quot;") + e.group(2) + b"-1" + (e.group(3) or b"&quot;") + b"</ETag>",
        entry, count=1,
    )


def rewrite_listing(xml: bytes) -> bytes:
    return _ENTRY.sub(_fix_entry, xml)


class _Hidden(Exception):
    """An entry whose layout the listing does not show (see resolve_listing)."""


def _fix_entry_or_hidden(m: re.Match[bytes]) -> bytes:
    return _fix_entry(m, strict=True)


def rewrite_parts(xml: bytes, client_upload_id: str | None = None) -> bytes:
    """ListParts: each part's Size minus the constant per-part overhead."""

    def part(m: re.Match[bytes]) -> bytes:
        body = m.group(1)
        body = SIZE_EL.sub(lambda s: b"<Size>%d</Size>" % max(0, int(s.group(1)) - sizes.K_PART_OVERHEAD), body)
        return b"<Part>" + CHECKSUM_EL.sub(b"", body) + b"</Part>"

    out = re.sub(rb"<Part>(.*?)</Part>", part, xml, flags=re.S)
    if client_upload_id is not None:
        from xml.sax.saxutils import escape

        out = re.sub(rb"<UploadId>[^<]*</UploadId>", b"<UploadId>" + escape(client_upload_id).encode() + b"</UploadId>", out)
    return out


SKIP_PAGES = 20  # backend pages a listing may read past that held only the proxy's sidecars
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_NEXT_MARKER = re.compile(rb"<NextMarker>([^<]*)</NextMarker>")
_ANY_ENTRY = re.compile(rb"<(?:Contents|CommonPrefixes|Version|DeleteMarker)>")


async def _backend_page(ctx: Ctx, query: list[tuple[str, str]]) -> tuple[bytes, CIMultiDict[str]] | web.StreamResponse:
    resp = await ctx.state.backend.request(
        "GET", ctx.bucket, None, query=query, headers=forward_headers(ctx.request.headers, body_changed=False),
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    try:
        body = await read_at_most(resp, MAX_LISTING + 1)
        if len(body) > MAX_LISTING:
            raise S3Error("InternalError", "backend listing too large", 500)
    finally:
        resp.release()
    return body, response_headers(resp.headers, ctx.request_id)


def _next_page(query: list[tuple[str, str]], raw: bytes, url_keys: bool) -> list[tuple[str, str]] | None:
    """The query of the page after ``raw`` (ListObjects V1 and V2; None when not truncated)."""
    if b"<IsTruncated>true</IsTruncated>" not in raw:
        return None
    if ("list-type", "2") in query:
        m = _NEXT_TOKEN.search(raw)
        if m is None:
            return None
        return [(k, v) for k, v in query if k not in ("continuation-token", "start-after")] + [
            ("continuation-token", unescape(m.group(1).decode()))]
    if any(k == "versions" for k, _ in query):
        return None
    m = _NEXT_MARKER.search(raw)
    keys = _KEY.findall(raw) if m is None else [m.group(1)]
    if not keys:
        return None
    marker = unescape(keys[-1].decode())
    return [(k, v) for k, v in query if k != "marker"] + [("marker", unquote(marker) if url_keys else marker)]


async def list_objects(ctx: Ctx) -> web.StreamResponse:
    from s3proxy.http.sidecars import hide_reserved

    url_keys = ctx.route.q("encoding-type") == "url"
    query = list(ctx.route.query)
    for _ in range(SKIP_PAGES):
        page = await _backend_page(ctx, query)
        if isinstance(page, web.StreamResponse):
            return page
        raw, hdrs = page
        body = hide_reserved(raw, url_keys)
        # A page that held only sidecars (".s3proxy/" sorts early) would reach the client empty
        # but truncated, which clients do not expect: read on to the next page instead.
        nxt = None if _ANY_ENTRY.search(body) or body == raw else _next_page(query, raw, url_keys)
        if nxt is None:
            break
        query = nxt
    return web.Response(status=200, body=await resolve_listing(ctx, body), headers=hdrs)


# ----------------------------------------------------------------- entries without "-N"
#
# Some backends (rclone serve s3) give a multipart object a plain ETag: its layout cannot be
# told from the listing, and almost every length is a valid S-layout length (only 16 in 16400
# are not), so the S formula would report a plausible, wrong size.  Such entries are resolved
# with a HEAD (the envelope says the layout; a K object's parts are then found by walking the
# part headers, exactly as HeadObject does), concurrently and cached per (bucket, key, ETag,
# size).  Whether the backend puts "-N" on multipart ETags is learned per backend: a "-N" in any
# listing proves it does, and from then on a plain ETag with a valid S length is an S object
# (no extra request: the common case on AWS, MinIO, Ceph).  Until then, and on backends seen
# listing a K object under a plain ETag, plain-ETag entries are HEADed (once per ETag).

LISTING_HEADS = 16  # concurrent HEADs per listing
_CACHE_MAX = 100_000
_KEY = re.compile(rb"<Key>([^<]*)</Key>")
_VERSION_ID = re.compile(rb"<VersionId>([^<]*)</VersionId>")


def _entry_fields(body: bytes) -> tuple[int, bytes] | None:
    sm, em = SIZE_EL.search(body), ETAG_EL.search(body)
    if sm is None or em is None:
        return None
    return int(sm.group(1)), em.group(1)


def _needs_head(size: int, etag: bytes, minus_n: bool | None) -> bool:
    if PARTS_RE.search(etag.strip()):
        return False
    if minus_n is True:
        try:
            sizes.s_plaintext_size(size)
            return False  # an S object: this backend would have listed a K object with "-N"
        except FormatError:
            return True  # not an S length: a K object under a plain ETag (copied around us), or foreign
    return True


async def resolve_listing(ctx: Ctx, xml: bytes) -> bytes:
    """The listing with plaintext sizes; HEADs only the entries whose layout the listing hides."""
    memo = etag_memo(ctx)
    if memo.minus_n is True:
        # The common case (AWS, MinIO, Ceph): every layout shows in the listing; one pass.
        try:
            return _ENTRY.sub(_fix_entry_or_hidden, xml)
        except _Hidden:
            pass
    entries = list(_ENTRY.finditer(xml))
    fields = [_entry_fields(m.group(2)) for m in entries]
    if any(f is not None and PARTS_RE.search(f[1].strip()) for f in fields):
        memo.minus_n = True
    minus_n = memo.minus_n  # one decision for the whole page
    url_keys = ctx.route.q("encoding-type") == "url"
    todo: dict[tuple[str, str, str, int], str | None] = {}
    hidden = False
    for m, f in zip(entries, fields, strict=True):
        if f is None or not _needs_head(f[0], f[1], minus_n):
            continue
        hidden = True
        ck = _cache_key(ctx, m.group(2), f, url_keys)
        if ck is not None and ck not in memo.sizes:
            vm = _VERSION_ID.search(m.group(2))
            vid = unescape(vm.group(1).decode()) if vm and m.group(1) == b"Version" else None
            todo[ck] = None if vid in (None, "null") else vid
    if not hidden:
        return rewrite_listing(xml)  # every layout shows in the listing: one pass, no lookups
    if todo:
        sem = asyncio.Semaphore(LISTING_HEADS)

        async def one(ck: tuple[str, str, str, int], vid: str | None) -> None:
            async with sem:
                memo.sizes[ck] = await _head_size(ctx, memo, ck, vid)

        if len(memo.sizes) + len(todo) > _CACHE_MAX:
            memo.sizes.clear()
        await asyncio.gather(*(one(ck, vid) for ck, vid in todo.items()))

    def fix(m: re.Match[bytes]) -> bytes:
        body = m.group(2)
        f = _entry_fields(body)
        if f is None:
            return m.group(0)
        if _needs_head(f[0], f[1], minus_n):
            ck = _cache_key(ctx, body, f, url_keys)
            if ck is None or ck not in memo.sizes:
                raise S3Error("ServiceUnavailable", "could not determine the size of a listed object; retry", 503)
            plain = memo.sizes[ck]
        else:
            plain = plaintext_from_listing(f[0], f[1])
        if plain is None:
            return m.group(0)
        sm = SIZE_EL.search(body)
        assert sm is not None
        body = body[: sm.start()] + b"<Size>%d</Size>" % plain + body[sm.end():]
        body = opaque_etag(CHECKSUM_EL.sub(b"", body))
        tag = m.group(1)
        return b"<" + tag + b">" + body + b"</" + tag + b">"

    return _ENTRY.sub(fix, xml)


def _cache_key(ctx: Ctx, body: bytes, f: tuple[int, bytes], url_keys: bool) -> tuple[str, str, str, int] | None:
    km = _KEY.search(body)
    if km is None:
        return None
    key = unescape(km.group(1).decode("utf-8", "replace"), {"&quot;": '"', "&apos;": "'", "&#34;": '"', "&#39;": "'"})
    if url_keys:
        key = unquote(key)
    etag = unescape(f[1].decode("utf-8", "replace").strip(), {"&quot;": '"', "&#34;": '"'})
    return (ctx.bucket, key, etag, f[0])


async def _head_size(ctx: Ctx, memo: EtagMemo, ck: tuple[str, str, str, int], vid: str | None) -> int | None:
    """Plaintext size of one listed object from its envelope (None: leave the listed size)."""
    from s3proxy.http import objects, reads
    from s3proxy.http.router import Route

    bucket, key, etag, size = ck
    vq = [("versionId", vid)] if vid else []
    try:
        resp = await ctx.state.backend.request("HEAD", bucket, key, query=vq, headers={"If-Match": etag})
        resp.release()
    except aiohttp.ClientError as e:
        raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
    if resp.status in (404, 412):
        # Deleted or replaced since the listing: nothing can read the listed object any more;
        # its size follows from the listing as well as it can.
        return plaintext_from_listing(size, etag.encode())
    if resp.status != 200:
        raise S3Error("ServiceUnavailable", f"the storage backend answered {resp.status} to a HEAD", 503)
    try:
        env = objects.read_envelope(resp.headers)
    except S3Error:
        return None  # unreadable metadata: not ours to size
    if env is None:
        return None  # written around the proxy: the backend size is the size
    if env.layout == "S":
        try:
            return sizes.s_plaintext_size(size)
        except FormatError:
            return None
    if objects.parts_from_etag(etag) is None and memo.minus_n is None:
        memo.minus_n = False  # ("-N" once seen stays trusted: a plain-ETag K object there was copied around us)
    sub = dataclasses.replace(ctx, route=Route("HeadObject", bucket, key, tuple(vq)))
    try:
        return await reads.resolve_size(sub, bucket, key, env, etag, size)
    except S3Error as e:
        if e.status >= 500:
            raise
        return None  # a damaged object: reading it fails; its listed size stays the backend's
