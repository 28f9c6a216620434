"""Completeness manifests of multipart objects, as the proxy stores and checks them.

The format is ``s3proxy.crypto.manifest`` (docs/FORMAT.md 8); this module builds a manifest at
CompleteMultipartUpload from the backend's ListParts and the client's part list, and stores,
fetches (cached: a manifest never changes) and copies ``.s3proxy/manifests/<object id hex>``
with the proxy's own backend credentials (see ``s3proxy.http.sidecars``).
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import re
from collections.abc import Mapping
from xml.sax.saxutils import escape

import aiohttp

from s3proxy.aws import checksums, xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import Envelope, SealContents
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import Buffer
from s3proxy.crypto.manifest import (
    MAX_MANIFEST,
    Manifest,
    ManifestMismatch,
    PartRecord,
    PartRecordInvalid,
    decode_manifest,
    manifest_key,
    part_opener,
    part_records_prefix,
    record_number,
    seal_part_record,
    upload_record_mac,
)
from s3proxy.http import sidecars
from s3proxy.http.ctx import Ctx, read_at_most
from s3proxy.observability import get_logger

log = get_logger("s3proxy.manifests")

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
    for _ in range(objectinfo.MAX_PART_NUMBER // 1000 + 2):
        query = [("uploadId", backend_id), ("max-parts", "1000"), *marker]
        try:
            resp = await ctx.backend.request("GET", ctx.bucket, ctx.key, query=query)
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
    """The manifest (without checksum) of the object these parts will make; None when the
    backend knows no such upload."""
    checked = await checked_parts(ctx, backend_id, parts)
    return None if checked is None else Manifest(object_id, tuple((n, p) for n, p, _ in checked))


async def checked_parts(ctx: Ctx, backend_id: str, parts: list[xmlsafe.CompletePart]) -> list[tuple[int, int, str]] | None:
    """[(number, plaintext length, backend ETag)] of the parts the client lists, from the
    backend's ListParts, checked against the client's list (InvalidPart / InvalidPartOrder
    before anything is written, as S3 would answer); None when the backend knows no such upload."""
    if any(b.number <= a.number for a, b in zip(parts, parts[1:], strict=False)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. Parts must be ordered by part number.", 400)
    stored = await backend_part_sizes(ctx, backend_id)
    if stored is None:
        return None
    out: list[tuple[int, int, str]] = []
    for p in parts:
        have = stored.get(p.number)
        if have is None or have[1] != p.etag.strip().strip('"'):
            raise S3Error("InvalidPart", _INVALID_PART, 400)
        try:
            out.append((p.number, objectinfo.part_plaintext_size(have[0]), have[1]))
        except FormatError:
            raise S3Error("InvalidPart", f"Part {p.number} was not written by s3proxy.", 400) from None
    return out


# -- multipart checksums (docs/FORMAT.md 8, "Multipart checksums") ---------------------------------


def _record_error() -> S3Error:
    return S3Error("InvalidObjectState", "The upload's record under .s3proxy/ failed its integrity check; "
                   "abort the upload and start it again.", 403)


async def upload_mode(ctx: Ctx, backend_id: str, dek: Buffer) -> tuple[str, str] | None:
    """The (ALGORITHM, TYPE) CreateMultipartUpload recorded for this upload, authenticated by the
    record's MAC; None when it had none (or its record predates the MAC, or is gone: the object
    then has no checksum, never a wrong one); the integrity error when the MAC fails."""
    sc = await sidecars.get_upload(ctx, backend_id)
    if sc is None or not sc.checksum_algorithm:
        return None
    if sc.mac is None:
        log.warning("upload_record_without_mac", bucket=ctx.bucket)
        return None
    want = upload_record_mac(dek, ctx.bucket, ctx.key, backend_id, sc.checksum_algorithm, sc.checksum_type)
    mode = checksums.upload_mode(sc.checksum_algorithm, sc.checksum_type) if hmac.compare_digest(want, sc.mac) else None
    if mode is None or mode != (sc.checksum_algorithm, sc.checksum_type):
        ctx.state.metrics.integrity_failures.inc()
        log.warning("upload_record_refused", bucket=ctx.bucket, identity=ctx.identity_name)
        raise _record_error()
    return mode


def part_algorithm(sent: list[str], mode: tuple[str, str] | None) -> None:
    """Refuse a part whose ``x-amz-checksum-<alg>`` (header or declared trailer) is not the
    upload's algorithm, as S3 does."""
    if mode is None:
        return
    for name in sent:
        alg = name.removeprefix("x-amz-checksum-")
        if alg != mode[0].lower():
            raise S3Error("InvalidRequest", f"Checksum Type mismatch occurred, expected checksum Type: {mode[0].lower()}, "
                          f"actual checksum Type: {alg}", 400)


async def record_part(
    ctx: Ctx, dek: Buffer, object_id: bytes, backend_id: str, etag: str, number: int, alg: str, digest: bytes,
) -> None:
    """Store the part's verified checksum (one empty PUT); 503 when the backend refuses it (the
    part is stored but would fail Complete: the client retries the part)."""
    key = seal_part_record(dek, object_id, ctx.bucket, ctx.key, backend_id, etag, PartRecord(number, alg, digest))
    if not await sidecars.put_part_record(ctx, key):
        raise S3Error("ServiceUnavailable", "the storage backend refused the part's checksum record; upload the part again", 503)


async def part_digests(
    ctx: Ctx, dek: Buffer, object_id: bytes, backend_id: str, alg: str, etags: Mapping[int, str],
) -> dict[int, bytes]:
    """{part number: raw digest} of the parts in ``etags`` (number -> the backend's current part
    ETag) whose record authenticates for this upload, part and ETag; others are left out."""
    if not etags:
        return {}
    prefix = part_records_prefix(backend_id)
    lo, hi = min(etags), max(etags)
    names = await sidecars.list_names(ctx, prefix, start_after=f"{prefix}{lo - 1:05d}/", stop_after=f"{prefix}{hi:05d}/")
    if names is None:
        raise S3Error("ServiceUnavailable", "the storage backend could not list the parts' checksum records", 503)
    out: dict[int, bytes] = {}
    open_record = part_opener(dek, object_id, ctx.bucket, ctx.key, backend_id)
    for name in names:
        n = record_number(name)
        if n is None or n not in etags or n in out:
            continue
        try:
            rec = open_record(name, etags[n])
        except PartRecordInvalid:
            ctx.state.metrics.integrity_failures.inc()
            continue  # a stale record of a part uploaded again, or a planted one
        if rec.alg == alg:
            out[n] = rec.digest
    return out


_INVALID_PART = ("One or more of the specified parts could not be found. The part may not have been uploaded, "
                 "or the specified entity tag may not have matched the part's entity tag.")


async def object_checksum(
    ctx: Ctx, dek: Buffer, object_id: bytes, backend_id: str, mode: tuple[str, str],
    parts: list[xmlsafe.CompletePart], checked: list[tuple[int, int, str]],
) -> dict[str, str]:
    """The object's checksum record at Complete: each part's verified checksum (from its record)
    compared with the client's (``InvalidPart``; a COMPOSITE upload needs them all:
    ``InvalidRequest``), combined, and compared with the whole-object value if sent (``BadDigest``)."""
    alg, typ = mode
    sent_type = ctx.request.headers.get("x-amz-checksum-type")
    if sent_type is not None and sent_type.strip().upper() != typ:
        raise S3Error("BadDigest", f"The upload was created using the {typ} checksum type.", 400)
    digests = await part_digests(ctx, dek, object_id, backend_id, alg, {n: e for n, _, e in checked})
    element = checksums.ELEMENTS[alg]
    for p in parts:
        have = digests.get(p.number)
        if have is None:
            raise S3Error("InvalidPart", f"The checksum of part {p.number} cannot be verified (its record is missing or "
                          "failed authentication); upload the part again.", 400)
        given = p.checksums.get(element)
        if any(name != element for name in p.checksums):
            raise S3Error("InvalidPart", _INVALID_PART, 400)
        if given is None:
            if typ == "COMPOSITE":
                raise S3Error("InvalidRequest", f"The upload was created using a {alg.lower()} checksum. The complete "
                              f"request must include the checksum for each part. It was missing for part {p.number} in the request.", 400)
            continue
        raw = checksums.decode_b64(alg, given)
        if raw is None or not hmac.compare_digest(raw, have):
            raise S3Error("InvalidPart", _INVALID_PART, 400)
    record = checksums.multipart_checksum(alg, typ, [(digests[n], length) for n, length, _ in checked])
    whole = ctx.request.headers.get("x-amz-checksum-" + alg.lower())
    if whole is not None and whole.strip() not in (record["v"], record["v"].rpartition("-")[0]):
        raise S3Error("BadDigest", f"The {alg} you specified did not match the calculated checksum.", 400)
    return record


def with_checksum(contents: SealContents | None, manifest: Manifest) -> SealContents | None:
    """``contents`` with the multipart checksum kept in ``manifest`` (a whole-object GET has it already)."""
    if contents is None or manifest.checksum is None or contents.checksum is not None:
        return contents
    return dataclasses.replace(contents, checksum=manifest.checksum)


async def checksum_contents(
    ctx: Ctx, bucket: str, env: Envelope, dek: Buffer, contents: SealContents | None, *, wanted: bool,
) -> SealContents | None:
    """For HEAD and GetObjectAttributes of a multipart object: its contents with the checksum of
    its manifest, read (one GET, then cached) only when ``wanted`` (``x-amz-checksum-mode:
    ENABLED``, or the ``Checksum`` attribute); the integrity error when the manifest fails."""
    if not wanted or contents is None or not contents.manifest or not objectinfo.in_parts(env.layout) or contents.checksum is not None:
        return contents
    try:
        manifest = await get_manifest(ctx, bucket, env.object_id, dek)
    except ManifestMismatch:
        ctx.state.metrics.integrity_failures.inc()
        raise S3Error("InvalidObjectState",
                      "The stored object failed authentication (tampered, truncated or misplaced ciphertext).", 403) from None
    return with_checksum(contents, manifest)


def checksum_mode_enabled(ctx: Ctx) -> bool:
    return ctx.request.headers.get("x-amz-checksum-mode", "").strip().upper() == "ENABLED"


async def complete_manifest(
    ctx: Ctx, dek: Buffer, object_id: bytes, backend_id: str, parts: list[xmlsafe.CompletePart],
) -> Manifest | None:
    """The manifest of the object these parts will make, with its checksum when the upload has
    an algorithm; None when the backend knows no such upload (a retried Complete)."""
    checked = await checked_parts(ctx, backend_id, parts)
    if checked is None:
        return None
    mode = await upload_mode(ctx, backend_id, dek)
    checksum = None if mode is None else await object_checksum(ctx, dek, object_id, backend_id, mode, parts, checked)
    return Manifest(object_id, tuple((n, p) for n, p, _ in checked), checksum)


_ROOT_END = re.compile(rb"</[A-Za-z]+>\s*$")


def add_checksum_xml(xml: bytes, record: Mapping[str, str]) -> bytes:
    """An answer (CompleteMultipartUploadResult) with ``<Checksum<ALG>>`` and ``<ChecksumType>``
    added at the end of its root element."""
    el = checksums.ELEMENTS[record["alg"]]
    add = f"<{el}>{escape(record['v'])}</{el}><ChecksumType>{escape(record['type'])}</ChecksumType>"
    return add_to_root(xml, add.encode("ascii"))


def add_to_root(xml: bytes, add: bytes) -> bytes:
    """``xml`` with ``add`` at the end of its root element."""
    m = _ROOT_END.search(xml)
    return xml if m is None else xml[: m.start()] + add + xml[m.start() :]


_PART = re.compile(rb"<Part>(.*?)</Part>", re.S)
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d{1,5})\s*</PartNumber>")
_PART_ETAG = re.compile(rb"<ETag>([^<]*)</ETag>")
_ALGORITHM_EL = re.compile(rb"<ChecksumAlgorithm>[^<]*</ChecksumAlgorithm>")


async def list_parts_checksums(ctx: Ctx, dek: Buffer, object_id: bytes, backend_id: str, xml: bytes) -> bytes:
    """A ListParts answer (plaintext sizes already) with each part's verified checksum and the
    upload's ``ChecksumAlgorithm``/``ChecksumType``, when the upload has an algorithm."""
    mode = await upload_mode(ctx, backend_id, dek)
    if mode is None:
        return xml
    etags: dict[int, str] = {}
    for m in _PART.finditer(xml):
        nm, em = _PART_NUMBER.search(m.group(1)), _PART_ETAG.search(m.group(1))
        if nm is not None and em is not None:
            etags[int(nm.group(1))] = xmlsafe.text(em.group(1).decode("utf-8", "replace")).strip().strip('"')
    digests = await part_digests(ctx, dek, object_id, backend_id, mode[0], etags)
    el = checksums.ELEMENTS[mode[0]].encode()

    def part(m: re.Match[bytes]) -> bytes:
        nm = _PART_NUMBER.search(m.group(1))
        digest = digests.get(int(nm.group(1))) if nm is not None else None
        if digest is None:
            return m.group(0)
        return b"<Part>" + m.group(1) + b"<" + el + b">" + base64.b64encode(digest) + b"</" + el + b"></Part>"

    xml = _PART.sub(part, _ALGORITHM_EL.sub(b"", xml))
    add = f"<ChecksumAlgorithm>{mode[0]}</ChecksumAlgorithm><ChecksumType>{mode[1]}</ChecksumType>".encode()
    return add_to_root(xml, add)  # </ListPartsResult> (moto: </ListPartsOutput>)
