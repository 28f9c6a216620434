"""The operations of a bucket with encrypted names that see keys in XML (docs/NAMES.md).

Object requests need nothing here: the backend client maps every key it sends (path and
``x-amz-copy-source``) to its stored form.  What remains are the XML documents that carry
keys: listings (``names_listing``), DeleteObjects (request and result),
ListMultipartUploads (prefix, markers, keys), and the keys and ``Location`` in the answers
of CreateMultipartUpload, CompleteMultipartUpload and ListParts.  Clients only ever see
plaintext keys.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.backend.names_keys import key_too_long, mappers_of
from s3proxy.crypto import names
from s3proxy.http.auth import RequestBody
from s3proxy.http.authz import check_delete_objects
from s3proxy.http.ctx import (
    Ctx,
    Handler,
    _rewritten_body_headers,
    backend_error,
    forward_headers,
    read_at_most,
    response_headers,
)
from s3proxy.http.names_listing import cipher_of, list_objects, out_text, stored_prefix, xml_text
from s3proxy.http.names_versions import list_versions
from s3proxy.http.router import Route

_KEY_LIKE = re.compile(rb"<(Key|KeyMarker|NextKeyMarker|Prefix)>([^<]*)</\1>")
_LOCATION = re.compile(rb"<Location>([^<]*)</Location>")
_RESULT_KEYS = ("CreateMultipartUpload", "CompleteMultipartUpload", "ListParts")


def active(ctx: Ctx) -> bool:
    mappers = mappers_of(ctx.state.backend)
    return mappers is not None and ctx.route.bucket is not None and mappers.active(ctx.route.bucket)


async def dispatch(ctx: Ctx, handler: Handler) -> web.StreamResponse:
    r = ctx.route
    if r.op == "ListObjectVersions" or (r.op.startswith("ListObjects") and r.has("versions")):
        return await list_versions(ctx)
    if r.op in ("ListObjects", "ListObjectsV2"):
        return await list_objects(ctx)
    if r.op == "ListMultipartUploads":
        return await list_uploads(ctx, handler)
    if r.op == "BucketConfig" and ctx.request.method == "POST" and r.has("delete"):
        return await delete_objects(ctx)
    if r.key is not None:
        # the name key loaded and the key's length checked before anything is read or sent
        # (a KeyTooLongError raised inside a streamed upload would reach the client as a 503)
        mappers = mappers_of(ctx.state.backend)
        assert mappers is not None
        await mappers.stored_key(r.bucket, r.key)
    resp = await handler(ctx)
    if r.op in _RESULT_KEYS and isinstance(resp, web.Response) and resp.status == 200 and resp.body:
        resp.body = await _own_key(ctx, bytes(resp.body))  # type: ignore[arg-type]
    return resp


async def _own_key(ctx: Ctx, body: bytes) -> bytes:
    """The answer with the request's stored key replaced by its plaintext key (Key, Location)."""
    mappers = mappers_of(ctx.state.backend)
    assert mappers is not None
    stored = (await mappers.stored_key(ctx.bucket, ctx.key)).encode()
    body = re.sub(rb"<Key>" + re.escape(stored) + rb"</Key>", lambda _: b"<Key>" + escape(ctx.key).encode() + b"</Key>", body)
    plain = quote(ctx.key, safe="/").encode()

    def location(m: re.Match[bytes]) -> bytes:  # "~" as it is or percent-encoded, as backends differ
        loc = m.group(1).replace(stored, plain).replace(stored.replace(b"~", b"%7E"), plain)
        return b"<Location>" + loc + b"</Location>"

    return _LOCATION.sub(location, body)


def plain_keys(cipher: names.NameCipher, xml: bytes, url: bool) -> bytes:
    """Every Key, KeyMarker, NextKeyMarker and Prefix of a backend document, decrypted
    (values that do not decrypt -- empty, or written around the proxy -- stay as they are)."""

    def one(m: re.Match[bytes]) -> bytes:
        text = xml_text(m.group(2))
        if url:
            text = unquote(text)
        if not text.startswith(names.MARK):
            return m.group(0)
        try:
            plain = cipher.decrypt_key(text)
        except names.NamesError:
            return m.group(0)
        return b"<" + m.group(1) + b">" + out_text(plain, url) + b"</" + m.group(1) + b">"

    return _KEY_LIKE.sub(one, xml)


async def list_uploads(ctx: Ctx, handler: Handler) -> web.StreamResponse:
    """ListMultipartUploads: prefix and key-marker sent in stored form, the answer decrypted and,
    when it fits one page, in plaintext key order (a truncated answer: stored-key order, which
    the markers follow consistently)."""
    cipher = await cipher_of(ctx)
    r = ctx.route
    delimiter = r.q("delimiter")
    if delimiter not in (None, "", "/"):
        raise S3Error("InvalidArgument", "With encrypted names the only delimiter served is '/'.", 400)
    query: list[tuple[str, str]] = []
    for k, v in r.query:
        if k == "prefix":
            v = stored_prefix(cipher, v)
        elif k == "key-marker" and v:
            try:
                v = cipher.encrypt_key(v)
            except names.KeyTooLong as e:
                raise key_too_long(e) from None
        query.append((k, v))
    sub = dataclasses.replace(ctx, route=Route(r.op, r.bucket, r.key, tuple(query)))
    resp = await handler(sub)
    if isinstance(resp, web.Response) and resp.status == 200 and resp.body:
        url = r.q("encoding-type") == "url"
        resp.body = plaintext_order(plain_keys(cipher, bytes(resp.body), url), url)  # type: ignore[arg-type]
    return resp


_UPLOAD = re.compile(rb"<Upload>.*?</Upload>", re.S)
_COMMON = re.compile(rb"<CommonPrefixes>.*?</CommonPrefixes>", re.S)
_FIRST_KEY = re.compile(rb"<(?:Key|Prefix)>([^<]*)</")


def _in_place(pattern: re.Pattern[bytes], xml: bytes, blocks: list[bytes]) -> bytes:
    """``xml`` with the n-th match of ``pattern`` replaced by ``blocks[n]``."""
    ordered = iter(blocks)
    return pattern.sub(lambda _: next(ordered), xml)


def plaintext_order(xml: bytes, url: bool) -> bytes:
    """A ListMultipartUploads answer that fits one page, its uploads (and common prefixes) in
    plaintext key order (uploads of one key keep the backend's order: by initiation).  A truncated
    answer keeps the stored order its markers follow (docs/NAMES.md)."""
    if b"<IsTruncated>true</IsTruncated>" in xml:
        return xml

    def sort_key(block: bytes) -> str:
        m = _FIRST_KEY.search(block)
        text = xml_text(m.group(1)) if m else ""
        return unquote(text) if url else text

    for pattern in (_UPLOAD, _COMMON):
        blocks = [m.group(0) for m in pattern.finditer(xml)]
        if len(blocks) > 1:
            xml = _in_place(pattern, xml, sorted(blocks, key=sort_key))
    return xml


async def delete_objects(ctx: Ctx) -> web.StreamResponse:
    """DeleteObjects: keys authorised in plaintext, sent in stored form, answered in plaintext."""
    mappers = mappers_of(ctx.state.backend)
    assert mappers is not None
    data = await RequestBody(ctx.request, ctx.caller.auth).read_all(ctx.state.settings.limits.max_xml_body)
    req = check_delete_objects(ctx, data or b"")
    back: dict[str, str] = {}
    objects: list[tuple[str, str | None]] = []
    for key, version in req.objects:
        stored = await mappers.stored_key(ctx.bucket, key)
        back[stored] = key
        objects.append((stored, version))
    xml = xmlsafe.delete_xml(dataclasses.replace(req, objects=objects))
    headers = _rewritten_body_headers(forward_headers(ctx.request.headers, body_changed=False), xml)
    resp = await ctx.backend.request("POST", ctx.bucket, None, query=list(ctx.route.query), headers=headers, body=xml)
    if resp.status != 200:
        return await backend_error(ctx, resp)
    try:
        out = await read_at_most(resp, 16 << 20)
    finally:
        resp.release()

    def plain(m: re.Match[bytes]) -> bytes:
        found = back.get(xml_text(m.group(1)))
        return m.group(0) if found is None else b"<Key>" + escape(found).encode() + b"</Key>"

    out = re.sub(rb"<Key>([^<]*)</Key>", plain, out)
    return web.Response(status=200, body=out, headers=response_headers(resp.headers, ctx.request_id))
