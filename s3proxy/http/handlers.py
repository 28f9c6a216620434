"""Request dispatch: authenticate, route, authorise, call the operation.

Operations that touch object bodies or sizes in an encrypted bucket go to
``s3proxy.http.objects`` (PUT) / ``reads`` (GET, HEAD) / ``copy`` / ``attributes`` /
``multipart`` / ``listing``; everything else is
re-signed and passed through unchanged (``passthrough``).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.http import attributes, copy, listing, multipart, objects, reads, tagging_ops
from s3proxy.http.auth import Caller, RequestBody, authenticate
from s3proxy.http.authz import authorise, check_delete_objects, list_buckets
from s3proxy.http.ctx import (
    DROP_REQUEST as DROP_REQUEST,
)
from s3proxy.http.ctx import (
    HOP_BY_HOP as HOP_BY_HOP,
)
from s3proxy.http.ctx import (
    PLAINTEXT_INTEGRITY as PLAINTEXT_INTEGRITY,
)
from s3proxy.http.ctx import (
    READ_BUFSIZE as READ_BUFSIZE,
)
from s3proxy.http.ctx import (
    RESERVED_META as RESERVED_META,
)
from s3proxy.http.ctx import (
    SSE_HEADERS as SSE_HEADERS,
)
from s3proxy.http.ctx import (  # re-exported
    Ctx as Ctx,
)
from s3proxy.http.ctx import (
    Handler as Handler,
)
from s3proxy.http.ctx import (
    SendWatchdog as SendWatchdog,
)
from s3proxy.http.ctx import (
    _capability_needed as _capability_needed,
)
from s3proxy.http.ctx import (
    _Capture as _Capture,
)
from s3proxy.http.ctx import (
    _known_missing as _known_missing,
)
from s3proxy.http.ctx import (
    _rewritten_body_headers as _rewritten_body_headers,
)
from s3proxy.http.ctx import (
    backend_error as backend_error,
)
from s3proxy.http.ctx import (
    forward_headers as forward_headers,
)
from s3proxy.http.ctx import (
    log as log,
)
from s3proxy.http.ctx import (
    read_at_most as read_at_most,
)
from s3proxy.http.ctx import (
    reject_reserved_metadata as reject_reserved_metadata,
)
from s3proxy.http.ctx import (
    relay as relay,
)
from s3proxy.http.ctx import (
    response_headers as response_headers,
)
from s3proxy.http.ctx import (
    send_streamed as send_streamed,
)
from s3proxy.http.router import bad_number, is_browser_form, route, unsupported_reason
from s3proxy.state import CALLER, OP, STATE


async def dispatch(request: web.Request) -> web.StreamResponse:

    state = request.app[STATE]
    raw_path, _, raw_query = request.raw_path.partition("?")
    r = route(request.method, request.host, raw_path, raw_query, request.headers, state.settings.base_domain)
    request[OP] = r.op
    if request.method == "OPTIONS" and r.bucket is not None:
        # CORS preflight: browsers send it unsigned; answered from the bucket's CORS
        # configuration, never forwarded (s3proxy.http.cors).
        from s3proxy.http import cors

        request[OP] = "CORSPreflight"
        return await cors.preflight(request, state, r.bucket)
    if is_browser_form(r, raw_query, request.headers):
        # Authenticated and authorised by the form's signed policy (s3proxy.http.postobject).
        from s3proxy.http import postobject

        return await postobject.post_object(Ctx(request, r, Caller(None, None), state))
    if not state.backend.names_registered:  # normally done at start-up (app.build_app)
        from s3proxy.backend import names_keys

        names_keys.register(state.backend, state.settings, state.keys)
    caller = request.get(CALLER) or authenticate(request, state.settings)
    ctx = Ctx(request, r, caller, state)
    authorise(ctx)
    return await _dispatch_op(ctx)


async def _dispatch_op(ctx: Ctx) -> web.StreamResponse:
    r, request = ctx.route, ctx.request
    if r.bucket is not None and r.key is not None:
        reject_reserved_metadata(request.headers)
    if r.op == "ListBuckets":
        return await list_buckets(ctx)
    bad = bad_number(r)
    if bad is not None:
        raise S3Error("InvalidArgument", f"{bad} must be a non-negative integer of ASCII digits.", 400)
    sealed_tagging = tagging_ops.handler_for(ctx)  # ?tagging on a bucket with tags: sealed
    if sealed_tagging is None:  # sealed tags never reach the backend's tagging API
        _check_capability(ctx)
    if not ctx.encrypted:
        return await passthrough(ctx)
    reason = unsupported_reason(r, request.method)
    if reason is not None:
        raise S3Error("NotImplemented", f"s3proxy does not serve {reason} on encrypted buckets.", 501)
    if r.op == "BucketConfig" and request.method == "DELETE" and not r.query:
        from s3proxy.http import sidecars

        return await sidecars.delete_bucket(ctx)  # the bucket's own manifests go with it
    if sealed_tagging is not None:
        return await sealed_tagging(ctx)
    handler = _TABLE.get(r.op, passthrough)
    if ctx.state.backend.names is not None:
        from s3proxy.http import names_ops

        if names_ops.active(ctx):  # encrypted object names: keys in XML documents (docs/NAMES.md)
            return await names_ops.dispatch(ctx, handler)
    return await handler(ctx)


async def _unsupported(ctx: Ctx) -> web.StreamResponse:
    raise S3Error("NotImplemented", f"{ctx.route.op} is not supported on encrypted buckets", 501)


# The handlers of operations on encrypted buckets (built once: issue 11, it was per request).
_TABLE: dict[str, Handler] = {
    "PutObject": objects.put_object,
    "GetObject": reads.get_object,
    "HeadObject": reads.head_object,
    "CopyObject": copy.copy_object,
    "GetObjectAttributes": attributes.get_object_attributes,
    "CreateMultipartUpload": multipart.create,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": copy.upload_part_copy,
    "CompleteMultipartUpload": multipart.complete,
    "AbortMultipartUpload": multipart.abort,
    "ListParts": multipart.list_parts,
    "ListMultipartUploads": multipart.list_uploads,
    "ListObjects": listing.list_objects,
    "ListObjectsV2": listing.list_objects,
    "ListObjectVersions": listing.list_objects,
    "SelectObjectContent": _unsupported,
    "PostObject": _unsupported,
}


def _check_capability(ctx: Ctx) -> None:
    """501 up front for an operation the backend is known not to implement: such a backend answers
    something else (rclone serve s3 returns the object for ?attributes and stores a ?tagging PUT's
    document as the object's body).  UploadPartCopy is tried: copies fall back to re-encryption."""
    capability = _capability_needed(ctx)
    if capability != "upload_part_copy" and _known_missing(ctx, capability):
        raise S3Error("NotImplemented", f"The storage behind s3proxy does not implement {ctx.route.op} "
                      f"({capability}).", 501)


async def passthrough(ctx: Ctx) -> web.StreamResponse:
    """Re-sign and forward; the body is unchanged (aws-chunked framing removed)."""
    request, r = ctx.request, ctx.route
    body = RequestBody(request, ctx.caller.auth)
    headers = forward_headers(request.headers, body_changed=False)
    backend = ctx.backend
    query = list(r.query)
    big = r.op in ("PutObject", "UploadPart")
    if big:
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        resp = await send_streamed(
            ctx, request.method, r.bucket or "", r.key or "", query=query, headers=headers,
            body=body.chunks(), content_length=body.length,
        )
    else:
        data = await body.read_all(ctx.state.settings.limits.max_xml_body) if body.length != 0 else None
        if r.op == "BucketConfig" and request.method == "POST" and r.has("delete"):
            # the keys are authorised one by one from the parsed document
            data = xmlsafe.delete_xml(check_delete_objects(ctx, data or b""))
            headers = _rewritten_body_headers(headers, data)
        elif data and r.op != "PostObject" and not r.has("policy"):
            # Every other XML body (ACL, tagging, bucket configuration, CreateBucket): parsed with
            # DTDs and entities refused in any encoding, and re-written, so the backend only ever
            # parses XML s3proxy wrote.  (A bucket policy is JSON and goes as it is.)
            data = xmlsafe.generic(data)
            headers = _rewritten_body_headers(headers, data)
        try:
            resp = await backend.request(request.method, r.bucket, r.key, query=query, headers=headers, body=data or None)
        except aiohttp.ClientError as e:
            ctx.state.metrics.backend_errors.labels("connect").inc()
            raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
    if r.key is None and r.has("cors") and request.method in ("PUT", "DELETE") and r.bucket is not None:
        from s3proxy.http import cors

        cors.invalidate(ctx.state, r.bucket)  # preflights see the new rules at once
    return await relay(ctx, resp)
