"""Object tagging on buckets that seal tags (``tags: sealed``): Get/Put/DeleteObjectTagging.

The tags are the sealed block's ``"t"`` (docs/FORMAT.md 8): GetObjectTagging opens the
object's envelope (one HEAD, one DEK lookup); PutObjectTagging and DeleteObjectTagging write
the envelope again with the new tags through a metadata-only self-copy of the current object
on the backend, pinned on both sides to the HEADed ETag (``x-amz-copy-source-if-match`` and
``If-Match``): a concurrent write fails it (the proxy re-reads and tries again, up to three
times, then ``409 OperationAborted``), a concurrent DELETE makes it ``404``.  Where the backend
is known to ignore those conditions (capability ``copy_if_match: no``) both calls answer
``501``: a racing write would end up under the old envelope, unreadable.  The body does not
move: an S object is one CopyObject (``backend.copies.self_copy``), a multipart (K) object part
by part (``copy.copy_multipart``: UploadPartCopy of each part, so its ``-N`` ETag and the
client-facing ETag stay the same).  On a versioned bucket the copy is a new current
version (its id is answered); the tags of a noncurrent version cannot be changed
(``501``), since a copy of it would become current.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from s3proxy.aws.errors import S3Error
from s3proxy.backend import copies, ops
from s3proxy.backend.ops import KEPT_HEADERS
from s3proxy.backend.profiles import copies_pinned
from s3proxy.crypto import objectinfo
from s3proxy.crypto.envelope import Envelope, SealContents, is_reserved, rebind
from s3proxy.http import sse, tagging
from s3proxy.http.auth import RequestBody
from s3proxy.http.copy import copy_error, copy_multipart
from s3proxy.http.ctx import Ctx, Handler
from s3proxy.http.objects import (
    META,
    Sealed,
    envelope_metadata,
    read_envelope,
    unencrypted,
    unseal,
    user_metadata,
    version_query,
)

ATTEMPTS = 3  # re-reads after a concurrent write (not the backend retries of ``backend.ops.ATTEMPTS``)


def handler_for(ctx: Ctx) -> Handler | None:
    """The handler of an object tagging request on a bucket that seals tags (None otherwise)."""
    r = ctx.route
    if r.key is None or not r.has("tagging") or not tagging.sealed(ctx.bucket_settings):
        return None
    return {"GET": get_object_tagging, "PUT": put_object_tagging, "DELETE": delete_object_tagging}.get(
        ctx.request.method
    )


async def _head(ctx: Ctx, vq: list[tuple[str, str]]) -> aiohttp.ClientResponse:
    resp = await ctx.backend.request("HEAD", ctx.bucket, ctx.key, query=vq)
    resp.release()
    if resp.status == 200:
        return resp
    if resp.status == 404:
        if vq:
            raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
        raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
    if resp.status == 405:
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
    if resp.status == 403:
        raise S3Error("AccessDenied", "Access Denied", 403)
    if resp.status == 400:
        raise S3Error("InvalidArgument", "Invalid version id specified", 400)
    raise S3Error("ServiceUnavailable", f"the storage backend answered {resp.status}", 503)


async def _open(ctx: Ctx, head: aiohttp.ClientResponse, op: str) -> Sealed:
    """The object's envelope, DEK and sealed contents, its binding checked (objects written
    around the proxy are refused: their tags, if any, are the backend's)."""
    env = read_envelope(head.headers)
    if env is None:
        raise unencrypted(ctx)
    sse.check_customer_key(ctx, env)
    sealed = await unseal(ctx, head.headers, ctx.bucket, ctx.key, op)
    assert sealed is not None  # env is not None
    return sealed


def _version_headers(ctx: Ctx, headers: Mapping[str, str]) -> dict[str, str]:
    out = {"x-amz-request-id": ctx.request_id}
    version = headers.get("x-amz-version-id")
    if version:
        out["x-amz-version-id"] = version
    return out


async def get_object_tagging(ctx: Ctx) -> web.StreamResponse:
    head = await _head(ctx, version_query(ctx))
    sealed = await _open(ctx, head, "GetObjectTagging")
    sealed.dek[:] = bytes(len(sealed.dek))
    tags = sealed.contents.tags if sealed.contents is not None else {}
    return web.Response(
        status=200, body=tagging.to_xml(tags), headers=_version_headers(ctx, head.headers), content_type="application/xml"
    )


async def put_object_tagging(ctx: Ctx) -> web.StreamResponse:
    body = await RequestBody(ctx.request, ctx.caller.auth).read_all(ctx.state.settings.limits.max_xml_body)
    return await _retag(ctx, tagging.from_xml(body), 200)


async def delete_object_tagging(ctx: Ctx) -> web.StreamResponse:
    return await _retag(ctx, {}, 204)


class _Changed(Exception):
    """The object changed between the HEAD and the self-copy (412 on the pinned ETag)."""


async def _check_current(ctx: Ctx, version: str) -> None:
    latest = await _head(ctx, [])
    if (latest.headers.get("x-amz-version-id") or "null") != version:  # an unversioned bucket's object is "null"
        raise S3Error(
            "NotImplemented", "s3proxy keeps this bucket's tags sealed in each object version: the tags of a "
            "noncurrent version cannot be changed (the copy that re-seals them would become the current version).", 501,
        )


def _contents(sealed: Sealed, headers: Mapping[str, str]) -> SealContents:
    """The object's sealed contents; for a v1 object (metadata in plaintext) what its copy seals."""
    if sealed.contents is not None:
        return sealed.contents
    return SealContents({k: v for k, v in user_metadata(headers).items() if not is_reserved(k)})


async def _retag(ctx: Ctx, tags: dict[str, str], status: int) -> web.StreamResponse:
    if not copies_pinned(getattr(ctx.state, "backend_capabilities", None)):
        raise S3Error("NotImplemented", "The storage behind s3proxy ignores the conditions on CopyObject that "
                      "re-sealing this bucket's tags needs (a concurrent write could be lost).", 501)
    vq = version_query(ctx)
    for _ in range(ATTEMPTS):
        head = await _head(ctx, vq)
        if vq:
            await _check_current(ctx, vq[0][1])
        sealed = await _open(ctx, head, "PutObjectTagging" if status == 200 else "DeleteObjectTagging")
        try:
            contents = _contents(sealed, head.headers)
            if sealed.contents is not None and dict(contents.tags) == tags:
                return web.Response(status=status, headers=_version_headers(ctx, head.headers))  # nothing changes
            new_env = rebind(sealed.env, sealed.dek, ctx.bucket, ctx.key, sealed=dataclasses.replace(contents, tags=tags))
        finally:
            sealed.dek[:] = bytes(len(sealed.dek))
        try:
            version = await _self_copy(ctx, head.headers, sealed.env, new_env)
        except _Changed:
            continue
        out = {"x-amz-request-id": ctx.request_id}
        if version:
            out["x-amz-version-id"] = version
        return web.Response(status=status, headers=out)
    raise S3Error("OperationAborted", "A conflicting conditional operation is currently in progress against this "
                  "resource. Please try again.", 409)


def copy_headers(head: Mapping[str, str], new_env: Envelope) -> dict[str, str]:
    """Backend headers of a metadata-only self-copy: the object's system headers (what
    ``backend.ops.KEPT_HEADERS`` says a rewrite keeps) and the new envelope."""
    lower = {k.lower(): v for k, v in head.items()}
    headers = {h.lower(): lower[h.lower()] for h in KEPT_HEADERS if h.lower() in lower}
    for k, v in envelope_metadata(new_env).items():
        headers[META + k] = v
    return headers


async def _self_copy(ctx: Ctx, head: Mapping[str, str], env: Envelope, new_env: Envelope) -> str | None:
    """Copy the object onto itself with ``new_env``; the new version id (None: unversioned).

    The copy reads the current object (never a version id: a PUT or DELETE since the HEAD
    leaves a version's ETag as it was) and is pinned on both sides to the HEADed ETag
    (``x-amz-copy-source-if-match`` and ``If-Match``, on Complete for a K object): a write
    that landed meanwhile fails it (412, the caller reads again), a DELETE makes it 404."""
    etag = head.get("ETag", "")
    headers = copy_headers(head, new_env)
    if objectinfo.copied_by_parts(env.layout, etag):
        try:
            resp = await copy_multipart(ctx, ctx.bucket, ctx.key, [], head, env, new_env, headers, None, if_match=etag)
        except S3Error as e:
            if e.code == "PreconditionFailed":
                raise _Changed from None
            raise
        return resp.headers.get("x-amz-version-id")
    try:  # tagging directive REPLACE without x-amz-tagging: the backend keeps no tags
        done = await copies.self_copy(ops.Store.bound(ctx.backend, ctx.bucket), ctx.key, etag, headers,
                                      pin_destination=True, tagging_directive="REPLACE")
    except ops.OpError as e:
        if isinstance(e, ops.ObjectChanged) and not isinstance(e, ops.ObjectGone):
            raise _Changed from None  # 412: read again; a DELETE (ObjectGone) is 404 NoSuchKey
        raise copy_error(e, "the copy that re-seals the object's tags") from None
    return done.version_id
