"""Multi-request S3 operations on a backend, shared by the proxy and its tools (``rewrap``, the
bulk jobs ``migrate`` and ``export``): retried small requests, listings, tags, part tables and
the multipart-upload primitives (the server-side copies built on them: ``backend.copies``).

Every operation takes a ``Store`` (a ``BackendClient``, a bucket, and the credentials to sign
with, passed explicitly) and returns data (keys, sizes, ETags, tables), never XML.  Failures
raise ``OpError`` (``ObjectChanged`` when a condition on the object's ETag failed, ``ObjectGone``
when it was deleted meanwhile, ``Refused`` when the backend refused a request with a 4xx), whose
message says what went wrong and never carries key material or a secret.

Backend XML is read with ``aws.xmlsafe`` (no DTDs, no entities).

Imports: ``aws``, ``backend.client`` and ``crypto`` (the part-table planner).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode
from xml.etree.ElementTree import Element

import aiohttp

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.backend.client import BackendClient, BackendCredentials, BoundBackend
from s3proxy.crypto import streams
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.k_table import table_from_sizes
from s3proxy.crypto.objectinfo import parts_from_etag

__all__ = [
    "ATTEMPTS", "BACKEND_SSE_HEADERS", "KEPT_HEADERS", "RETRY_STATUSES", "TRANSIENT_CODES", "ListedObject",
    "ObjectChanged", "ObjectGone", "OpError", "Refused", "Reply", "Store", "abort", "call", "complete_body",
    "create_upload", "describe", "error_code", "k_part_table", "list_pages", "part_sizes", "parts_from_etag",
    "quoted", "read_at_most", "refused", "reply_etag", "run_all", "tagging", "xml_root",
]

ATTEMPTS = 4
RETRY_STATUSES = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"})
PART_CONCURRENCY = 8
TAGGING_LIMIT = 64 << 10  # a tag set is at most 10 tags of 128 + 256 characters
LISTING_LIMIT = 64 << 20
ERROR_LIMIT = 64 << 10  # an S3 error document
_IDENT = re.compile(r"[A-Za-z0-9.]{1,64}")  # an S3 error code that may be passed on

# The headers of an object that writing it again (a metadata-replacing copy, a migration)
# must send again.  The backend's own encryption (BACKEND_SSE_HEADERS) is kept only by a copy
# within the same store (``rewrap``): another store has its own.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Content-Language",
    "Cache-Control",
    "Expires",
    "x-amz-website-redirect-location",
    "x-amz-storage-class",
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
)
BACKEND_SSE_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)


class OpError(Exception):
    """A backend operation failed; the message says why (never key material)."""


class ObjectChanged(OpError):
    """A condition on the object's ETag failed: it was overwritten or deleted meanwhile."""


class ObjectGone(ObjectChanged):
    """The object was deleted meanwhile (a 404 about the object, not about an upload)."""


class Refused(OpError):
    """The backend refused a request with a 4xx: its ``status``, and its S3 error ``code`` when
    it sent a plausible one (None otherwise)."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Store:
    """A bucket of a backend, and whose credentials sign the requests (``None``: the client's own)."""

    client: BackendClient
    bucket: str
    credentials: BackendCredentials | None = None

    @classmethod
    def bound(cls, backend: BoundBackend, bucket: str) -> Store:
        """A bucket as one caller of the proxy sees it (``Ctx.backend``: signed with its credentials)."""
        return cls(backend.client, bucket, backend.credentials)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int | None


# -- small parsers ------------------------------------------------------------------------------


def quoted(etag: str) -> str:
    """An ETag in the quoted form conditions expect (some backends send it bare)."""
    etag = etag.strip()
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def xml_root(body: bytes, name: str | None = None) -> Element | None:
    """The root of a backend's XML answer (``name``: it must be that element), None if it is not one."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = xmlsafe.parse(body)
    except S3Error:
        return None
    if name is not None and root.tag.rsplit("}", 1)[-1] != name:
        return None
    return root


def error_code(body: bytes) -> tuple[str, str] | None:
    """(Code, Message) of an S3 error document, or None."""
    root = xml_root(body, "Error")
    if root is None:
        return None
    return xmlsafe.child_text(root, "Code") or "", (xmlsafe.child_text(root, "Message") or "")[:200]


def describe(status: int, body: bytes) -> str:
    err = error_code(body)
    return f"{err[0]} (HTTP {status})" if err else f"HTTP {status}"


def reply_etag(reply: Reply) -> str | None:
    """The ETag of a copy or Complete answer (its XML body), else of the response headers."""
    root = xml_root(reply.body) if reply.body else None
    return (xmlsafe.child_text(root, "ETag") if root is not None else None) or reply.headers.get("ETag")


# -- requests -------------------------------------------------------------------------------------


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of a response body (the rest is never read)."""
    buf = bytearray()
    while len(buf) < limit and (chunk := await resp.content.read(limit - len(buf))):
        buf += chunk
    return bytes(buf)


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.random() * min(2.0, 0.1 * (2**attempt)))


async def call(
    store: Store, method: str, key: str | None, *, query: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None, body: bytes | None = None, read_limit: int = 1 << 20,
    retry: bool = True, error_in_200: bool = False,
) -> Reply:
    """One small request, retried on 5xx and connection errors; its body read up to ``read_limit``
    (more is an ``OpError``: a body is never streamed through here).  ``error_in_200``: a 200
    carrying an S3 error document (CopyObject, UploadPartCopy, Complete) counts as a 500, or a
    503 when the code is transient."""
    attempts = ATTEMPTS if retry else 1
    for attempt in range(attempts):
        last = attempt + 1 >= attempts
        try:
            resp = await store.client.request(method, store.bucket, key, query=list(query),
                                              headers=dict(headers or {}), body=body,
                                              credentials=store.credentials)
            try:
                # an error document may be longer than the answer asked for (a 412 to a 70-byte range)
                data = b"" if method == "HEAD" else await read_at_most(resp, max(read_limit, ERROR_LIMIT) + 1)
            finally:
                resp.release()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if last:
                raise OpError(f"backend unreachable: {type(exc).__name__}") from None
            await _backoff(attempt)
            continue
        status = resp.status
        if len(data) > (read_limit if status < 300 else ERROR_LIMIT):
            raise OpError(f"unexpectedly large backend response (> {read_limit} bytes)")
        if status == 200 and error_in_200 and (err := error_code(data)) is not None:
            status = 503 if err[0] in TRANSIENT_CODES else 500
        if status in RETRY_STATUSES and not last:
            await _backoff(attempt)
            continue
        return Reply(status, resp.headers, data)
    raise AssertionError("unreachable")  # pragma: no cover


async def run_all(coros: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines concurrently; on the first exception cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and (exc := t.exception()) is not None:
                raise exc
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- listing ----------------------------------------------------------------------------------------


async def list_pages(
    store: Store, prefix: str, start_after: str | None, page_size: int = 1000
) -> AsyncIterator[list[ListedObject]]:
    """ListObjectsV2 of ``store`` under ``prefix``, page by page (keys decoded; empty pages skipped).
    ``OpError`` when a page fails or the backend answers something that is not a listing."""
    token: str | None = None
    while True:
        q = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", str(page_size))]
        if prefix:
            q.append(("prefix", prefix))
        if token:
            q.append(("continuation-token", token))
        elif start_after:
            q.append(("start-after", start_after))
        r = await call(store, "GET", None, query=q, read_limit=LISTING_LIMIT)
        root = xml_root(r.body, "ListBucketResult") if r.status == 200 else None
        if root is None:
            raise OpError(f"ListObjectsV2 failed: {describe(r.status, r.body)}")
        url_encoded = (xmlsafe.child_text(root, "EncodingType") or "").lower() == "url"
        items: list[ListedObject] = []
        for el in xmlsafe.children(root, "Contents"):
            raw = xmlsafe.child_text(el, "Key") or ""
            size = xmlsafe.child_text(el, "Size")
            items.append(ListedObject(unquote_plus(raw) if url_encoded else raw,
                                      int(size) if size and size.isdigit() else None))
        token = xmlsafe.child_text(root, "NextContinuationToken")
        if items:
            yield items
        if (xmlsafe.child_text(root, "IsTruncated") or "false").lower() != "true":
            return
        if not token:
            raise OpError("ListObjectsV2 was truncated without a continuation token")


# -- one object's facts -------------------------------------------------------------------------------


async def tagging(store: Store, key: str) -> tuple[str | None, str | None]:
    """(the object's tags as an ``x-amz-tagging`` value or None, a note about the store or None).

    None without a note: no tags, or a store without tagging (404, 405, 501, NotImplemented).
    A store that ignores ``?tagging`` and answers the object (rclone) gives a note."""
    resp = await store.client.request("GET", store.bucket, key, query=[("tagging", "")],
                                      credentials=store.credentials)
    try:
        body = await read_at_most(resp, TAGGING_LIMIT + 1)
    finally:
        resp.close()
    if resp.status in (404, 405, 501) or (resp.status == 400 and (error_code(body) or ("",))[0] == "NotImplemented"):
        return None, None
    root = xml_root(body, "Tagging") if resp.status == 200 and len(body) <= TAGGING_LIMIT else None
    if root is None:
        if resp.status == 200:
            return None, "the store answers no tagging documents: tags not carried"
        raise OpError(f"cannot read the object's tags: {describe(resp.status, body)}")
    pairs = [(xmlsafe.child_text(el, "Key") or "", xmlsafe.child_text(el, "Value") or "")
             for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Tag"]
    return (urlencode(pairs, quote_via=quote) if pairs else None), None


async def part_sizes(store: Store, key: str, total: int, n: int) -> list[int] | None:
    """The stored sizes of the ``n`` parts of a multipart object (``HEAD ?partNumber=i``), or None
    when the store will not say or its answers do not add up to ``total``."""
    sem = asyncio.Semaphore(PART_CONCURRENCY)

    async def one(i: int) -> int | None:
        async with sem:
            try:
                r = await call(store, "HEAD", key, query=[("partNumber", str(i))], retry=False)
            except OpError:
                return None
        count = r.headers.get("x-amz-mp-parts-count")
        cl = r.headers.get("Content-Length", "")
        if r.status not in (200, 206) or (count is not None and count != str(n)) or not cl.isdigit():
            return None
        return int(cl)

    got = await asyncio.gather(*(one(i) for i in range(1, n + 1)))
    sizes = [g for g in got if g is not None]
    return sizes if len(sizes) == n and sum(sizes) == total else None


async def _range(store: Store, key: str, etag: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the object, only while it is ``etag``."""
    r = await call(store, "GET", key, headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag},
                   read_limit=end - start)
    if r.status == 412:
        raise ObjectChanged("the object changed meanwhile (ETag differs)")
    # 206, or a 200 carrying the asked-for Content-Range (rclone); a whole body is never read.
    ranged = r.status == 206 or (
        r.status == 200 and r.headers.get("Content-Range", "").startswith(f"bytes {start}-{end - 1}/")
    )
    if not ranged or len(r.body) != end - start:
        raise OpError(f"cannot read part header at offset {start}: HTTP {r.status}")
    return r.body


async def k_part_table(store: Store, key: str, etag: str, total: int, n: int | None) -> list[tuple[int, int]]:
    """[(offset, stored length)] of each part of a K-layout object, no body bytes read: the
    sizes ``HEAD ?partNumber`` gives when they fit the layout, else the 70-byte part headers
    (``crypto.streams.k_part_table``, read with ``If-Match: etag``)."""
    sizes = await part_sizes(store, key, total, n) if n is not None else None
    table = table_from_sizes(sizes, total)
    if table is not None:
        return table
    sem = asyncio.Semaphore(PART_CONCURRENCY)

    async def fetch(start: int, end: int) -> bytes:
        async with sem:
            return await _range(store, key, etag, start, end)

    try:
        return await streams.k_part_table(fetch, total, n)
    except FormatError as exc:
        raise OpError(f"the part headers do not make a part table ({type(exc).__name__})") from None


# -- multipart uploads ----------------------------------------------------------------------------


def refused(what: str, reply: Reply) -> OpError:
    """The error of a failed request: ``Refused`` for a 4xx (with its S3 error code when it has a
    plausible one), else ``OpError``."""
    message = f"{what} failed: {describe(reply.status, reply.body)}"
    if 400 <= reply.status < 500:
        code = (error_code(reply.body) or ("",))[0]
        return Refused(message, reply.status, code if _IDENT.fullmatch(code) else None)
    return OpError(message)


def complete_body(etags: Sequence[str]) -> bytes:
    """A CompleteMultipartUpload body for parts 1..len(etags)."""
    parts = [xmlsafe.CompletePart(i, e) for i, e in enumerate(etags, start=1)]
    return xmlsafe.complete_xml(parts, include_checksums=False)


async def abort(store: Store, key: str, upload_id: str) -> None:
    """AbortMultipartUpload, best effort."""
    with contextlib.suppress(Exception):
        await call(store, "DELETE", key, query=[("uploadId", upload_id)], retry=False)


async def create_upload(store: Store, key: str, headers: Mapping[str, str]) -> str:
    """CreateMultipartUpload; its upload id (``Refused`` when the backend refuses it with a 4xx)."""
    r = await call(store, "POST", key, query=[("uploads", "")], headers=headers)
    root = xml_root(r.body) if r.status == 200 else None
    upload_id = xmlsafe.child_text(root, "UploadId") if root is not None else None
    if not upload_id:
        raise refused("CreateMultipartUpload", r)
    return upload_id
