"""Completeness manifests of multipart objects, as the proxy stores and checks them.

The format is ``s3proxy.crypto.manifest`` (docs/FORMAT.md 8); this module builds a manifest at
CompleteMultipartUpload from the backend's ListParts and the client's part list, and stores,
fetches (cached: a manifest never changes) and copies ``.s3proxy/manifests/<object id hex>``
with the proxy's own backend credentials (see ``s3proxy.http.sidecars``).
"""

from __future__ import annotations

import aiohttp

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.crypto import sizes
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import Buffer
from s3proxy.crypto.manifest import MAX_MANIFEST, Manifest, ManifestMismatch, decode_manifest, manifest_key
from s3proxy.http.ctx import Ctx, read_at_most

_backend_xml = xmlsafe.parse_backend
_children = xmlsafe.children
_text = xmlsafe.child_text


async def put_manifest(ctx: Ctx, manifest: Manifest, dek: Buffer) -> None:
    """Store ``manifest`` in ``ctx.bucket``; 503 (nothing completed) if the backend refuses."""
    data = manifest.encode(dek)
    try:
        resp = await ctx.state.backend.request(
            "PUT", ctx.bucket, manifest_key(manifest.object_id), body=data,
            headers={"content-type": "application/octet-stream"}, credentials=ctx.state.backend.credentials,
        )
        resp.release()
    except aiohttp.ClientError as e:
        raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
    if resp.status != 200:
        raise S3Error("ServiceUnavailable", f"the storage backend refused the object's manifest ({resp.status})", 503)
    _manifests(ctx)[(ctx.bucket, manifest.object_id)] = data


async def get_manifest(ctx: Ctx, bucket: str, object_id: bytes, dek: Buffer) -> Manifest:
    """The object's manifest, authenticated (cached by bucket and object id: it never changes);
    ``ManifestMismatch`` if it is missing, unreadable or does not verify."""
    cache = _manifests(ctx)
    data = cache.get((bucket, object_id))
    if data is None:
        try:
            resp = await ctx.state.backend.request(
                "GET", bucket, manifest_key(object_id), credentials=ctx.state.backend.credentials,
            )
        except aiohttp.ClientError as e:
            raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
        try:
            if resp.status >= 500:
                raise S3Error("ServiceUnavailable", "the storage backend could not read the object's manifest", 503)
            data = await read_at_most(resp, MAX_MANIFEST + 1) if resp.status == 200 else b""
        finally:
            resp.release()
    manifest = decode_manifest(data, dek, object_id)
    if len(cache) >= 4096:
        cache.clear()
    cache[(bucket, object_id)] = data
    return manifest


async def copy_manifest(ctx: Ctx, src_bucket: str, object_id: bytes, dek: Buffer) -> None:
    """Give a copy in ``ctx.bucket`` (same object id and DEK) the source's manifest, verified first."""
    if src_bucket == ctx.bucket:
        return
    try:
        manifest = await get_manifest(ctx, src_bucket, object_id, dek)
    except ManifestMismatch:
        raise S3Error("InvalidObjectState", "The copy source failed its integrity check.", 403) from None
    await put_manifest(ctx, manifest, dek)


def _manifests(ctx: Ctx) -> dict[tuple[str, bytes], bytes]:
    cache = getattr(ctx.state, "manifests", None)
    if not isinstance(cache, dict):
        cache = {}
        ctx.state.manifests = cache  # type: ignore[attr-defined]
    return cache


async def backend_part_sizes(ctx: Ctx, backend_id: str) -> dict[int, tuple[int, str]] | None:
    """{part number: (ciphertext size, ETag)} of the backend upload, from its ListParts pages;
    None when the backend knows no such upload."""
    out: dict[int, tuple[int, str]] = {}
    marker: list[tuple[str, str]] = []
    for _ in range(sizes.MAX_PART_NUMBER // 1000 + 2):
        query = [("uploadId", backend_id), ("max-parts", "1000"), *marker]
        try:
            resp = await ctx.state.backend.request("GET", ctx.bucket, ctx.key, query=query)
        except aiohttp.ClientError as e:
            raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
        data = await read_at_most(resp, 16 << 20)
        resp.release()
        if resp.status == 404:
            return None  # completed already (a retried Complete) or gone: the backend's Complete answers
        if resp.status != 200:
            raise S3Error("ServiceUnavailable", f"the storage backend could not list the parts ({resp.status})", 503)
        root = _backend_xml(data)
        for part in _children(root, "Part"):
            pn, size = parse_uint(_text(part, "PartNumber")), parse_uint(_text(part, "Size"))
            if pn is None or size is None:
                raise S3Error("ServiceUnavailable", "the storage backend sent an unreadable part list", 503)
            out[pn] = (size, (_text(part, "ETag") or "").strip('"'))
        nxt = _text(root, "NextPartNumberMarker")
        if _text(root, "IsTruncated") != "true" or not nxt:
            return out
        marker = [("part-number-marker", nxt)]
    return out


async def manifest_for(ctx: Ctx, object_id: bytes, backend_id: str, parts: list[xmlsafe.CompletePart]) -> Manifest | None:
    """The manifest of the object these parts will make: numbers and plaintext lengths from the
    backend's ListParts, checked against the client's list (InvalidPart / InvalidPartOrder
    before anything is written, as S3 would answer)."""
    if any(b.number <= a.number for a, b in zip(parts, parts[1:], strict=False)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. Parts must be ordered by part number.", 400)
    stored = await backend_part_sizes(ctx, backend_id)
    if stored is None:
        return None
    out: list[tuple[int, int]] = []
    for p in parts:
        have = stored.get(p.number)
        if have is None or have[1] != p.etag.strip().strip('"'):
            raise S3Error("InvalidPart", "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag.", 400)
        try:
            out.append((p.number, sizes.k_part_plaintext_size(have[0])))
        except FormatError:
            raise S3Error("InvalidPart", f"Part {p.number} was not written by s3proxy.", 400) from None
    return Manifest(object_id, tuple(out))
