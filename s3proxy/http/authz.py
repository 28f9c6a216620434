"""Authorisation: which grant every operation needs, and the checks.

``operation`` names a request finely (PutObjectAcl, not just "ObjectConfig"),
``ACTIONS`` maps each name to the grant action it needs (read, write, list,
delete, admin) and ``required_actions`` adds what the request's headers ask
for (ACL grants, object-lock settings, governance bypass: admin).
``authorise`` runs before any backend request; docs/GRANTS.md is the same
table in prose and ``tests/adversarial/test_grants.py`` walks it.

Two operations are checked further by their handlers:

* DeleteObjects names its keys in the body: ``authorise`` only checks that the
  caller may delete *somewhere* in the bucket, and the handler must call
  ``check_delete_objects`` on the body before anything reaches the backend.
* ListBuckets (``list_buckets``) answers only the buckets the caller has a
  grant on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error, access_denied
from s3proxy.config import Identity
from s3proxy.http.router import OBJECT_SUBRESOURCES, Route, is_reserved_key

if TYPE_CHECKING:
    from s3proxy.http.ctx import Ctx

# Operation name -> the grant action it needs.  Names not listed need "admin".
ACTIONS: dict[str, str] = {
    # objects: reading
    "GetObject": "read", "HeadObject": "read", "GetObjectAttributes": "read", "SelectObjectContent": "read",
    "GetObjectTagging": "read", "GetObjectAcl": "read", "GetObjectRetention": "read",
    "GetObjectLegalHold": "read", "GetObjectTorrent": "read",
    # objects: writing (a copy also needs read on its source)
    "PutObject": "write", "CopyObject": "write", "CreateMultipartUpload": "write", "UploadPart": "write",
    "UploadPartCopy": "write", "CompleteMultipartUpload": "write",
    "PutObjectTagging": "write", "DeleteObjectTagging": "write", "RestoreObject": "write",
    # objects: deleting
    "DeleteObject": "delete", "DeleteObjects": "delete", "AbortMultipartUpload": "delete",
    # listing
    "ListBuckets": "list", "HeadBucket": "list", "GetBucketLocation": "list",
    "ListObjects": "list", "ListObjectsV2": "list", "ListObjectVersions": "list",
    "ListMultipartUploads": "list", "ListParts": "list",
    # permissions, object lock and everything about buckets
    "PutObjectAcl": "admin", "PutObjectRetention": "admin", "PutObjectLegalHold": "admin",
    "PostObject": "admin",  # a header-signed form POST only; policy-signed browser forms are authorised as PutObject by s3proxy.http.postobject
    "CreateBucket": "admin", "DeleteBucket": "admin",
}

# Operations an anonymous caller may perform on a ``public_read`` bucket.
ANONYMOUS_PUBLIC = frozenset({"GetObject", "HeadObject", "GetObjectAttributes"})

# Canned ACLs that grant nobody anything beyond the (single) backend account.
HARMLESS_CANNED_ACLS = frozenset({"private", "bucket-owner-read", "bucket-owner-full-control"})

_OBJECT_SUB_NAMES = {
    "acl": "Acl", "tagging": "Tagging", "retention": "Retention", "legal-hold": "LegalHold", "torrent": "Torrent",
}
_BUCKET_SUB_NAMES = {
    "acl": "Acl", "policy": "Policy", "cors": "Cors", "lifecycle": "LifecycleConfiguration",
    "versioning": "Versioning", "tagging": "Tagging", "location": "Location", "logging": "Logging",
    "website": "Website", "notification": "NotificationConfiguration", "replication": "Replication",
    "encryption": "Encryption", "object-lock": "ObjectLockConfiguration", "accelerate": "AccelerateConfiguration",
    "requestPayment": "RequestPayment", "ownershipControls": "OwnershipControls",
    "publicAccessBlock": "PublicAccessBlock", "policyStatus": "PolicyStatus", "analytics": "AnalyticsConfiguration",
    "metrics": "MetricsConfiguration", "inventory": "InventoryConfiguration",
    "intelligent-tiering": "IntelligentTieringConfiguration",
}
_VERB = {"GET": "Get", "HEAD": "Get", "PUT": "Put", "DELETE": "Delete", "POST": "Post"}
# The sub-resource (if any) each object operation legitimately carries.
_OWN_SUBRESOURCES = {
    "GetObjectAttributes": {"attributes"}, "SelectObjectContent": {"select", "select-type"},
    "GetObjectTorrent": {"torrent"}, "RestoreObject": {"restore"},
    "ListObjectVersions": {"versions"}, "ListMultipartUploads": {"uploads"},
}
_BUCKET_CONFIG_NAMES = frozenset(_BUCKET_SUB_NAMES) | {"uploads", "versions", "delete"}
AMBIGUOUS = "Ambiguous"  # several sub-resources at once: the backend might act on any of them -> admin


def operation(r: Route, method: str) -> str:
    """The S3 operation a routed request performs, named as in the S3 API."""
    if not r.query and r.bucket is not None:  # the usual GET/PUT/HEAD: what the general case gives
        if r.key is not None:
            return AMBIGUOUS if r.op == "ObjectConfig" else r.op
        if r.op != "BucketConfig":
            return r.op
    names = {k for k, _ in r.query} - {"x-id"}  # x-id: the SDKs' operation hint, ignored by S3
    if r.bucket is None:
        return "ListBuckets" if r.op == "ListBuckets" else r.op
    if r.key is None:
        if r.op != "BucketConfig":
            if names & _BUCKET_CONFIG_NAMES - _OWN_SUBRESOURCES.get(r.op, set()):
                return AMBIGUOUS  # e.g. ?list-type=2&acl: a listing for us, GetBucketAcl for the backend
            return r.op
        return _bucket_operation(method, names)
    subs = names & OBJECT_SUBRESOURCES
    if r.op == "ObjectConfig":
        if len(subs) != 1:
            return AMBIGUOUS
        (sub,) = subs
        if sub == "restore" and method == "POST":
            return "RestoreObject"
        if sub in _OBJECT_SUB_NAMES and method in ("GET", "PUT") or (sub == "tagging" and method == "DELETE"):
            return f"{_VERB[method]}Object{_OBJECT_SUB_NAMES[sub]}"
        return AMBIGUOUS
    if r.op == "DeleteObject" and subs:
        return "DeleteObjectTagging" if subs == {"tagging"} else AMBIGUOUS
    if subs - _OWN_SUBRESOURCES.get(r.op, set()):
        return AMBIGUOUS  # e.g. ListParts?acl or PutObject?...&acl: refuse to guess
    return r.op


def _bucket_operation(method: str, names: set[str]) -> str:
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        return "DeleteObjects" if names == {"delete"} else AMBIGUOUS
    config = names & set(_BUCKET_SUB_NAMES)
    if not config:
        if names:
            return AMBIGUOUS
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, AMBIGUOUS)
    if len(config) != 1 or method not in ("GET", "PUT", "DELETE"):
        return AMBIGUOUS
    (sub,) = config
    return f"{_VERB[method]}Bucket{_BUCKET_SUB_NAMES[sub]}"


def action_for(r: Route, method: str) -> str:
    """The grant action the operation itself needs (headers aside)."""
    return ACTIONS.get(operation(r, method), "admin")


# Header names that may call for ``admin`` (``header_actions`` then looks closer), one per line.
# Case-insensitive in Unicode mode: it matches every name whose ``lower()`` is one of these (and
# a few more, such as U+017F for "s", which only cost the closer look).
_ADMIN_NAMES = re.compile(r"^x-amz-(?:acl$|grant-|object-lock-|bypass-governance-retention$)", re.I | re.M)


def header_actions(headers: Mapping[str, str]) -> set[str]:
    """Further actions the request's headers call for, whatever the operation.

    Granting access (x-amz-acl other than a harmless canned ACL, x-amz-grant-*),
    object lock (x-amz-object-lock-*) and bypassing governance retention all
    need ``admin``."""
    if _ADMIN_NAMES.search("\n".join(headers)) is None:  # the usual request: one scan in C
        return set()
    for name, value in headers.items():
        n = name.lower()
        if n == "x-amz-acl" and value.strip().lower() not in HARMLESS_CANNED_ACLS:
            return {"admin"}
        if n.startswith(("x-amz-grant-", "x-amz-object-lock-")) or n == "x-amz-bypass-governance-retention":
            return {"admin"}
    return set()


def required_actions(r: Route, method: str, headers: Mapping[str, str]) -> set[str]:
    """Every action the request needs on its bucket/key (a copy's source is checked apart)."""
    extra = {"admin"} if r.has("bypassGovernanceRetention") else set()
    return {action_for(r, method)} | header_actions(headers) | extra


def allowed(identity: Identity, action: str, bucket: str | None, key: str | None, prefix_param: str | None) -> bool:
    """May ``identity`` do ``action`` on the key (or, key None, on the bucket's listing with ``prefix_param``)?"""
    for g in identity.allow:
        if action not in g.actions:
            continue
        if bucket is None:
            if g.bucket == "*" and not g.prefix:
                return True
            continue
        if g.bucket not in ("*", bucket):
            continue
        if not g.prefix:
            return True
        if key is not None and key.startswith(g.prefix):
            return True
        if key is None and action == "list" and (prefix_param or "").startswith(g.prefix):
            return True
    return False


def allowed_somewhere(identity: Identity, action: str, bucket: str | None) -> bool:
    """Has ``identity`` ``action`` on ``bucket`` (any bucket if None) under at least one prefix?"""
    return any(action in g.actions and (bucket is None or g.bucket in ("*", bucket)) for g in identity.allow)


def has_any_grant(identity: Identity, bucket: str) -> bool:
    """Any grant at all (any action, any prefix) on ``bucket``: it may see the bucket's name."""
    return any(g.bucket in ("*", bucket) and g.actions for g in identity.allow)


# Bucket-level operations needing the action on the bucket under any prefix (their
# own checks, or the nature of the operation, confine them further).
_BUCKET_WIDE = {
    "ListBuckets": None,  # s3:ListAllMyBuckets: "list" somewhere; list_buckets filters the answer
    "HeadBucket": "bucket", "GetBucketLocation": "bucket",  # existence and region only
    "DeleteObjects": "bucket",  # per key: check_delete_objects
}


def authorise(ctx: Ctx) -> None:
    r, request = ctx.route, ctx.request
    op = operation(r, request.method)
    ident = ctx.caller.identity
    _refuse_reserved(ctx)
    if ident is None:
        if (r.bucket and op in ANONYMOUS_PUBLIC and not header_actions(request.headers)
                and ctx.state.settings.bucket(r.bucket).public_read):
            return
        raise access_denied()
    for action in sorted(required_actions(r, request.method, request.headers)):
        if op in _BUCKET_WIDE and action == ACTIONS[op]:
            ok = allowed_somewhere(ident, action, r.bucket if _BUCKET_WIDE[op] else None)
        else:
            ok = allowed(ident, action, r.bucket, r.key, r.q("prefix"))
        if not ok:
            raise access_denied()
    source = request.headers.get("x-amz-copy-source")
    if source is not None:
        from s3proxy.aws.copysource import parse_copy_source

        sb, sk, _ = parse_copy_source(source)
        if not allowed(ident, "read", sb, sk, None):
            raise access_denied()


def _reserved_in(ctx: Ctx, bucket: str | None, key: str | None) -> bool:
    """Whether ``bucket``/``key`` is a proxy-owned key (``.s3proxy/`` in an encrypted bucket)."""
    return bucket is not None and is_reserved_key(key) and ctx.state.settings.bucket(bucket).mode == "encrypt"


def _refuse_reserved(ctx: Ctx) -> None:
    """No client, whatever its grants, reads, writes, copies or deletes the proxy's own keys."""
    r = ctx.route
    if _reserved_in(ctx, r.bucket, r.key):
        raise access_denied()
    source = ctx.request.headers.get("x-amz-copy-source")
    if source is not None:
        from s3proxy.aws.copysource import parse_copy_source

        try:
            sb, sk, _ = parse_copy_source(source)
        except S3Error:
            return  # refused with its own error below
        if _reserved_in(ctx, sb, sk):
            raise access_denied()


# --------------------------------------------------------------------- DeleteObjects


def check_delete_objects(ctx: Ctx, body: bytes | xmlsafe.DeleteRequest) -> xmlsafe.DeleteRequest:
    """DeleteObjects: every key named must be deletable by the caller, or the whole request is refused.

    ``body`` is the raw request body (parsed here with ``xmlsafe.delete_objects``:
    MalformedXML for anything unexpected) or an already parsed request.  Returns the
    parsed request; send the backend ``xmlsafe.delete_xml(result)``, never the client's bytes.
    ``authorise`` let the request through on a "delete" grant *anywhere* in the bucket:
    a handler that does not call this lets a prefix-limited identity delete any key.
    """
    ident = ctx.caller.identity
    if ident is None:
        raise access_denied()
    req = xmlsafe.delete_objects(bytes(body)) if isinstance(body, bytes | bytearray | memoryview) else body
    bucket = ctx.route.bucket
    for key, _version in req.objects:
        if not allowed(ident, "delete", bucket, key, None) or _reserved_in(ctx, bucket, key):
            raise access_denied()
    return req


# --------------------------------------------------------------------- ListBuckets

MAX_BUCKET_LIST = 16 * 1024 * 1024


async def list_buckets(ctx: Ctx) -> web.StreamResponse:
    """ListBuckets, answering only the buckets the caller has a grant on (any action, any prefix).

    ``authorise`` already required the "list" action in at least one grant (AWS's
    s3:ListAllMyBuckets); an identity whose grants name no existing bucket gets an empty list.
    """
    from s3proxy.http.ctx import backend_error, read_at_most, response_headers

    ident = ctx.caller.identity
    if ident is None:
        raise access_denied()
    resp = await ctx.backend.request("GET", None, query=list(ctx.route.query))
    if resp.status != 200:
        return await backend_error(ctx, resp)
    try:
        data = await read_at_most(resp, MAX_BUCKET_LIST + 1)
    finally:
        resp.release()
    if len(data) > MAX_BUCKET_LIST:
        raise S3Error("InternalError", "The backend's bucket list is too large.", 500)
    try:
        root = xmlsafe.parse(data, "ListAllMyBucketsResult")
    except S3Error:
        raise S3Error("InternalError", "The backend answered ListBuckets with malformed XML.", 500) from None
    for buckets in root.findall("Buckets"):
        for b in list(buckets):
            names = [n.text or "" for n in b.findall("Name")]
            if b.tag != "Bucket" or len(names) != 1 or not has_any_grant(ident, names[0]):
                buckets.remove(b)
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["content-type", "content-encoding"])
    return web.Response(status=200, body=xmlsafe.serialise(root), headers=hdrs, content_type="application/xml")
