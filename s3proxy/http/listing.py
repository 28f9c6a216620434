"""Listings with plaintext sizes, computed from what the backend returns.

ListObjects (V1/V2) and ListObjectVersions entries carry the ciphertext
``Size`` and the ``ETag``; the layout follows from the ETag (``-N`` suffix:
multipart, K layout) and the size math inverts exactly, so no extra backend
requests are made.  Entries whose size doesn't invert (objects written around
the proxy) are left as the backend reported them.  The XML is rewritten in
place with regular expressions so everything else stays byte-identical.
"""

from __future__ import annotations

import re

from aiohttp import web

from s3proxy.crypto import sizes
from s3proxy.crypto.format import FormatError
from s3proxy.http.errors import S3Error
from s3proxy.http.handlers import Ctx, backend_error, forward_headers, read_at_most, response_headers

MAX_LISTING = 64 * 1024 * 1024
_ENTRY = re.compile(rb"<(Contents|Version)>(.*?)</\1>", re.S)
_SIZE = re.compile(rb"<Size>(\d+)</Size>")
_ETAG = re.compile(rb"<ETag>(.*?)</ETag>", re.S)
_PARTS = re.compile(rb"-(\d+)(?:&quot;|&#34;|\")?\s*$")
_CHECKSUM_EL = re.compile(rb"<Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>[^<]*</Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>")


def plaintext_from_listing(size: int, etag: bytes) -> int | None:
    m = _PARTS.search(etag.strip())
    try:
        if m:
            return sizes.k_object_plaintext_size(size, int(m.group(1)))
        return sizes.s_plaintext_size(size)
    except (FormatError, ValueError):
        return None


def _fix_entry(m: re.Match[bytes]) -> bytes:
    body = m.group(2)
    sm, em = _SIZE.search(body), _ETAG.search(body)
    if sm is None or em is None:
        return m.group(0)
    plain = plaintext_from_listing(int(sm.group(1)), em.group(1))
    if plain is None:
        return m.group(0)
    body = body[: sm.start()] + b"<Size>%d</Size>" % plain + body[sm.end():]
    body = _CHECKSUM_EL.sub(b"", body)
    tag = m.group(1)
    return b"<" + tag + b">" + body + b"</" + tag + b">"


def rewrite_listing(xml: bytes) -> bytes:
    return _ENTRY.sub(_fix_entry, xml)


def rewrite_parts(xml: bytes, client_upload_id: str | None = None) -> bytes:
    """ListParts: each part's Size minus the constant per-part overhead."""

    def part(m: re.Match[bytes]) -> bytes:
        body = m.group(1)
        body = _SIZE.sub(lambda s: b"<Size>%d</Size>" % max(0, int(s.group(1)) - sizes.K_PART_OVERHEAD), body)
        return b"<Part>" + _CHECKSUM_EL.sub(b"", body) + b"</Part>"

    out = re.sub(rb"<Part>(.*?)</Part>", part, xml, flags=re.S)
    if client_upload_id is not None:
        from xml.sax.saxutils import escape

        out = re.sub(rb"<UploadId>[^<]*</UploadId>", b"<UploadId>" + escape(client_upload_id).encode() + b"</UploadId>", out)
    return out


def rewrite_attributes(xml: bytes, layout: str) -> bytes:
    """GetObjectAttributes: ObjectSize and part sizes in plaintext; no ciphertext checksums."""
    xml = re.sub(rb"<Checksum>.*?</Checksum>", b"", xml, flags=re.S)
    xml = _CHECKSUM_EL.sub(b"", xml)
    if layout == "K":
        xml = re.sub(
            rb"<Part>(.*?)</Part>",
            lambda m: b"<Part>" + _SIZE.sub(lambda s: b"<Size>%d</Size>" % (int(s.group(1)) - sizes.K_PART_OVERHEAD), m.group(1)) + b"</Part>",
            xml,
            flags=re.S,
        )
    n_match = re.search(rb"<TotalPartsCount>(\d+)</TotalPartsCount>", xml)
    etag_match = _ETAG.search(xml)

    def size(m: re.Match[bytes]) -> bytes:
        ct = int(m.group(1))
        try:
            if layout == "K":
                if n_match:
                    n = int(n_match.group(1))
                else:
                    pm = _PARTS.search(etag_match.group(1)) if etag_match else None
                    if pm is None:
                        return m.group(0)
                    n = int(pm.group(1))
                return b"<ObjectSize>%d</ObjectSize>" % sizes.k_object_plaintext_size(ct, n)
            return b"<ObjectSize>%d</ObjectSize>" % sizes.s_plaintext_size(ct)
        except FormatError:
            return m.group(0)

    return re.sub(rb"<ObjectSize>(\d+)</ObjectSize>", size, xml)


async def list_objects(ctx: Ctx) -> web.StreamResponse:
    resp = await ctx.state.backend.request(
        "GET", ctx.bucket, None, query=list(ctx.route.query),
        headers=forward_headers(ctx.request.headers, body_changed=False),
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    try:
        body = await read_at_most(resp, MAX_LISTING + 1)
        if len(body) > MAX_LISTING:
            raise S3Error("InternalError", "backend listing too large", 500)
    finally:
        resp.release()
    hdrs = response_headers(resp.headers, ctx.request_id)
    return web.Response(status=200, body=rewrite_listing(body), headers=hdrs)
