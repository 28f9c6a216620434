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
import hashlib
import re
from urllib.parse import unquote
from xml.sax.saxutils import escape, unescape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws.errors import S3Error
from s3proxy.crypto import objectinfo
from s3proxy.http import objects, reads_body
from s3proxy.http.ctx import Ctx, backend_error, forward_headers, read_at_most, response_headers
from s3proxy.http.memo import PAGE_CACHE_BYTES, PAGE_CACHE_MIN, PARTS_RE, EtagMemo, etag_memo
from s3proxy.http.router import Route
from s3proxy.http.sidecars import hide_reserved

MAX_LISTING = 64 * 1024 * 1024
_ENTRY = re.compile(rb"<(Contents|Version)>(.*?)</\1>", re.S)
SIZE_EL = re.compile(rb"<Size>(\d+)</Size>")
ETAG_EL = re.compile(rb"<ETag>(.*?)</ETag>", re.S)
CHECKSUM_EL = re.compile(rb"<Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>[^<]*</Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>")


def plaintext_from_listing(size: int, etag: bytes) -> int | None:
    m = PARTS_RE.search(etag.strip())
    return objectinfo.listed_size(size, m.group(1) if m else None)


# A plain 32-hex ETag in a listing reads as "the MD5 of the content" to clients (rclone, s3cmd),
# but the backend's is the MD5 of the ciphertext and the client-facing one (envelope v2 "e") is
# only known to HEAD/GET.  Listings therefore mark encrypted objects' plain ETags as not-an-MD5
# with a "-1" suffix (the multipart form): clients that need the MD5 read it with HEAD
# (docs/FORMAT.md 8, "Client-facing ETag").
_PLAIN_ETAG = re.compile(rb"<ETag>((?:&quot;|&#34;|\")?)([0-9a-fA-F]{32})((?:&quot;|&#34;|\")?)</ETag>")
_PLAIN_VALUE = re.compile(rb"((?:&quot;|&#34;|\")?)([0-9a-fA-F]{32})((?:&quot;|&#34;|\")?)")


def opaque_etag(entry: bytes) -> bytes:
    """An encrypted listing entry with its plain (MD5-shaped) ETag marked as not an MD5."""
    # quoted as AWS quotes ETags, also where the backend did not (rclone serve s3)
    return _PLAIN_ETAG.sub(
        lambda e: b"<ETag>" + (e.group(1) or b"&quot;") + e.group(2) + b"-1" + (e.group(3) or b"&quot;") + b"</ETag>",
        entry, count=1,
    )


# The entry scan: ``<(Contents|Version)>(.*?)</>`` (the meaning) written as one unrolled loop
# per element name, which scans runs of non-"<" bytes at C speed (a 1,000-key page: ~8x faster
# than the lazy, back-referenced form, which was most of a listing's CPU).
_CONTENTS = re.compile(rb"<(Contents)>([^<]*(?:<(?!/Contents>)[^<]*)*)</Contents>")
_VERSION = re.compile(rb"<(Version)>([^<]*(?:<(?!/Version>)[^<]*)*)</Version>")

# (entry match, entry body, Size match, ETag match, ciphertext size, "-N" match of the ETag)
_Entry = tuple[re.Match[bytes], bytes, re.Match[bytes], re.Match[bytes], int, "re.Match[bytes] | None"]


def _entries(xml: bytes) -> list[_Entry]:
    """The entries with a Size and an ETag, in document order."""
    if b"<Version>" not in xml:
        matches = _CONTENTS.finditer(xml)
    elif b"<Contents>" not in xml:
        matches = _VERSION.finditer(xml)
    else:
        matches = _ENTRY.finditer(xml)
    out: list[_Entry] = []
    size_el, etag_el, parts_re = SIZE_EL.search, ETAG_EL.search, PARTS_RE.search
    for m in matches:
        body = m.group(2)
        sm, em = size_el(body), etag_el(body)
        if sm is not None and em is not None:
            out.append((m, body, sm, em, int(sm.group(1)), parts_re(em.group(1))))
    return out


def _plaintext(e: _Entry) -> int | None:
    """The plaintext size the listing implies (None: no valid ciphertext size)."""
    return objectinfo.listed_size(e[4], e[5].group(1) if e[5] is not None else None)


def _rewritten(e: _Entry, plain: int) -> bytes:
    """The entry with the plaintext ``Size``, no ciphertext checksums, a plain ETag marked ``-1``."""
    m, body, sm, em = e[0], e[1], e[2], e[3]
    size_el = b"<Size>%d</Size>" % plain
    s0, s1, e0, e1 = sm.start(), sm.end(), em.start(), em.end()
    pe = _PLAIN_VALUE.fullmatch(em.group(1))
    if (s1 <= e0 or e1 <= s0) and (pe is not None or body.find(b"<ETag>", e1) < 0):
        etag_el = em.group(0) if pe is None else (
            b"<ETag>" + (pe.group(1) or b"&quot;") + pe.group(2) + b"-1" + (pe.group(3) or b"&quot;") + b"</ETag>")
        if s0 < e0:
            body = b"".join((body[:s0], size_el, body[s1:e0], etag_el, body[e1:]))
        else:
            body = b"".join((body[:e0], etag_el, body[e1:s0], size_el, body[s1:]))
    else:  # a malformed entry (Size inside ETag, two ETags): the plain substitutions, in order
        body = opaque_etag(body[:s0] + size_el + body[s1:])
    if b"<Checksum" in body:
        body = CHECKSUM_EL.sub(b"", body)
    tag = m.group(1)
    return b"".join((b"<", tag, b">", body, b"</", tag, b">"))


def _spliced(xml: bytes, entries: list[_Entry], plains: list[int | None]) -> bytes:
    """``xml`` with each entry that has a plaintext size rewritten; everything else byte for byte."""
    pieces, pos = [], 0
    for e, plain in zip(entries, plains, strict=True):
        if plain is not None:
            pieces.append(xml[pos: e[0].start()])
            pieces.append(_rewritten(e, plain))
            pos = e[0].end()
    if not pieces:
        return xml
    pieces.append(xml[pos:])
    return b"".join(pieces)


def rewrite_listing(xml: bytes) -> bytes:
    """Every entry's size from the listing alone (entries without a valid size stay as they are)."""
    entries = _entries(xml)
    return _spliced(xml, entries, [_plaintext(e) for e in entries])


def rewrite_parts(xml: bytes, client_upload_id: str | None = None) -> bytes:
    """ListParts: each part's Size minus the constant per-part overhead."""

    def part(m: re.Match[bytes]) -> bytes:
        body = m.group(1)
        body = SIZE_EL.sub(lambda s: b"<Size>%d</Size>" % objectinfo.listed_part_size(int(s.group(1))), body)
        return b"<Part>" + CHECKSUM_EL.sub(b"", body) + b"</Part>"

    out = re.sub(rb"<Part>(.*?)</Part>", part, xml, flags=re.S)
    if client_upload_id is not None:
        out = re.sub(rb"<UploadId>[^<]*</UploadId>", b"<UploadId>" + escape(client_upload_id).encode() + b"</UploadId>", out)
    return out


SKIP_PAGES = 20  # backend pages a listing may read past that held only the proxy's sidecars
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_NEXT_MARKER = re.compile(rb"<NextMarker>([^<]*)</NextMarker>")
_ANY_ENTRY = re.compile(rb"<(?:Contents|CommonPrefixes|Version|DeleteMarker)>")


async def _backend_page(ctx: Ctx, query: list[tuple[str, str]]) -> tuple[bytes, CIMultiDict[str]] | web.StreamResponse:
    resp = await ctx.backend.request(
        "GET", ctx.bucket, None, query=query, headers=forward_headers(ctx.request.headers, body_changed=False),
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    try:
        n = resp.content_length
        if n is not None and n <= MAX_LISTING:
            body = await resp.read()  # one read: the parser stops the body at its Content-Length
        else:
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


def _needs_head(e: _Entry, plain: int | None, minus_n: bool | None) -> bool:
    """The listing hides this entry's layout: a plain ETag, and either a backend not known to put
    "-N" on multipart ETags, or a size that is no S size (a K object copied around us, or foreign)."""
    return e[5] is None and (minus_n is not True or plain is None)


async def resolve_listing(ctx: Ctx, xml: bytes) -> bytes:
    """The listing with plaintext sizes; HEADs only the entries whose layout the listing hides.

    A page whose entries all have the usual shape takes ``_canonical_listing`` (one regex scan,
    sizes of hidden layouts from the cache by raw bytes).  Otherwise, and when a hidden entry is
    not cached yet: one scan finds the entries (and their Size and ETag), the hidden ones are
    HEADed, and the output is spliced from the scanned pieces."""
    memo = etag_memo(ctx)
    url_keys = ctx.route.q("encoding-type") == "url"
    fast = _fast_page(ctx.bucket, url_keys, memo, xml)
    if fast is not None:
        return fast
    entries = _entries(xml)
    plains = [_plaintext(e) for e in entries]
    if memo.minus_n is not True and any(e[5] is not None for e in entries):
        memo.minus_n = True
    minus_n = memo.minus_n  # one decision for the whole page
    hidden = [i for i, e in enumerate(entries) if _needs_head(e, plains[i], minus_n)]
    if not hidden:
        return _spliced(xml, entries, plains)  # every layout shows in the listing: no lookups
    bucket = ctx.bucket
    keys: dict[int, tuple[str, str, str, int] | None] = {}
    todo: dict[tuple[str, str, str, int], str | None] = {}
    for i in hidden:
        e = entries[i]
        ck = keys[i] = _cache_key(bucket, e, url_keys)
        if ck is not None and ck not in memo.sizes:
            vm = _VERSION_ID.search(e[1])
            vid = unescape(vm.group(1).decode()) if vm and e[0].group(1) == b"Version" else None
            todo[ck] = None if vid in (None, "null") else vid
    if todo:
        sem = asyncio.Semaphore(LISTING_HEADS)

        async def one(ck: tuple[str, str, str, int], vid: str | None) -> None:
            async with sem:
                memo.sizes[ck] = await _head_size(ctx, memo, ck, vid)

        if len(memo.sizes) + len(todo) > _CACHE_MAX:
            memo.sizes.clear()
        await asyncio.gather(*(one(ck, vid) for ck, vid in todo.items()))
    raw = _raw_sizes(memo)
    if len(raw) + len(keys) > _CACHE_MAX:
        raw.clear()
        clear_pages(memo)  # a cached page is only as valid as the raw sizes it was made from
    for i, ck in keys.items():
        if ck is not None:
            if ck not in memo.sizes:
                raise S3Error("ServiceUnavailable", "could not determine the size of a listed object; retry", 503)
            e = entries[i]
            km = _KEY.search(e[1])
            assert km is not None  # ck is not None
            plains[i] = raw[(bucket, url_keys, km.group(1), e[3].group(1), e[4])] = memo.sizes[ck]
    return _spliced(xml, entries, plains)


# ----------------------------------------------------------------- the usual page, fast
#
# An entry "in the usual shape": Key, ETag and Size once each, in that order, Size in digits, no
# ciphertext checksum element (what AWS, MinIO, Ceph, rclone and the devstore send).  One regex
# match per entry gives all three; the page is spliced from the matches.  The sizes of entries
# whose layout the listing hides come from ``_raw_sizes``: the HEAD results of
# ``resolve_listing`` (``memo.sizes``), keyed by the entry's raw Key and ETag bytes, so a page
# seen before costs no decoding.  Any other page (or an entry not cached) takes the general path.

_NOT_FIELD = rb"<(?!/?(?:Contents|Version|Key|ETag|Size)>|/?Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>)"
_OTHER = rb"[^<]*(?:" + _NOT_FIELD + rb"[^<]*)*"  # other elements (an unrolled loop: linear time)
_CANONICAL = re.compile(
    rb"<(Contents|Version)>" + _OTHER + rb"<Key>([^<]*)</Key>" + _OTHER + rb"<ETag>([^<]*)</ETag>" + _OTHER
    + rb"<Size>(\d+)</Size>" + _OTHER + rb"</\1>"
)

_ANY_PARTS = re.compile(rb"<ETag>[^<]*-\d+(?:&quot;|&#34;|\")?\s*</ETag>")  # PARTS_RE on an ETag element
_RawKey = tuple[str, bool, bytes, bytes, int]  # (bucket, url_keys, raw Key, raw ETag, ciphertext size)


def _raw_sizes(memo: EtagMemo) -> dict[_RawKey, int | None]:
    raw: dict[_RawKey, int | None] | None = getattr(memo, "raw_sizes", None)
    if raw is None:
        raw = {}
        setattr(memo, "raw_sizes", raw)  # noqa: B010 - kept beside memo.sizes, cleared with it
    return raw


def _canonical_listing(bucket: str, url_keys: bool, memo: EtagMemo, xml: bytes) -> bytes | None:
    """The rewritten page if every entry has the usual shape and every hidden size is cached."""
    matches = list(_CANONICAL.finditer(xml))
    if len(matches) != xml.count(b"<Contents>") + xml.count(b"<Version>"):
        return None  # an entry of another shape
    if not matches:
        return xml
    if memo.minus_n is not True and _ANY_PARTS.search(xml):
        memo.minus_n = True  # a "-N" ETag in the listing (every ETag is in an entry of the usual shape)
    minus_n = memo.minus_n
    raw = _raw_sizes(memo)
    parts_re = PARTS_RE.search
    pieces: list[bytes] = []
    pos = 0
    plain: int | None
    for m in matches:
        key, etag, size_b = m.group(2, 3, 4)
        size = int(size_b)
        p = parts_re(etag)
        if p is None and minus_n is not True:
            plain = raw.get((bucket, url_keys, key, etag, size), -1)
            if plain == -1:
                return None  # not HEADed yet
        else:
            plain = objectinfo.listed_size(size, p.group(1) if p else None)
            if plain is None and p is None:  # no S size under a plain ETag: hidden (minus_n is True)
                plain = raw.get((bucket, url_keys, key, etag, size), -1)
                if plain == -1:
                    return None
        if plain is None:
            continue  # not an s3proxy size: the entry stays as the backend sent it
        pe = _PLAIN_VALUE.fullmatch(etag)
        if pe is not None:
            etag = b"".join((pe.group(1) or b"&quot;", pe.group(2), b"-1", pe.group(3) or b"&quot;"))
        pieces += (xml[pos: m.start(3)], etag, xml[m.end(3): m.start(4)], b"%d" % plain)
        pos = m.end(4)
    if not pieces:
        return xml
    pieces.append(xml[pos:])
    return b"".join(pieces)


def _fast_page(bucket: str, url_keys: bool, memo: EtagMemo, xml: bytes) -> bytes | None:
    """``_canonical_listing`` once per distinct backend page (issue 11: a client that lists the
    same prefix again gets the page rewritten before, ~120,000 bytecodes saved per 1,000 keys).

    The rewrite is a function of the page's bytes, the bucket, ``encoding-type``, the backend's
    "-N" knowledge (``minus_n``, also what the rewrite leaves it at) and the raw sizes it read,
    which never change for a given (Key, ETag, Size) and are cleared together with these pages.
    A page that differs in any byte (an object replaced, added, removed) has another digest."""
    if len(xml) < PAGE_CACHE_MIN:
        return _canonical_listing(bucket, url_keys, memo, xml)
    ck = (bucket, url_keys, memo.minus_n, hashlib.sha256(xml).digest())
    hit = memo.pages.get(ck)
    if hit is not None:
        memo.pages.move_to_end(ck)
        memo.minus_n = hit[1]  # what _canonical_listing learned from this page
        return hit[0]
    out = _canonical_listing(bucket, url_keys, memo, xml)
    if out is not None and len(out) <= PAGE_CACHE_BYTES // 4:
        memo.pages[ck] = (out, memo.minus_n)
        memo.pages_bytes += len(out)
        while memo.pages_bytes > PAGE_CACHE_BYTES:
            memo.pages_bytes -= len(memo.pages.popitem(last=False)[1][0])
    return out


def clear_pages(memo: EtagMemo) -> None:
    memo.pages.clear()
    memo.pages_bytes = 0


_KEY_ENTITIES = {"&quot;": '"', "&apos;": "'", "&#34;": '"', "&#39;": "'"}
_ETAG_ENTITIES = {"&quot;": '"', "&#34;": '"'}


def _cache_key(bucket: str, e: _Entry, url_keys: bool) -> tuple[str, str, str, int] | None:
    km = _KEY.search(e[1])
    if km is None:
        return None
    key = km.group(1).decode("utf-8", "replace")
    if "&" in key:
        key = unescape(key, _KEY_ENTITIES)
    if url_keys:
        key = unquote(key)
    raw = e[3].group(1)
    if b"&" in raw:  # unescape's result, with the common entities replaced in C first
        raw = raw.replace(b"&quot;", b'"').replace(b"&#34;", b'"')
    etag = raw.decode("utf-8", "replace").strip()
    if "&" in etag:
        etag = unescape(etag, _ETAG_ENTITIES)
    return (bucket, key, etag, e[4])


async def _head_size(ctx: Ctx, memo: EtagMemo, ck: tuple[str, str, str, int], vid: str | None) -> int | None:
    """Plaintext size of one listed object from its envelope (None: leave the listed size)."""
    bucket, key, etag, size = ck
    vq = [("versionId", vid)] if vid else []
    try:
        resp = await ctx.backend.request("HEAD", bucket, key, query=vq, headers={"If-Match": etag})
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
    if not objectinfo.in_parts(env.layout):
        return objectinfo.listed_size(size, None)
    if objects.parts_from_etag(etag) is None and memo.minus_n is None:
        memo.minus_n = False  # ("-N" once seen stays trusted: a plain-ETag K object there was copied around us)
    sub = dataclasses.replace(ctx, route=Route("HeadObject", bucket, key, tuple(vq)))
    try:
        return await reads_body.resolve_size(sub, bucket, key, env, etag, size)
    except S3Error as e:
        if e.status >= 500:
            raise
        return None  # a damaged object: reading it fails; its listed size stays the backend's
