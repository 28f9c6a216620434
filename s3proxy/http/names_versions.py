"""ListObjectVersions of a bucket with encrypted names (docs/NAMES.md).

As ``names_listing``: the level (or subtree) is read whole from the backend, bounded by
``names.max_level`` (every version counts), decrypted, sorted by plaintext key (the versions
of one key keep the backend's order, newest first) and paged by the proxy with plaintext
``key-marker`` / ``version-id-marker``.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.http.ctx import Ctx
from s3proxy.http.names_listing import (
    Item,
    cipher_of,
    el,
    max_keys_of,
    out_text,
    read_level,
    send_page,
    xml_text,
)

_VID = re.compile(rb"<VersionId>([^<]*)</VersionId>")


def _vid(item: Item) -> str | None:
    m = _VID.search(item.entry) if item.entry is not None else None
    return xml_text(m.group(1)) if m else None


def _after(items: list[Item], key_marker: str | None, vid_marker: str | None) -> list[Item]:
    if not key_marker:
        return items
    if vid_marker:
        for i, it in enumerate(items):
            if it.key == key_marker and _vid(it) == vid_marker:
                return items[i + 1:]
    return [it for it in items if it.key > key_marker]


async def list_versions(ctx: Ctx) -> web.StreamResponse:

    r = ctx.route
    prefix, delimiter = r.q("prefix") or "", r.q("delimiter") or ""
    if delimiter not in ("", "/"):
        raise S3Error("InvalidArgument", "With encrypted names the only delimiter served is '/'.", 400)
    url = r.q("encoding-type") == "url"
    max_keys = max_keys_of(ctx)
    cipher = await cipher_of(ctx)
    items = _after(await read_level(ctx, cipher, prefix, delimiter, False, versions=True),
                   r.q("key-marker"), r.q("version-id-marker"))
    page, truncated = items[:max_keys], len(items) > max_keys
    head = [el("Name", escape(ctx.bucket).encode()), el("Prefix", out_text(prefix, url)),
            el("KeyMarker", out_text(r.q("key-marker") or "", url)),
            el("VersionIdMarker", escape(r.q("version-id-marker") or "").encode())]
    if truncated:
        head.append(el("NextKeyMarker", out_text(page[-1].key, url)))
        vid = _vid(page[-1])
        if vid is not None:
            head.append(el("NextVersionIdMarker", escape(vid).encode()))
    return await send_page(ctx, b"ListVersionsResult", head, page, url, max_keys, delimiter, truncated)
