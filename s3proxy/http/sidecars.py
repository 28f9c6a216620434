"""Proxy-owned objects under the reserved prefix ``.s3proxy/`` of encrypted buckets.

S3 cannot attach state to a multipart upload, and the proxy keeps none, so what an
upload needs to be found again is kept as small objects in the same bucket
(docs/FORMAT.md 8, "Sidecars"):

* ``.s3proxy/manifests/<object id hex>``: the completeness manifest of a multipart object
  (``s3proxy.http.manifests``), written at CompleteMultipartUpload before the backend's
  Complete, read by GETs of objects whose sealed block promises one (cached: immutable).
* ``.s3proxy/uploads/<hex sha256(backend upload id)>``: the client-facing upload id
  (backend id + ``~`` + upload token, nothing secret) and the upload's checksum
  algorithm and type (with a MAC under the DEK).  Written at CreateMultipartUpload, read by
  ListMultipartUploads (so listed ids are the ids CreateMultipartUpload returned),
  UploadPart and Complete, deleted at Complete and Abort.
* ``.s3proxy/parts/<hex sha256(backend upload id)>/<part number>.<record>``: empty objects
  whose keys are the parts' verified checksums, encrypted (``s3proxy.crypto.manifest``).

Deleting them on a versioned bucket deletes every version and delete marker too.

Clients can neither read, write, copy, delete nor list keys under the prefix
(``authz.authorise`` and ``hide_reserved``); the proxy reaches them with its own
backend credentials.  A sidecar is not trusted: a listed id must name the backend
upload it is listed for, and every use of an upload id still verifies the token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote
from xml.sax.saxutils import escape, unescape

import aiohttp
from aiohttp import web

from s3proxy.crypto.manifest import part_records_prefix
from s3proxy.http.ctx import Ctx, read_at_most, relay, response_headers
from s3proxy.http.router import RESERVED_KEY_PREFIX, is_reserved_key
from s3proxy.observability import get_logger

log = get_logger("s3proxy.sidecars")

RESERVED = RESERVED_KEY_PREFIX
UPLOADS = RESERVED + "uploads/"
SEP = "~"
MAX_SIDECAR = 16 << 10
LOOKUPS = 16  # concurrent sidecar GETs per listing
_CACHE_MAX = 50_000


is_reserved = is_reserved_key


def upload_key(backend_id: str) -> str:
    return UPLOADS + hashlib.sha256(backend_id.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class UploadSidecar:
    """What a sidecar says about one upload; ``client_id`` starts with ``backend id + "~"``."""

    client_id: str
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    mac: str | None = None  # over algorithm and type (crypto.manifest.upload_record_mac)

    def encode(self) -> bytes:
        obj: dict[str, object] = {"v": 1, "id": self.client_id}
        if self.checksum_algorithm:
            obj["alg"] = self.checksum_algorithm
        if self.checksum_type:
            obj["type"] = self.checksum_type
        if self.mac:
            obj["mac"] = self.mac
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, backend_id: str) -> UploadSidecar | None:
        """The sidecar, or None when it is unreadable or names another upload."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(obj, dict) or obj.get("v") != 1:
            return None
        cid, alg, typ, mac = obj.get("id"), obj.get("alg"), obj.get("type"), obj.get("mac")
        if not isinstance(cid, str) or cid.rpartition(SEP)[0] != backend_id:
            return None
        if not all(x is None or isinstance(x, str) for x in (alg, typ, mac)):
            return None
        return cls(cid, alg, typ, mac)


async def put_upload(ctx: Ctx, backend_id: str, sidecar: UploadSidecar) -> bool:
    """Store the upload's sidecar with the proxy's credentials; False if the backend refused."""
    try:
        resp = await ctx.state.backend.request(
            "PUT", ctx.bucket, upload_key(backend_id), body=sidecar.encode(),
            headers={"content-type": "application/json"}, credentials=ctx.state.backend.credentials,
        )
    except aiohttp.ClientError:
        return False
    resp.release()
    if resp.status == 200:
        _cache(ctx)[(ctx.bucket, backend_id)] = sidecar
        return True
    log.warning("upload_sidecar_put_failed", bucket=ctx.bucket, status=resp.status)
    return False


async def delete_upload(ctx: Ctx, backend_id: str, *, parts: bool | None = False) -> None:
    """Best effort: the upload is gone (completed or aborted), so are its sidecar and (``parts``;
    None: if its sidecar names a checksum algorithm) its part records, every version of them."""
    if parts is None:
        sc = await get_upload(ctx, backend_id)
        parts = sc is not None and bool(sc.checksum_algorithm)
    _cache(ctx).pop((ctx.bucket, backend_id), None)
    await delete_reserved(ctx, upload_key(backend_id))
    if parts:
        await purge_prefix(ctx, part_records_prefix(backend_id))


async def get_upload(ctx: Ctx, backend_id: str) -> UploadSidecar | None:
    """The upload's sidecar (cached), or None (none, unreadable, or for another upload)."""
    cache = _cache(ctx)
    ck = (ctx.bucket, backend_id)
    if ck in cache:
        return cache[ck]
    try:
        resp = await ctx.state.backend.request(
            "GET", ctx.bucket, upload_key(backend_id), credentials=ctx.state.backend.credentials,
        )
    except aiohttp.ClientError:
        return None
    try:
        data = await read_at_most(resp, MAX_SIDECAR + 1) if resp.status == 200 else b""
    finally:
        resp.release()
    found = UploadSidecar.decode(data, backend_id) if 0 < len(data) <= MAX_SIDECAR else None
    if found is not None:  # absent ones are not cached: the sidecar may be written a moment later
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[ck] = found
    return found


def _cache(ctx: Ctx) -> dict[tuple[str, str], UploadSidecar]:
    cache = getattr(ctx.state, "upload_sidecars", None)
    if not isinstance(cache, dict):
        cache = {}
        ctx.state.upload_sidecars = cache  # type: ignore[attr-defined]
    return cache


# ------------------------------------------------------------------------- listings

_HIDEABLE = re.compile(rb"<(Contents|Version|DeleteMarker|Upload)>(.*?)</\1>", re.S)
_KEY = re.compile(rb"<Key>([^<]*)</Key>")
_PREFIXES = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>", re.S)
_KEY_COUNT = re.compile(rb"<KeyCount>(\d+)</KeyCount>")


def _decoded(raw: bytes, url_keys: bool) -> str:
    text = unescape(raw.decode("utf-8", "surrogateescape"))
    return unquote(text) if url_keys else text


def hide_reserved(xml: bytes, url_keys: bool) -> bytes:
    """A listing without the entries and common prefixes under ``.s3proxy/`` (KeyCount adjusted)."""
    if RESERVED.encode() not in xml and b".s3proxy%2F" not in xml and b".s3proxy%2f" not in xml:
        return xml
    hidden = 0

    def entry(m: re.Match[bytes]) -> bytes:
        nonlocal hidden
        km = _KEY.search(m.group(2))
        if km is not None and is_reserved(_decoded(km.group(1), url_keys)):
            hidden += 1
            return b""
        return m.group(0)

    def prefix(m: re.Match[bytes]) -> bytes:
        nonlocal hidden
        if is_reserved(_decoded(m.group(1), url_keys)):
            hidden += 1
            return b""
        return m.group(0)

    xml = _PREFIXES.sub(prefix, _HIDEABLE.sub(entry, xml))
    if hidden:
        xml = _KEY_COUNT.sub(lambda k: b"<KeyCount>%d</KeyCount>" % max(0, int(k.group(1)) - hidden), xml, count=1)
    return xml


_UPLOAD = re.compile(rb"<Upload>(.*?)</Upload>", re.S)
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]*)</UploadId>")
_NEXT_ID = re.compile(rb"<NextUploadIdMarker>([^<]*)</NextUploadIdMarker>")


async def client_upload_ids(ctx: Ctx, xml: bytes) -> bytes:
    """A ListMultipartUploads answer with each backend upload id replaced by the id
    CreateMultipartUpload returned (from the sidecars; uploads without one stay bare)."""
    ids = {unescape(m.group(1).decode("utf-8", "surrogateescape")) for m in _UPLOAD_ID.finditer(xml)}
    ids |= {unescape(m.group(1).decode("utf-8", "surrogateescape")) for m in _NEXT_ID.finditer(xml)}  # some
    # backends (rclone) name the next page's first upload here, not this page's last
    sem = asyncio.Semaphore(LOOKUPS)
    found: dict[str, str] = {}

    async def one(backend_id: str) -> None:
        async with sem:
            sc = await get_upload(ctx, backend_id)
        if sc is not None:
            found[backend_id] = sc.client_id

    await asyncio.gather(*(one(b) for b in ids if b))

    def mapped(tag: bytes) -> Callable[[re.Match[bytes]], bytes]:
        def sub(m: re.Match[bytes]) -> bytes:
            bid = unescape(m.group(1).decode("utf-8", "surrogateescape"))
            cid = found.get(bid, bid)
            return b"<" + tag + b">" + escape(cid).encode("utf-8", "surrogateescape") + b"</" + tag + b">"
        return sub

    def upload(m: re.Match[bytes]) -> bytes:
        return b"<Upload>" + _UPLOAD_ID.sub(mapped(b"UploadId"), m.group(1), count=1) + b"</Upload>"

    xml = _UPLOAD.sub(upload, xml)
    return _NEXT_ID.sub(mapped(b"NextUploadIdMarker"), xml, count=1)


def backend_marker(client_id: str) -> str:
    """The backend upload id inside a client-facing one (an ``upload-id-marker``)."""
    backend_id, sep, _ = client_id.rpartition(SEP)
    return backend_id if sep else client_id


# ---------------------------------------------------------------------- DeleteBucket

_VERSION_ENTRY = re.compile(rb"<(?:Version|DeleteMarker|Contents)>(.*?)</(?:Version|DeleteMarker|Contents)>", re.S)
_VERSION_ID = re.compile(rb"<VersionId>([^<]*)</VersionId>")


async def delete_bucket(ctx: Ctx) -> web.StreamResponse:
    """DeleteBucket of an encrypted bucket: when the backend answers ``BucketNotEmpty`` and the
    only keys left are the proxy's own (``.s3proxy/``: records of deleted objects), remove them
    (every version) and delete the bucket again; otherwise the backend's answer as it was."""
    resp = await ctx.backend.request("DELETE", ctx.bucket, None)
    if resp.status != 409:
        return await relay(ctx, resp)
    data = await read_at_most(resp, 1 << 16)
    resp.release()
    again = b"BucketNotEmpty" in data and await _only_reserved_keys(ctx) and await _purge_reserved(ctx)
    if not again:
        return web.Response(status=409, body=data, headers=response_headers(resp.headers, ctx.request_id))
    return await relay(ctx, await ctx.backend.request("DELETE", ctx.bucket, None))


async def _list(ctx: Ctx, query: list[tuple[str, str]]) -> bytes | None:
    try:
        resp = await ctx.state.backend.request("GET", ctx.bucket, None, query=query, credentials=ctx.state.backend.credentials)
    except aiohttp.ClientError:
        return None
    data = await read_at_most(resp, 16 << 20)
    resp.release()
    return data if resp.status == 200 else None


async def _only_reserved_keys(ctx: Ctx) -> bool:
    """Whether the bucket's top level holds nothing but the common prefix ``.s3proxy/``."""
    data = await _list(ctx, [("list-type", "2"), ("delimiter", "/"), ("max-keys", "2")])
    if data is None or b"<Contents>" in data:
        return False
    prefixes = [unescape(m.group(1).decode("utf-8", "surrogateescape")) for m in _PREFIXES.finditer(data)]
    return prefixes == [RESERVED] and b"<IsTruncated>true</IsTruncated>" not in data


async def _purge_reserved(ctx: Ctx) -> bool:
    """Delete every key (and version) under ``.s3proxy/``, a listing page at a time."""
    sem = asyncio.Semaphore(LOOKUPS)

    async def one(key: str, vid: str | None) -> None:
        async with sem:
            q = [("versionId", vid)] if vid else []
            with contextlib.suppress(aiohttp.ClientError):
                r = await ctx.state.backend.request("DELETE", ctx.bucket, key, query=q, credentials=ctx.state.backend.credentials)
                r.release()

    last: list[tuple[str, str | None]] = []
    for _ in range(100):
        data = await _list(ctx, [("versions", ""), ("prefix", RESERVED)])
        if data is None:
            data = await _list(ctx, [("list-type", "2"), ("prefix", RESERVED)])
        if data is None:
            return False
        todo: list[tuple[str, str | None]] = []
        for m in _VERSION_ENTRY.finditer(data):
            km, vm = _KEY.search(m.group(1)), _VERSION_ID.search(m.group(1))
            if km is not None:
                key = unescape(km.group(1).decode("utf-8", "surrogateescape"))
                vid = unescape(vm.group(1).decode()) if vm is not None else None
                if is_reserved(key):
                    todo.append((key, vid))
        if not todo:
            # Stores that keep directories (rclone serve s3) may keep these after their files went.
            for d in (UPLOADS, RESERVED + "manifests/", RESERVED):
                await one(d, None)
            return True
        if todo == last:  # nothing could be deleted
            return False
        last = todo
        await asyncio.gather(*(one(k, v) for k, v in todo))
    return False


# --------------------------------------------------------------- part records, versions

_CONTENTS_KEY = re.compile(rb"<Contents>.*?<Key>([^<]*)</Key>.*?</Contents>", re.S)
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


async def put_part_record(ctx: Ctx, key: str) -> bool:
    """Store one part record (an empty object whose key is the record); False if refused."""
    try:
        resp = await ctx.state.backend.request(
            "PUT", ctx.bucket, key, body=b"", headers={"content-type": "application/octet-stream"},
            credentials=ctx.state.backend.credentials,
        )
    except aiohttp.ClientError:
        return False
    resp.release()
    if resp.status != 200:
        log.warning("part_record_put_failed", bucket=ctx.bucket, status=resp.status)
    return resp.status == 200


async def list_names(ctx: Ctx, prefix: str, start_after: str | None = None, stop_after: str | None = None) -> list[str] | None:
    """The key names under ``prefix`` (without it), in key order, from ``start_after`` (a full
    key) up to keys sorting after ``stop_after``; None when the backend would not list them."""
    out: list[str] = []
    token: list[tuple[str, str]] = [("start-after", start_after)] if start_after else []
    for _ in range(100):
        data = await _list(ctx, [("list-type", "2"), ("prefix", prefix), ("max-keys", "1000"), *token])
        if data is None:
            return None
        for m in _CONTENTS_KEY.finditer(data):
            key = unescape(m.group(1).decode("utf-8", "surrogateescape"))
            if stop_after is not None and key > stop_after:
                return out
            if key.startswith(prefix):
                out.append(key[len(prefix):])
        nt = _TOKEN.search(data)
        if b"<IsTruncated>true</IsTruncated>" not in data or nt is None:
            return out
        token = [("continuation-token", unescape(nt.group(1).decode()))]
    return out


async def delete_reserved(ctx: Ctx, key: str) -> None:
    """Best effort: delete one of the proxy's keys; on a versioned bucket (the DELETE answers
    with a version id or a delete marker) every version and marker of it too."""
    try:
        resp = await ctx.state.backend.request("DELETE", ctx.bucket, key, credentials=ctx.state.backend.credentials)
        resp.release()
    except aiohttp.ClientError:
        log.warning("sidecar_delete_failed", bucket=ctx.bucket)
        return
    if versioned_delete(resp.headers):
        await purge_prefix(ctx, key, exact=True)


def versioned_delete(headers: Mapping[str, str]) -> bool:
    """Whether a DELETE's answer says the bucket keeps versions (a version id other than "null",
    or a delete marker): then older versions or the marker are still there."""
    return (headers.get("x-amz-delete-marker", "").strip().lower() == "true"
            or headers.get("x-amz-version-id", "null").strip() not in ("", "null"))


async def purge_prefix(ctx: Ctx, prefix: str, *, exact: bool = False) -> None:
    """Best effort: delete every key (every version, every delete marker) under ``prefix`` (only
    ``prefix`` itself when ``exact``), a listing page and a DeleteObjects of up to 1000 at a time."""
    if not is_reserved(prefix):
        raise ValueError("only the proxy's own keys")
    last: list[tuple[str, str | None]] = []
    for _ in range(20):
        data = await _list(ctx, [("versions", ""), ("prefix", prefix)])
        if data is None:
            data = await _list(ctx, [("list-type", "2"), ("prefix", prefix)])
        if data is None:
            return
        todo: list[tuple[str, str | None]] = []
        for m in _VERSION_ENTRY.finditer(data):
            km, vm = _KEY.search(m.group(1)), _VERSION_ID.search(m.group(1))
            if km is not None:
                key = unescape(km.group(1).decode("utf-8", "surrogateescape"))
                if key.startswith(prefix) and (not exact or key == prefix):
                    todo.append((key, unescape(vm.group(1).decode()) if vm is not None else None))
        if not todo or todo == last:
            return
        last = todo
        if await _delete_many(ctx, todo) and b"<IsTruncated>true</IsTruncated>" not in data:
            return  # all of them gone: no listing to confirm it


async def _delete_many(ctx: Ctx, entries: list[tuple[str, str | None]]) -> bool:
    """DeleteObjects (quiet) in batches of 1000; one DELETE each where the backend refuses it.
    True when every batch answered without an error."""
    sem = asyncio.Semaphore(LOOKUPS)

    async def one(key: str, vid: str | None) -> None:
        async with sem:
            with contextlib.suppress(aiohttp.ClientError):
                r = await ctx.state.backend.request("DELETE", ctx.bucket, key, query=[("versionId", vid)] if vid else [],
                                                    credentials=ctx.state.backend.credentials)
                r.release()

    clean = True
    for i in range(0, len(entries), 1000):
        batch = entries[i : i + 1000]
        objs = "".join(
            f"<Object><Key>{escape(k)}</Key>" + (f"<VersionId>{escape(v)}</VersionId>" if v else "") + "</Object>"
            for k, v in batch
        )
        body = f"<Delete><Quiet>true</Quiet>{objs}</Delete>".encode("utf-8", "surrogateescape")
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        try:
            resp = await ctx.state.backend.request(
                "POST", ctx.bucket, None, query=[("delete", "")], body=body,
                headers={"content-md5": md5, "content-type": "application/xml"}, credentials=ctx.state.backend.credentials,
            )
            data = await read_at_most(resp, 1 << 20)
            resp.release()
        except aiohttp.ClientError:
            clean = False
            continue
        if resp.status == 200 and b"<Error>" not in data:
            continue
        clean = False
        await asyncio.gather(*(one(k, v) for k, v in batch))
    return clean
