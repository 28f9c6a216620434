"""GetObjectAttributes: the backend's answer with plaintext sizes, client ETags and checksums."""

from __future__ import annotations

import re
from collections.abc import Mapping
from xml.sax.saxutils import escape

from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import (
    SealContents,
)
from s3proxy.http import manifests, sse
from s3proxy.http.ctx import (
    Ctx,
    backend_error,
    forward_headers,
    response_headers,
)
from s3proxy.http.listing import CHECKSUM_EL, ETAG_EL, SIZE_EL
from s3proxy.http.memo import PARTS_RE
from s3proxy.http.objects import client_etag, read_envelope, unencrypted, unseal, version_query


async def get_object_attributes(ctx: Ctx) -> web.StreamResponse:

    # The envelope first: an SSE-C object's attributes (its size) need its key, as in S3.
    head = await ctx.backend.request("HEAD", ctx.bucket, ctx.key, query=version_query(ctx))
    head.release()
    env = read_envelope(head.headers) if head.status == 200 else None
    contents: SealContents | None = None
    if env is not None:
        sse.check_customer_key(ctx, env)
        # attributes (sizes, part layout) only of an object whose envelope is bound here
        sealed = await unseal(ctx, head.headers, ctx.bucket, ctx.key, "GetObjectAttributes")
        if sealed is not None:
            try:  # a multipart object's checksum is in its manifest (http/manifests.py)
                asked = "checksum" in ctx.request.headers.get("x-amz-object-attributes", "").lower()
                contents = await manifests.checksum_contents(ctx, ctx.bucket, env, sealed.dek, sealed.contents, wanted=asked)
            finally:
                sealed.dek[:] = bytes(len(sealed.dek))
    elif head.status == 200 and not ctx.bucket_settings.allows_unencrypted(ctx.key):
        raise unencrypted(ctx)
    query = list(ctx.route.query)
    if head.status == 200 and not version_query(ctx) and head.headers.get("x-amz-version-id", "null") != "null":
        query.append(("versionId", head.headers["x-amz-version-id"]))  # the version whose key was checked
    resp = await ctx.backend.request(
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


def rewrite_attributes(
    xml: bytes, layout: str, etag: str | None = None, checksum: Mapping[str, str] | None = None
) -> bytes:
    """GetObjectAttributes: ObjectSize and part sizes in plaintext; no ciphertext checksums.
    ``etag`` and ``checksum`` (from an envelope v2 sealed block) replace the backend's ETag and
    add the plaintext ``Checksum`` (when the request asked for it: ``checksum`` is None otherwise)."""
    xml = re.sub(rb"<Checksum>.*?</Checksum>", b"", xml, flags=re.S)
    xml = CHECKSUM_EL.sub(b"", xml)
    if checksum is not None:
        alg = checksum["alg"].encode()
        el = b"<Checksum><Checksum%s>%s</Checksum%s><ChecksumType>%s</ChecksumType></Checksum>" % (
            alg, escape(checksum["v"]).encode(), alg, escape(checksum["type"]).encode())
        xml = re.sub(rb"(<GetObjectAttributesResponse[^>]*>|<GetObjectAttributesOutput[^>]*>)", lambda m: m.group(1) + el, xml, count=1)
    in_parts = objectinfo.in_parts(layout)
    if in_parts:
        xml = re.sub(
            rb"<Part>(.*?)</Part>",
            lambda m: b"<Part>" + SIZE_EL.sub(lambda s: b"<Size>%d</Size>" % objectinfo.listed_part_size(int(s.group(1))), m.group(1)) + b"</Part>",
            xml,
            flags=re.S,
        )
    n_match = re.search(rb"<TotalPartsCount>(\d+)</TotalPartsCount>", xml)
    etag_match = ETAG_EL.search(xml)
    pm = PARTS_RE.search(etag_match.group(1)) if etag_match else None
    parts = n_match.group(1) if n_match else pm.group(1) if pm else None

    def size(m: re.Match[bytes]) -> bytes:
        if in_parts and parts is None:
            return m.group(0)  # no part count: the stored size stays
        plain = objectinfo.listed_size(int(m.group(1)), parts if in_parts else None)
        return m.group(0) if plain is None else b"<ObjectSize>%d</ObjectSize>" % plain

    xml = re.sub(rb"<ObjectSize>(\d+)</ObjectSize>", size, xml)
    if etag is not None:  # last: the backend's "-N" above may count the parts
        value = escape(etag.strip('"')).encode()
        xml = ETAG_EL.sub(lambda _: b"<ETag>" + value + b"</ETag>", xml, count=1)
    return xml
