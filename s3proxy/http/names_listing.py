"""ListObjects (V1, V2) of a bucket with encrypted names (issue 15 item 3, docs/NAMES.md).

The backend lists stored (encrypted) keys, in the order of their ciphertexts.  Sync tools
merge sorted listings, so the proxy reads the whole level asked for (``delimiter=/``: one
"directory"; no delimiter: the subtree) from the backend, up to ``names.max_level`` entries
(beyond: refused, naming the setting -- never an unsorted page), decrypts and sorts it in
plaintext order, and pages it itself: ``max-keys``, ``start-after``/``marker`` (plaintext
keys) and its own continuation tokens (AES-SIV under the name key: opaque and authenticated).
Sizes and ETags are then fixed exactly as for any listing (``listing.resolve_listing``,
on the page with plaintext keys: its HEADs go through the client's key mapping).

Stored keys that do not decrypt (written around the proxy, moved or renamed on the storage)
are left out of listings and logged; a ``prefix=`` that ends inside a segment cannot be
mapped and is refused (400 InvalidArgument).
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape, unescape

from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.backend.names_keys import RESERVED, key_too_long, mappers_of
from s3proxy.crypto import names
from s3proxy.http.ctx import Ctx, read_at_most, response_headers
from s3proxy.http.listing import resolve_listing
from s3proxy.observability import get_logger

log = get_logger("s3proxy.names")

PAGE = 1000
MAX_PAGE_BYTES = 16 << 20
_PREFIX = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>", re.S)
_KEY = re.compile(rb"<Key>([^<]*)</Key>")
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_XML_ENT = {"&quot;": '"', "&apos;": "'", "&#34;": '"', "&#39;": "'"}


def xml_text(raw: bytes) -> str:
    return unescape(raw.decode("utf-8", "surrogateescape"), _XML_ENT)


def out_text(text: str, url: bool) -> bytes:
    """A key or prefix as the client asked for it (``encoding-type=url``: URL-encoded)."""
    return (quote(text, safe="/") if url else escape(text)).encode("utf-8", "surrogateescape")


async def cipher_of(ctx: Ctx) -> names.NameCipher:
    mappers = mappers_of(ctx.state.backend)
    b = mappers.for_bucket(ctx.bucket) if mappers is not None else None
    if b is None:  # names.encrypt without the mappers registered: never list stored names
        raise S3Error("InternalError", "encrypted names are configured but not active", 500)
    return await b.cipher()


def stored_prefix(cipher: names.NameCipher, prefix: str) -> str:
    try:
        return cipher.encrypt_prefix(prefix)
    except names.NotASegmentBoundary as e:
        raise S3Error("InvalidArgument", f"Invalid prefix {prefix!r}: {e}.", 400) from None
    except names.KeyTooLong as e:
        raise key_too_long(e) from None


@dataclass(frozen=True)
class Item:
    key: str  # plaintext key, or common prefix ending in "/"
    entry: bytes | None  # the backend's entry body (stored key inside); None: a common prefix
    tag: bytes = b"Contents"  # Contents, Version or DeleteMarker


_VERSIONS_ENTRY = re.compile(rb"<(Version|DeleteMarker)>(.*?)</\1>", re.S)
_CONTENTS_ENTRY = re.compile(rb"<(Contents)>(.*?)</\1>", re.S)
_NEXT_KEY = re.compile(rb"<NextKeyMarker>([^<]*)</NextKeyMarker>")
_NEXT_VID = re.compile(rb"<NextVersionIdMarker>([^<]*)</NextVersionIdMarker>")


def _next_query(raw: bytes, versions: bool) -> list[tuple[str, str]] | None:
    if b"<IsTruncated>true</IsTruncated>" not in raw:
        return None
    if not versions:
        nm = _NEXT_TOKEN.search(raw)
        return None if nm is None else [("continuation-token", xml_text(nm.group(1)))]
    km, vm = _NEXT_KEY.search(raw), _NEXT_VID.search(raw)
    if km is None:
        return None
    return [("key-marker", xml_text(km.group(1)))] + ([("version-id-marker", xml_text(vm.group(1)))] if vm else [])


async def read_level(ctx: Ctx, cipher: names.NameCipher, prefix: str, delimiter: str, fetch_owner: bool,
                     versions: bool = False) -> list[Item]:
    """Every entry under ``prefix`` (one level with a delimiter), decrypted and sorted
    (versions of one key keep the backend's order: newest first)."""
    bound = ctx.bucket_settings.names.max_level
    base = [("versions", "")] if versions else [("list-type", "2")]
    query = base + [("max-keys", str(PAGE)), ("prefix", stored_prefix(cipher, prefix))]
    if delimiter:
        query.append(("delimiter", delimiter))
    if fetch_owner and not versions:
        query.append(("fetch-owner", "true"))
    items: list[Item] = []
    memo: dict[str, str] = {}  # the level's parents, decrypted once
    skipped = 0
    more: list[tuple[str, str]] | None = []
    while more is not None:
        raw = await _backend_page(ctx, query + more)
        for m in (_VERSIONS_ENTRY if versions else _CONTENTS_ENTRY).finditer(raw):
            km = _KEY.search(m.group(2))
            stored = xml_text(km.group(1)) if km else ""
            try:
                if not stored.startswith(RESERVED):
                    items.append(Item(cipher.decrypt_key(stored, memo), m.group(2), m.group(1)))
            except names.NamesError:
                skipped += 1
        for m in _PREFIX.finditer(raw):
            stored = xml_text(m.group(1))
            try:
                if not stored.startswith(RESERVED):
                    items.append(Item(cipher.decrypt_key(stored, memo), None))  # "~a/~b/": ends in "" + "/"
            except names.NamesError:
                skipped += 1
        if len(items) > bound:
            raise S3Error(
                "InvalidArgument",
                f"This listing level holds more than names.max_level ({bound}) entries; with encrypted names "
                "s3proxy sorts each level in memory. List a narrower prefix, or raise names.max_level.", 400)
        more = _next_query(raw, versions)
    if skipped:
        log.warning("names_undecryptable_listed", bucket=ctx.bucket, count=skipped)
    items.sort(key=lambda i: i.key)  # stable: versions of a key stay newest first
    return items


async def _backend_page(ctx: Ctx, query: list[tuple[str, str]]) -> bytes:
    resp = await ctx.backend.request("GET", ctx.bucket, None, query=query)
    try:
        if resp.status != 200:
            raise S3Error("ServiceUnavailable", f"the storage backend answered {resp.status} to a listing", 503)
        data = await read_at_most(resp, MAX_PAGE_BYTES + 1)
    finally:
        resp.release()
    if len(data) > MAX_PAGE_BYTES:
        raise S3Error("InternalError", "backend listing too large", 500)
    return data


# A listing read whole is kept for its next pages (``continuation-token`` carries its id), so
# paging a level of n entries reads it from the backend once, not n / max-keys times.  Per
# process (another worker reads the level again), a few levels, a short while.
LEVEL_TTL = 30.0
LEVELS_KEPT = 16
_GEN = 16  # hex characters of a listing's id, at the start of its tokens' plaintext
_levels: OrderedDict[str, tuple[float, tuple[object, ...], list[Item]]] = OrderedDict()


def _cached(gen: str, sig: tuple[object, ...]) -> list[Item] | None:
    hit = _levels.get(gen)
    return hit[2] if hit is not None and hit[1] == sig and hit[0] > time.monotonic() else None


def _keep(gen: str, sig: tuple[object, ...], items: list[Item]) -> None:
    _levels[gen] = (time.monotonic() + LEVEL_TTL, sig, items)
    _levels.move_to_end(gen)
    while len(_levels) > LEVELS_KEPT:
        _levels.popitem(last=False)


def _position(cipher: names.NameCipher, ctx: Ctx, v2: bool) -> tuple[str | None, str | None]:
    """(the listing's id from its token, the plaintext key the page starts after)."""
    r = ctx.route
    if v2:
        token = r.q("continuation-token")
        if token is not None:
            try:
                text = cipher.open_token(token)
            except names.NamesError:
                text = ""
            if len(text) <= _GEN:
                raise S3Error("InvalidArgument", "The continuation token provided is incorrect", 400)
            return text[:_GEN], text[_GEN:]
        return None, r.q("start-after")
    return None, r.q("marker")


def entry_xml(item: Item, url: bool) -> bytes:
    if item.entry is None:
        return b"<CommonPrefixes><Prefix>" + out_text(item.key, url) + b"</Prefix></CommonPrefixes>"
    body = _KEY.sub(lambda _: b"<Key>" + out_text(item.key, url) + b"</Key>", item.entry, count=1)
    return b"<" + item.tag + b">" + body + b"</" + item.tag + b">"


def el(name: str, value: bytes) -> bytes:
    return b"<" + name.encode() + b">" + value + b"</" + name.encode() + b">"


def max_keys_of(ctx: Ctx) -> int:
    mk = ctx.route.q("max-keys")
    return PAGE if mk is None else min(PAGE, parse_uint(mk) or 0)


async def list_objects(ctx: Ctx) -> web.StreamResponse:

    r = ctx.route
    v2 = r.q("list-type") == "2"
    prefix, delimiter = r.q("prefix") or "", r.q("delimiter") or ""
    if delimiter not in ("", "/"):
        raise S3Error("InvalidArgument", "With encrypted names the only delimiter served is '/'.", 400)
    url = r.q("encoding-type") == "url"
    max_keys = max_keys_of(ctx)
    cipher = await cipher_of(ctx)
    owner = not v2 or r.q("fetch-owner") == "true"
    gen, after = _position(cipher, ctx, v2)
    sig = (id(ctx.state), ctx.bucket, prefix, delimiter, owner, ctx.identity_name)
    whole = (_cached(gen, sig) if gen else None) or await read_level(ctx, cipher, prefix, delimiter, owner)
    items = whole if after is None else [i for i in whole if i.key > after]
    page, truncated = items[:max_keys], len(items) > max_keys
    if truncated and v2:
        gen = gen or secrets.token_hex(_GEN // 2)
        _keep(gen, sig, whole)
    head = [el("Name", escape(ctx.bucket).encode()), el("Prefix", out_text(prefix, url))]
    if v2:
        if r.q("start-after") is not None:
            head.append(el("StartAfter", out_text(r.q("start-after") or "", url)))
        if r.q("continuation-token") is not None:
            head.append(el("ContinuationToken", escape(r.q("continuation-token") or "").encode()))
        if truncated:
            head.append(el("NextContinuationToken", cipher.seal_token(f"{gen}{page[-1].key}").encode()))
        head.append(el("KeyCount", b"%d" % len(page)))
    else:
        head.append(el("Marker", out_text(r.q("marker") or "", url)))
        if truncated:
            head.append(el("NextMarker", out_text(page[-1].key, url)))
    return await send_page(ctx, b"ListBucketResult", head, page, url, max_keys, delimiter, truncated)


async def send_page(
    ctx: Ctx, root: bytes, head: list[bytes], page: list[Item], url: bool, max_keys: int, delimiter: str,
    truncated: bool,
) -> web.StreamResponse:
    """The common tail of a listing answer (ListBucketResult or ListVersionsResult): the paging
    elements after ``head``, then the page's entries and common prefixes, sizes resolved."""
    head.append(el("MaxKeys", b"%d" % max_keys))
    if delimiter:
        head.append(el("Delimiter", out_text(delimiter, url)))
    if url:
        head.append(el("EncodingType", b"url"))
    head.append(el("IsTruncated", b"true" if truncated else b"false"))
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<' + root + b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           + b"".join(head) + b"".join(entry_xml(i, url) for i in page if i.entry is not None)
           + b"".join(entry_xml(i, url) for i in page if i.entry is None) + b"</" + root + b">")
    hdrs = response_headers({"Content-Type": "application/xml"}, ctx.request_id)
    return web.Response(status=200, body=await resolve_listing(ctx, xml), headers=hdrs)
