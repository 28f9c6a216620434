"""Server-side copies on a backend, shared by the proxy (CopyObject of a multipart object,
re-sealing tags, a late checksum) and its tools (``rewrap``): metadata-only self-copies
(``self_copy``) and multipart copies part by part (``copy_parts``; ``multipart_copy`` for a
rewrite of an object onto itself), on the multipart-upload primitives of ``backend.ops``.

Every copy is pinned to the source's ETag (``x-amz-copy-source-if-match``), and a self-copy
optionally to the destination's (``If-Match``); a failed condition is ``ObjectChanged``, a
deleted object ``ObjectGone``, a backend without a working UploadPartCopy ``CopyUnsupported``
(raised after part 1, before any other part).  A multipart copy is aborted on every failure:
no upload is left behind.

Imports: ``aws``, ``backend.client`` and ``backend.ops``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from s3proxy.aws import xmlsafe
from s3proxy.backend.client import BackendClient
from s3proxy.backend.ops import (
    PART_CONCURRENCY,
    ObjectChanged,
    ObjectGone,
    OpError,
    Reply,
    Store,
    abort,
    call,
    complete_body,
    create_upload,
    describe,
    error_code,
    refused,
    run_all,
    xml_root,
)

__all__ = [
    "Copied", "CopyUnsupported", "Source", "complete", "copy_parts", "fill_upload", "multipart_copy", "self_copy",
]


class CopyUnsupported(OpError):
    """The backend has no working UploadPartCopy (part 1 answered a 4xx or 501, or a 200 without
    an ETag, as rclone does); the upload was aborted, nothing was written."""


@dataclass(frozen=True)
class Source:
    """What a server-side copy reads: an object of the store's backend (any bucket), pinned to
    its ETag (``x-amz-copy-source-if-match``); ``version_id``: that version."""

    bucket: str
    key: str
    etag: str
    version_id: str | None = None

    def header(self) -> str:
        return BackendClient.copy_source(self.bucket, self.key, self.version_id)


@dataclass(frozen=True)
class Copied:
    """What a copy wrote: its ETag, and its version id on a versioned bucket."""

    etag: str
    version_id: str | None = None


def _code(reply: Reply) -> str:
    return (error_code(reply.body) or ("",))[0]


def _xml_etag(reply: Reply) -> str | None:
    root = xml_root(reply.body) if reply.status == 200 else None
    return xmlsafe.child_text(root, "ETag") if root is not None else None


def _gone(reply: Reply) -> bool:
    """A 404 that is not about the upload: the object (or the source) was deleted meanwhile."""
    return reply.status == 404 and _code(reply) != "NoSuchUpload"


async def self_copy(
    store: Store, key: str, etag: str, headers: Mapping[str, str], *, pin_destination: bool = False,
    tagging_directive: str | None = None,
) -> Copied:
    """Replace an object's metadata by a server-side copy of the current object onto itself
    (``headers``: everything the copy writes), only if it is still ``etag``
    (``x-amz-copy-source-if-match``; ``pin_destination``: ``If-Match`` too, so that a write
    landing between the copy's read and its write fails it).  ``tagging_directive``: sent as
    ``x-amz-tagging-directive`` (the backend's default, COPY, when None).
    ``ObjectChanged`` on 412, ``ObjectGone`` on 404, ``Refused`` on another 4xx."""
    h = {**headers, "x-amz-copy-source": BackendClient.copy_source(store.bucket, key),
         "x-amz-copy-source-if-match": etag, "x-amz-metadata-directive": "REPLACE"}
    if pin_destination:
        h["If-Match"] = etag
    if tagging_directive is not None:
        h["x-amz-tagging-directive"] = tagging_directive
    r = await call(store, "PUT", key, headers=h, error_in_200=True)
    if r.status == 412:
        raise ObjectChanged("the object changed meanwhile (ETag differs)")
    if r.status == 404:
        raise ObjectGone("the object was deleted meanwhile")
    if r.status != 200:
        raise refused("server-side copy", r)
    return Copied(_xml_etag(r) or etag, r.headers.get("x-amz-version-id"))


async def complete(store: Store, key: str, upload_id: str, etags: Sequence[str], if_match: str | None) -> Copied:
    """CompleteMultipartUpload of parts 1..n (``If-Match: if_match``: 412 -> ``ObjectChanged``,
    a 404 about the object -> ``ObjectGone``).  Never retried: a retry after a Complete that
    succeeded would fail with NoSuchUpload."""
    r = await call(store, "POST", key, query=[("uploadId", upload_id)], headers={"If-Match": if_match} if if_match else None,
                   body=complete_body(etags), error_in_200=True, retry=False)
    if if_match and (r.status == 412 or _code(r) == "PreconditionFailed"):
        raise ObjectChanged("the object changed meanwhile (ETag differs)")
    if if_match and _gone(r):
        raise ObjectGone("the object was deleted meanwhile")
    new_etag = _xml_etag(r)
    if new_etag is None:  # a 4xx (InvalidPart, EntityTooSmall...) is the backend's answer, not retryable
        raise refused("CompleteMultipartUpload", r)
    return Copied(new_etag, r.headers.get("x-amz-version-id"))


async def fill_upload(
    store: Store, key: str, headers: Mapping[str, str], fill: Callable[[str], Awaitable[Sequence[str]]],
    *, if_match: str | None = None,
) -> Copied:
    """A multipart upload of ``key``: CreateMultipartUpload with ``headers``, ``fill(upload_id)``
    (which uploads parts 1..n and returns their ETags), Complete (``If-Match: if_match``);
    aborted on any failure, cancellation included."""
    upload_id = await create_upload(store, key, headers)
    try:
        return await complete(store, key, upload_id, await fill(upload_id), if_match)
    except BaseException:
        await asyncio.shield(abort(store, key, upload_id))
        raise


async def _source_state(store: Store, source: Source) -> int:
    """The status of a HEAD of the copy's source, pinned to its ETag (200: still there, unchanged)."""
    r = await call(dataclasses.replace(store, bucket=source.bucket), "HEAD", source.key,
                   query=[("versionId", source.version_id)] if source.version_id else (),
                   headers={"If-Match": source.etag})
    return r.status


async def _copy_part(store: Store, key: str, upload_id: str, i: int, source: Source, span: tuple[int, int]) -> str:
    off, length = span
    r = await call(
        store, "PUT", key, query=[("partNumber", str(i)), ("uploadId", upload_id)],
        headers={"x-amz-copy-source": source.header(), "x-amz-copy-source-range": f"bytes={off}-{off + length - 1}",
                 "x-amz-copy-source-if-match": source.etag},
        error_in_200=True,
    )
    if r.status == 412:
        raise ObjectChanged("the object changed meanwhile (ETag differs)")
    if _gone(r) and i == 1 and not _code(r):
        # A bare 404 (no S3 error document): a backend that does not route UploadPartCopy, or a
        # deleted source (moto answers one so): a HEAD of the pinned source tells which.
        state = await _source_state(store, source)
        if state == 200:
            raise CopyUnsupported("the backend has no working UploadPartCopy: HTTP 404 with the source present")
        if state == 412:
            raise ObjectChanged("the object changed meanwhile (ETag differs)")
    if _gone(r):
        raise ObjectGone("the object was deleted meanwhile")
    part_etag = _xml_etag(r)
    if part_etag is not None:
        return part_etag
    if i == 1 and (r.status in (200, 501) or 400 <= r.status < 500):  # 200: stored an empty part (rclone)
        raise CopyUnsupported(f"the backend has no working UploadPartCopy: {describe(r.status, r.body)}")
    raise refused(f"server-side copy of part {i}", r)  # a 4xx keeps its code (AccessDenied...), else OpError


async def copy_parts(
    store: Store, key: str, source: Source, table: Sequence[tuple[int, int]], headers: Mapping[str, str],
    *, if_match: str | None = None,
) -> Copied:
    """A server-side multipart copy of ``source`` to ``key`` of ``store``, part by part:
    CreateMultipartUpload with ``headers``, one UploadPartCopy per (offset, length) of ``table``
    (the same part boundaries), Complete with ``If-Match: if_match`` (a self-copy); aborted on
    any failure.  Part 1 is copied first: ``CopyUnsupported`` when the backend has no working
    UploadPartCopy (then nothing is left behind, the caller may copy another way).
    ``ObjectChanged`` when the source or the destination changed, ``ObjectGone`` when it was deleted."""
    if not table:
        raise OpError("a multipart copy needs at least one part")
    sem = asyncio.Semaphore(PART_CONCURRENCY)

    async def fill(upload_id: str) -> list[str]:
        etags = [await _copy_part(store, key, upload_id, 1, source, table[0])] + [""] * (len(table) - 1)

        async def one(i: int) -> None:
            async with sem:
                etags[i - 1] = await _copy_part(store, key, upload_id, i, source, table[i - 1])

        await run_all([one(i) for i in range(2, len(table) + 1)])
        return etags

    return await fill_upload(store, key, headers, fill, if_match=if_match)


async def multipart_copy(
    store: Store, key: str, etag: str, table: Sequence[tuple[int, int]], headers: Mapping[str, str]
) -> Copied:
    """Rewrite a multipart object onto itself with new metadata (``copy_parts`` of the object
    pinned to ``etag`` on both sides: the same parts, the same bytes)."""
    return await copy_parts(store, key, Source(store.bucket, key, etag), table, headers, if_match=etag)
