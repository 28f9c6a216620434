"""A small S3-compatible server over a data directory (aiohttp): ``make dev``'s store and the
test suite's AWS-strict backend (``S3PROXY_TEST_BACKEND=strict``).

Path-style addressing (``http://host:port/<bucket>/<key>``), plus
virtual-hosted style for ``Host: <bucket>.localhost``.  Every
request must be SigV4-signed (header or presigned URL, never both: two
authentication mechanisms are ``400 InvalidArgument`` as on AWS) with one of the
configured access keys; payloads may be ``UNSIGNED-PAYLOAD``, a hex SHA-256
(verified) or aws-chunked (signed or unsigned, with trailing checksums).
``Content-MD5`` and ``x-amz-checksum-*`` (headers or trailers) are verified;
no checksum is ever returned.  Only ``OPTIONS`` (CORS preflight) is unsigned.

Semantics worth knowing (each as AWS documents it):

* An upload id belongs to its bucket and key; parts other than the last must be
  at least ``min_part_size`` (5 MiB unless configured smaller for tests);
  Complete checks ``InvalidPart``/``InvalidPartOrder``/``EntityTooSmall``.
* Multipart objects remember their part sizes; ``partNumber=i`` on
  GET/HEAD addresses the i-th part *by position* among the parts that were
  completed (so completing parts 1, 3 and 7 gives parts 1, 2 and 3).  An
  object not uploaded in parts has exactly one part, the whole object.
* CopyObject makes a single-part object (ETag = MD5 of the data), as S3 does
  for copies made with one CopyObject call.
* Conditional requests: If-Match / If-None-Match / If-(Un)Modified-Since on
  GET and HEAD, ``x-amz-copy-source-if-*``, If-None-Match: * and If-Match on
  PutObject, CopyObject and CompleteMultipartUpload.
* Versioning (Enabled / Suspended), version ids, delete markers,
  ListObjectVersions; object tags; bucket CORS (applied to preflights and to
  requests carrying ``Origin``), policy, lifecycle, tagging, encryption,
  website, public-access-block and ownership documents are kept as sent;
  GetObjectAttributes (ETag, ObjectSize, StorageClass, ObjectParts count).
  ACL writes are accepted and ignored; other writes answer ``NotImplemented``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote_plus, unquote_to_bytes
from xml.etree import ElementTree as ET

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from s3proxy.aws import xmlsafe
from s3proxy.aws.awschunked import AwsChunkedError, ChunkedDecoder, ChunkSigning
from s3proxy.aws.checksums import Checker, ChecksumError
from s3proxy.aws.errors import S3Error as ProxyS3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4 import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    AuthResult,
    RequestView,
    SigV4Error,
    verify_request,
)
from s3proxy.devstore import render, subresources
from s3proxy.devstore.errors import (
    S3Error,
    invalid_argument,
    malformed_xml,
    no_such_bucket,
    precondition_failed,
)
from s3proxy.devstore.store import (
    CHUNK_SIZE,
    DEFAULT_MIN_PART_SIZE,
    MAX_PARTS,
    ObjectInfo,
    Sink,
    Store,
    UploadInfo,
    copy_range,
)

__all__ = ["DevStoreServer", "build_devstore_app", "start_devstore"]

log = logging.getLogger("s3proxy.devstore")

MAX_OBJECT_SIZE = 5 << 30  # single PUT, single part, copy source
MAX_KEY_BYTES = 1024
MAX_XML_BODY = 4 << 20
MAX_DELETE_KEYS = 1000
OWNER_ID = render.OWNER_ID
OWNER_NAME = render.OWNER_NAME

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]{0,20})[ \t]*-[ \t]*([0-9]{0,20})[ \t]*", re.IGNORECASE | re.ASCII)
_REQUEST_ID: Any = (
    web.RequestKey("s3proxy.devstore.request_id", str) if hasattr(web, "RequestKey") else "s3proxy.devstore.request_id"
)
_BUCKET: Any = web.RequestKey("s3proxy.devstore.bucket", str) if hasattr(web, "RequestKey") else "s3proxy.devstore.bucket"

# Headers stored with an object and returned on GET/HEAD (lower-case -> response spelling).
_STORED_HEADERS = {
    "content-type": "Content-Type",
    "content-encoding": "Content-Encoding",
    "content-disposition": "Content-Disposition",
    "cache-control": "Cache-Control",
    "content-language": "Content-Language",
    "expires": "Expires",
}
# response-* query parameters of GetObject / HeadObject.
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-encoding": "Content-Encoding",
    "response-content-disposition": "Content-Disposition",
    "response-cache-control": "Cache-Control",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
}
_BUCKET_SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "delete", "encryption", "intelligent-tiering",
        "inventory", "lifecycle", "location", "logging", "metadataTable", "metrics", "notification",
        "object-lock", "ownershipControls", "policy", "policyStatus", "publicAccessBlock",
        "replication", "requestPayment", "session", "tagging", "uploads", "versioning", "versions",
        "website",
    }
)  # fmt: skip
_OBJECT_SUBRESOURCES = frozenset(
    {"acl", "attributes", "legal-hold", "renameObject", "restore", "retention", "select", "tagging",
     "torrent", "uploadId", "uploads"}
)  # fmt: skip
# GET on a bucket configuration S3 has no value for: (code, message).
_NO_CONFIG = {
    "policy": ("NoSuchBucketPolicy", "The bucket policy does not exist"),
    "cors": ("NoSuchCORSConfiguration", "The CORS configuration does not exist"),
    "lifecycle": ("NoSuchLifecycleConfiguration", "The lifecycle configuration does not exist"),
    "encryption": (
        "ServerSideEncryptionConfigurationNotFoundError",
        "The server side encryption configuration was not found",
    ),
    "tagging": ("NoSuchTagSet", "The TagSet does not exist"),
    "website": ("NoSuchWebsiteConfiguration", "The specified bucket does not have a website configuration"),
    "replication": ("ReplicationConfigurationNotFoundError", "The replication configuration was not found"),
    "object-lock": (
        "ObjectLockConfigurationNotFoundError",
        "Object Lock configuration does not exist for this bucket",
    ),
    "ownershipControls": (
        "OwnershipControlsNotFoundError",
        "The bucket ownership controls were not found",
    ),
    "publicAccessBlock": (
        "NoSuchPublicAccessBlockConfiguration",
        "The public access block configuration was not found",
    ),
}
# GET on a bucket configuration with a fixed, empty-ish answer.
_FIXED_CONFIG = {
    "versioning": "VersioningConfiguration",
    "logging": "BucketLoggingStatus",
    "notification": "NotificationConfiguration",
    "accelerate": "AccelerateConfiguration",
}


def _not_implemented(what: str = "") -> S3Error:
    message = "A header or query you provided requested a function that is not implemented."
    if what:
        message = f"{message} ({what})"
    return S3Error("NotImplemented", message, 501)


def _method_not_allowed() -> S3Error:
    return S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)


# ---------------------------------------------------------------------------
# Formatting helpers


_x = render.x
_el = render.el
_document = render.document
_iso = render.iso
_http_date = render.http_date
_owner = render.owner
_xml_response = render.xml_response


def _clean_header(value: str) -> str:
    """A header value as received, made safe to send back (undecodable bytes replaced)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _parse_http_date(value: str) -> float | None:
    try:
        t = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _etag_matches(header: str, etag: str) -> bool:
    for token in header.split(","):
        token = token.strip()
        if token == "*":
            return True
        if token.startswith("W/"):
            token = token[2:]
        if token.strip('"') == etag:
            return True
    return False


def _parse_xml(body: bytes) -> ET.Element:
    """DTDs and entities refused in every encoding (s3proxy.aws.xmlsafe); namespaces stripped."""
    try:
        return xmlsafe.parse(body)
    except ProxyS3Error:
        raise malformed_xml() from None


def _int_param(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    parsed = parse_uint(raw)
    if parsed is None:
        raise invalid_argument("Provided " + name + " not an integer or within integer range", name, raw)
    value = parsed
    if value < 0:
        raise invalid_argument(f"Argument {name} must be an integer between 0 and 2147483647", name, raw)
    return min(value, maximum)


def _check_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", 400, extra={"MaxSizeAllowed": str(MAX_KEY_BYTES)})


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError, binascii.Error):
        raise invalid_argument(
            "The continuation token provided is incorrect", "continuation-token", token
        ) from None


def _object_headers(h: CIMultiDictProxy[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The stored headers and user metadata a request gives its object."""
    stored: dict[str, str] = {}
    for name in _STORED_HEADERS:
        value = h.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            tokens = [t.strip() for t in value.split(",") if t.strip() and t.strip().lower() != "aws-chunked"]
            if not tokens:
                continue
            value = ",".join(tokens)
        stored[name] = _clean_header(value)
    metadata: dict[str, str] = {}
    for name, value in h.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            value = _clean_header(value)
            metadata[lname] = f"{metadata[lname]},{value}" if lname in metadata else value
    size = sum(len(k) - len("x-amz-meta-") + len(v.encode("utf-8")) for k, v in metadata.items())
    if size > 2048:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size",
            400,
            extra={"Size": str(size), "MaxSizeAllowed": "2048"},
        )
    return stored, metadata


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, length) of a ``Range`` header; None when S3 would ignore it; raises InvalidRange."""
    m = _RANGE.fullmatch(value)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            raise _invalid_range(size, value)
        start = max(0, size - n)
        return start, size - start
    start = int(a)
    if b != "" and int(b) < start:
        return None
    if start >= size:
        raise _invalid_range(size, value)
    end = size - 1 if b == "" else min(int(b), size - 1)
    return start, end - start + 1


def _invalid_range(size: int, requested: str) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        extra={"RangeRequested": requested, "ActualObjectSize": str(size)},
        headers={"Content-Range": f"bytes */{size}"},
    )


def _check_conditions(h: CIMultiDictProxy[str], info: ObjectInfo, *, copy_source: bool = False) -> bool:
    """Evaluate conditional headers (RFC 7232 order, as S3).

    Returns True for "304 Not Modified"; raises 412 PreconditionFailed.  For
    ``x-amz-copy-source-if-*`` every failure is a 412.
    """
    prefix = "x-amz-copy-source-" if copy_source else ""
    get = h.get
    if_match = get(prefix + "if-match")
    if_none_match = get(prefix + "if-none-match")
    if_modified = get(prefix + "if-modified-since")
    if_unmodified = get(prefix + "if-unmodified-since")
    modified = int(info.last_modified)
    if if_match is not None:
        if not _etag_matches(if_match, info.etag):
            raise precondition_failed("x-amz-copy-source-If-Match" if copy_source else "If-Match")
    elif if_unmodified is not None:
        t = _parse_http_date(if_unmodified)
        if t is not None and modified > t:
            raise precondition_failed("If-Unmodified-Since" if not copy_source else "x-amz-copy-source-If-Unmodified-Since")
    if if_none_match is not None:
        if _etag_matches(if_none_match, info.etag):
            if copy_source:
                raise precondition_failed("x-amz-copy-source-If-None-Match")
            return True
    elif if_modified is not None:
        t = _parse_http_date(if_modified)
        if t is not None and modified <= t:
            if copy_source:
                raise precondition_failed("x-amz-copy-source-If-Modified-Since")
            return True
    return False


def _write_conditions(request: web.Request, key: str) -> Callable[[ObjectInfo | None], None] | None:
    """Conditional writes (``If-None-Match: *``, ``If-Match: <etag>``), checked at commit."""
    if_none_match = request.headers.get("If-None-Match")
    if_match = request.headers.get("If-Match")
    if if_none_match is None and if_match is None:
        return None
    if if_none_match is not None and if_none_match.strip() != "*":
        raise _not_implemented("If-None-Match other than *")

    def check(old: ObjectInfo | None) -> None:
        if if_none_match is not None and old is not None:
            raise precondition_failed("If-None-Match")
        if if_match is not None:
            if old is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", 404, extra={"Key": key})
            if not _etag_matches(if_match, old.etag):
                raise precondition_failed("If-Match")

    return check


# ---------------------------------------------------------------------------
# The server


@dataclass
class _Ctx:
    request: web.Request
    request_id: str
    method: str
    raw_path: str
    raw_query: str
    resource: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    auth: AuthResult | None = None


class DevStoreServer:
    """Request handling; one per application."""

    def __init__(
        self,
        store: Store,
        credentials: dict[str, str],
        *,
        region: str = "us-east-1",
        min_part_size: int = DEFAULT_MIN_PART_SIZE,
        max_object_size: int = MAX_OBJECT_SIZE,
        virtual_host_domains: tuple[str, ...] = ("localhost",),
    ) -> None:
        self.store = store
        self.virtual_host_domains = virtual_host_domains
        self.credentials = dict(credentials)
        self.region = region
        self.min_part_size = min_part_size
        self.max_object_size = max_object_size

    # -- plumbing -----------------------------------------------------------

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(_REQUEST_ID) or secrets.token_hex(8).upper()
        response.headers.setdefault("x-amz-request-id", rid)
        response.headers.setdefault("x-amz-id-2", base64.b64encode(rid.encode() * 3).decode())
        response.headers["Server"] = "s3proxy-devstore"
        origin = request.headers.get("Origin")
        bucket = request.get(_BUCKET)
        if origin and bucket and request.method != "OPTIONS" and "Access-Control-Allow-Origin" not in response.headers:
            # S3 adds the matching CORS rule's headers to a normal request that carries Origin.
            try:
                config = self.store.get_config(bucket, "cors")
            except S3Error:
                config = None
            extra = subresources.cors_headers(config, origin, request.method, []) if config else None
            response.headers.update(extra or {})

    async def _preflight(self, ctx: _Ctx) -> web.Response:
        """OPTIONS: unauthenticated, answered from the bucket's CORS configuration (OPTIONS object
        API reference: 400 without Origin or Access-Control-Request-Method, 403 when no rule allows)."""
        h = ctx.request.headers
        origin, method = h.get("Origin"), h.get("Access-Control-Request-Method")
        if not origin or not method:
            raise S3Error("BadRequest", "Insufficient information. Origin request header needed.", 400)
        wanted = [v.strip() for v in h.get("Access-Control-Request-Headers", "").split(",") if v.strip()]
        config = await asyncio.to_thread(self.store.get_config, ctx.bucket, "cors") if ctx.bucket else None
        headers = subresources.cors_headers(config, origin, method, wanted) if config else None
        if headers is None:
            raise S3Error(
                "AccessForbidden",
                "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, "
                "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not "
                "whitelisted by the resource's CORS spec.",
                403,
                extra={"Method": method, "ResourceType": "OBJECT" if ctx.key else "BUCKET"},
            )
        return web.Response(status=200, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = secrets.token_hex(8).upper()
        request[_REQUEST_ID] = rid
        resource = "/"
        try:
            ctx = self._context(request, rid)
            resource = ctx.resource
            if ctx.bucket:
                request[_BUCKET] = ctx.bucket
            if ctx.method == "OPTIONS":
                return await self._preflight(ctx)
            self._authenticate(ctx)
            return await self._dispatch(ctx)
        except S3Error as e:
            return self._error(e, resource, rid)
        except (SigV4Error, AwsChunkedError, ChecksumError) as e:
            details = dict(getattr(e, "details", ()))
            return self._error(S3Error(e.code, e.message, e.status, extra=details), resource, rid)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("devstore: internal error on %s %s", request.method, request.raw_path)
            return self._error(
                S3Error("InternalError", "We encountered an internal error. Please try again.", 500), resource, rid
            )

    def _error(self, e: S3Error, resource: str, rid: str) -> web.Response:
        extra = "".join(_el(k, v) for k, v in e.extra.items())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"{_el('Code', e.code)}{_el('Message', e.message)}{extra}"
            f"{_el('Resource', resource)}{_el('RequestId', rid)}</Error>"
        ).encode()
        return _xml_response(body, e.status, e.headers or None)

    def _context(self, request: web.Request, rid: str) -> _Ctx:
        target = request.raw_path
        if target.startswith(("http://", "https://")):  # absolute-form request target
            scheme_end = target.index("//") + 2
            slash = target.find("/", scheme_end)
            target = target[slash:] if slash >= 0 else "/"
        raw_path, _, raw_query = target.partition("?")
        raw_path = raw_path.split("#", 1)[0]
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", 400) from None
        if not path.startswith("/"):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", 400)
        bucket, sep, key = path[1:].partition("/")
        vhost_bucket = self._virtual_host_bucket(request.headers.get("Host", ""))
        if vhost_bucket is not None:
            bucket, sep, key = vhost_bucket, "/", path[1:]
        query: dict[str, str] = {}
        for part in raw_query.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            query.setdefault(unquote_plus(name), unquote_plus(value))
        return _Ctx(
            request=request,
            request_id=rid,
            method=request.method.upper(),
            raw_path=raw_path,
            raw_query=raw_query,
            resource=path,
            bucket=bucket or None,
            key=key if (bucket and sep and key) else None,
            query=query,
        )

    def _virtual_host_bucket(self, host: str) -> str | None:
        """The bucket of a virtual-hosted-style request (``<bucket>.<domain>[:port]``), else None."""
        if not self.virtual_host_domains:
            return None
        name = host.strip().lower()
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        for domain in self.virtual_host_domains:
            suffix = "." + domain.lower().strip(".")
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return None

    def _authenticate(self, ctx: _Ctx) -> None:
        view = RequestView(ctx.request.method, ctx.raw_path, ctx.raw_query, list(ctx.request.headers.items()))
        result = verify_request(view, self.credentials.get, datetime.now(UTC))
        if result is None:
            raise S3Error("AccessDenied", "Access Denied", 403)
        ctx.auth = result

    async def _dispatch(self, ctx: _Ctx) -> web.StreamResponse:
        if ctx.method in ("GET", "HEAD", "DELETE"):
            self._check_empty_body(ctx)
        if ctx.bucket is None:
            if ctx.method == "GET":
                return await self.list_buckets(ctx)
            raise _method_not_allowed()
        if ctx.key is None:
            return await self._bucket_op(ctx)
        _check_key(ctx.key)
        return await self._object_op(ctx)

    def _check_empty_body(self, ctx: _Ctx) -> None:
        assert ctx.auth is not None
        ph = ctx.auth.payload_hash
        if (
            _HEX64.fullmatch(ph)
            and ph.lower() != EMPTY_SHA256
            and not ctx.request.body_exists
        ):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
                extra={"ClientComputedContentSHA256": ph, "S3ComputedContentSHA256": EMPTY_SHA256},
            )

    async def _bucket_op(self, ctx: _Ctx) -> web.StreamResponse:
        q = ctx.query
        m = ctx.method
        bucket = ctx.bucket
        assert bucket is not None
        sub = next((name for name in q if name in _BUCKET_SUBRESOURCES), None)
        if m == "GET":
            if sub is None:
                return await self.list_objects(ctx, v2=q.get("list-type") == "2")
            await self._require_bucket(bucket)
            if sub == "location":
                region = "" if self.region == "us-east-1" else self.region
                return _xml_response(_document("LocationConstraint", _x(region)))
            if sub == "uploads":
                return await self.list_uploads(ctx)
            if sub == "acl":
                return _xml_response(self._acl_document())
            if sub == "versions":
                return await self.list_versions(ctx)
            if sub == "versioning":
                status = await asyncio.to_thread(self.store.get_versioning, bucket)
                return _xml_response(subresources.versioning_document(status))
            if sub in subresources.STORED_CONFIGS:
                stored = await asyncio.to_thread(self.store.get_config, bucket, sub)
                if stored is not None:
                    ctype = "application/json" if sub == "policy" else "application/xml"
                    return web.Response(body=stored, content_type=ctype)
            if sub in _FIXED_CONFIG:
                return _xml_response(_document(_FIXED_CONFIG[sub], ""))
            if sub == "requestPayment":
                return _xml_response(_document("RequestPaymentConfiguration", "<Payer>BucketOwner</Payer>"))
            if sub in _NO_CONFIG:
                code, message = _NO_CONFIG[sub]
                raise S3Error(code, message, 404, extra={"BucketName": bucket})
            raise _not_implemented(sub)
        if m == "HEAD":
            await self._require_bucket(bucket)
            return web.Response(status=200, headers={"x-amz-bucket-region": self.region})
        if m == "PUT":
            if sub is None:
                return await self.create_bucket(ctx)
            await self._require_bucket(bucket)
            if sub == "acl":
                await self._read_small(ctx)
                return web.Response(status=200)
            if sub == "versioning":
                status = subresources.parse_versioning(await self._read_small(ctx))
                await asyncio.to_thread(self.store.set_versioning, bucket, status)
                return web.Response(status=200)
            if sub in subresources.STORED_CONFIGS:
                body = await self._read_small(ctx, 64 << 10)
                subresources.check_config(sub, body)
                await asyncio.to_thread(self.store.put_config, bucket, sub, body)
                return web.Response(status=204 if sub in ("policy", "tagging") else 200)
            raise _not_implemented(sub)
        if m == "DELETE":
            if sub is None:
                await asyncio.to_thread(self.store.delete_bucket, bucket)
                return web.Response(status=204)
            await self._require_bucket(bucket)
            if sub in subresources.STORED_CONFIGS:
                await asyncio.to_thread(self.store.delete_config, bucket, sub)
                return web.Response(status=204)
            if sub in _NO_CONFIG:
                return web.Response(status=204)
            raise _not_implemented(sub)
        if m == "POST":
            if sub == "delete":
                return await self.delete_objects(ctx)
            raise _not_implemented("POST " + (sub or "object upload"))
        raise _method_not_allowed()

    async def _object_op(self, ctx: _Ctx) -> web.StreamResponse:
        q = ctx.query
        m = ctx.method
        sub = next((name for name in q if name in _OBJECT_SUBRESOURCES), None)
        copy_source = ctx.request.headers.get("x-amz-copy-source")
        if m == "PUT":
            if sub == "uploadId":
                if copy_source is not None:
                    return await self.upload_part_copy(ctx, copy_source)
                return await self.upload_part(ctx)
            if sub == "acl":
                await self._require_object(ctx)
                await self._read_small(ctx)
                return web.Response(status=200)
            if sub == "tagging":
                tags = subresources.tags_from_xml(await self._read_small(ctx))
                return await self._set_tags(ctx, tags, 200)
            if sub is not None:
                raise _not_implemented(sub)
            if copy_source is not None:
                return await self.copy_object(ctx, copy_source)
            return await self.put_object(ctx)
        if m in ("GET", "HEAD"):
            if sub is None:
                return await self.get_object(ctx, head=m == "HEAD")
            if m == "GET" and sub == "uploadId":
                return await self.list_parts(ctx)
            if m == "GET" and sub == "tagging":
                info = await self._require_object(ctx)
                return _xml_response(subresources.tagging_document(info.tags), headers=self._version_header(info))
            if m == "GET" and sub == "attributes":
                info = await self._require_object(ctx)
                body = subresources.attributes_document(info, ctx.request.headers.get("x-amz-object-attributes"))
                headers = {"Last-Modified": _http_date(info.last_modified), **self._version_header(info)}
                return _xml_response(body, headers=headers)
            if m == "GET" and sub == "acl":
                await self._require_object(ctx)
                return _xml_response(self._acl_document())
            raise _not_implemented(sub)
        if m == "DELETE":
            if sub == "uploadId":
                assert ctx.bucket is not None and ctx.key is not None
                await asyncio.to_thread(self.store.abort_upload, ctx.bucket, q["uploadId"], ctx.key)
                return web.Response(status=204)
            if sub == "tagging":
                return await self._set_tags(ctx, {}, 204)
            if sub is not None:
                raise _not_implemented(sub)
            return await self.delete_object(ctx)
        if m == "POST":
            if sub == "uploads":
                return await self.create_upload(ctx)
            if sub == "uploadId":
                return await self.complete_upload(ctx)
            raise _not_implemented("POST " + (sub or "object"))
        raise _method_not_allowed()

    async def _require_bucket(self, bucket: str) -> None:
        if not await asyncio.to_thread(self.store.bucket_exists, bucket):
            raise no_such_bucket(bucket)

    async def _require_object(self, ctx: _Ctx) -> ObjectInfo:
        assert ctx.bucket is not None and ctx.key is not None
        return await asyncio.to_thread(self.store.head, ctx.bucket, ctx.key, ctx.query.get("versionId"))

    @staticmethod
    def _version_header(info: ObjectInfo) -> dict[str, str]:
        """``x-amz-version-id`` of a version written while the bucket had versioning configured."""
        return {"x-amz-version-id": info.version_id} if info.version_id is not None else {}

    async def _set_tags(self, ctx: _Ctx, tags: dict[str, str], status: int) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        info = await asyncio.to_thread(self.store.set_tags, ctx.bucket, ctx.key, ctx.query.get("versionId"), tags)
        return web.Response(status=status, headers=self._version_header(info))

    async def delete_object(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        version = ctx.query.get("versionId")
        gone = await asyncio.to_thread(self.store.delete_object, ctx.bucket, ctx.key, version)
        headers = {}
        if gone is not None and (gone.version_id is not None or version is not None or gone.delete_marker):
            headers["x-amz-version-id"] = gone.vid
            if gone.delete_marker:
                headers["x-amz-delete-marker"] = "true"
        return web.Response(status=204, headers=headers)

    async def list_versions(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_keys = _int_param(q, "max-keys", 1000, 1000)
        version_marker = q.get("version-id-marker", "")
        if version_marker and not q.get("key-marker"):
            raise invalid_argument("A version-id marker cannot be specified without a key marker.",
                                   "version-id-marker", version_marker)
        entries, prefixes, truncated, nxt = await asyncio.to_thread(
            self.store.list_versions, ctx.bucket, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
            key_marker=q.get("key-marker", ""), version_marker=version_marker, max_keys=max_keys,
        )
        return _xml_response(
            subresources.versions_document(ctx.bucket, q, max_keys, entries, prefixes, truncated, nxt)
        )

    def _acl_document(self) -> bytes:
        grant = (
            '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
            f"<ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Grantee>"
            "<Permission>FULL_CONTROL</Permission></Grant>"
        )
        return _document("AccessControlPolicy", f"{_owner()}<AccessControlList>{grant}</AccessControlList>")

    # -- request bodies -------------------------------------------------------

    def _body_framing(self, ctx: _Ctx) -> tuple[ChunkedDecoder | None, int | None, list[str]]:
        """(aws-chunked decoder or None, declared payload length or None, trailer names)."""
        assert ctx.auth is not None
        ph = ctx.auth.payload_hash
        h = ctx.request.headers
        if ph.startswith("STREAMING-"):
            raw = h.get("x-amz-decoded-content-length", "")
            parsed = parse_uint(raw)
            if parsed is None:
                raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
            decoded = parsed
            signing = None
            if ph != STREAMING_UNSIGNED_PAYLOAD_TRAILER:
                signing = ChunkSigning(
                    signing_key=ctx.auth.signing_key,
                    amz_date=ctx.auth.amz_date,
                    scope=ctx.auth.scope,
                    seed_signature=ctx.auth.signature,
                )
            trailer = ph in (STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER)
            names = [n.strip() for n in h.get("x-amz-trailer", "").split(",") if n.strip()] if trailer else []
            decoder = ChunkedDecoder(signing=signing, trailer=trailer, decoded_length=decoded)
            return decoder, decoded, names
        declared = ctx.request.content_length
        if declared is None and "chunked" not in h.get("Transfer-Encoding", "").lower():
            if ctx.request.body_exists:
                raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
            declared = 0
        return None, declared, []

    async def _receive(self, ctx: _Ctx, bucket: str, max_size: int) -> Sink:
        """Stream the request payload into a new sink, verified; the caller commits or discards it."""
        assert ctx.auth is not None
        decoder, declared, trailer_names = self._body_framing(ctx)
        if declared is not None and declared > max_size:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed object size.",
                400,
                extra={"ProposedSize": str(declared), "MaxSizeAllowed": str(max_size)},
            )
        checker = Checker.from_headers(ctx.request.headers, trailer_names)
        ph = ctx.auth.payload_hash
        want_sha = _HEX64.fullmatch(ph) is not None
        sink = await asyncio.to_thread(self.store.new_sink, bucket, sha256=want_sha)
        sink.observers.append(checker.update)
        try:
            await self._pump(ctx, decoder, declared, sink, max_size)
            if decoder is not None:
                for name, value in decoder.trailers.items():
                    if name.startswith("x-amz-checksum-"):
                        checker.expect(name, value)
            await asyncio.to_thread(sink.finish)
            if want_sha and sink.sha256 is not None and sink.sha256.hexdigest() != ph.lower():
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    400,
                    extra={"ClientComputedContentSHA256": ph, "S3ComputedContentSHA256": sink.sha256.hexdigest()},
                )
            checker.verify()
        except BaseException:
            sink.discard()
            raise
        return sink

    async def _pump(
        self, ctx: _Ctx, decoder: ChunkedDecoder | None, declared: int | None, sink: Sink, max_size: int
    ) -> None:
        content = ctx.request.content
        buf = bytearray()
        received = 0
        while True:
            try:
                data = await content.readany()
            except (asyncio.CancelledError, S3Error):
                raise
            except Exception as e:  # connection lost, bad framing...
                raise S3Error(
                    "IncompleteBody", f"The request body terminated unexpectedly ({type(e).__name__}).", 400
                ) from e
            if not data:
                break
            received += len(data)
            if decoder is not None:
                for piece in decoder.feed(data):
                    buf += piece
            else:
                buf += data
            if sink.size + len(buf) > max_size:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.", 400)
            if len(buf) >= CHUNK_SIZE:
                chunk = bytes(buf)
                buf.clear()
                await asyncio.to_thread(sink.write, chunk)
        if decoder is not None:
            decoder.finish()
        elif declared is not None and received != declared:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
                400,
            )
        if buf:
            await asyncio.to_thread(sink.write, bytes(buf))

    async def _read_small(self, ctx: _Ctx, limit: int = MAX_XML_BODY, *, body_checksums: bool = True) -> bytes:
        """A small (XML) request body, read whole and verified.

        ``body_checksums=False``: the request's ``x-amz-checksum-*`` headers
        describe something else (CompleteMultipartUpload: the whole object)
        and are not checked; ``Content-MD5`` still is.
        """
        assert ctx.auth is not None
        decoder, declared, trailer_names = self._body_framing(ctx)
        if declared is not None and declared > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        check_headers: CIMultiDictProxy[str] | dict[str, str] = ctx.request.headers
        if not body_checksums:
            check_headers = {k: v for k, v in ctx.request.headers.items() if k.lower() == "content-md5"}
        checker = Checker.from_headers(check_headers, trailer_names)
        raw = bytearray()
        while True:
            try:
                data = await ctx.request.content.readany()
            except Exception as e:
                raise S3Error("IncompleteBody", "The request body terminated unexpectedly.", 400) from e
            if not data:
                break
            raw += data
            if len(raw) > limit + 65536:
                raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        if decoder is not None:
            body = b"".join(bytes(p) for p in decoder.feed(bytes(raw)))
            decoder.finish()
            for name, value in decoder.trailers.items():
                if name.startswith("x-amz-checksum-"):
                    checker.expect(name, value)
        else:
            if declared is not None and len(raw) != declared:
                raise S3Error("IncompleteBody", "The request body terminated unexpectedly.", 400)
            body = bytes(raw)
        if len(body) > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        ph = ctx.auth.payload_hash
        if _HEX64.fullmatch(ph) and hashlib.sha256(body).hexdigest() != ph.lower():
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        checker.update(body)
        checker.verify()
        return body

    # -- service and buckets ----------------------------------------------------

    async def list_buckets(self, ctx: _Ctx) -> web.Response:
        buckets = await asyncio.to_thread(self.store.list_buckets)
        inner = "".join(
            f"<Bucket>{_el('Name', name)}{_el('CreationDate', _iso(created))}</Bucket>" for name, created in buckets
        )
        return _xml_response(_document("ListAllMyBucketsResult", f"{_owner()}<Buckets>{inner}</Buckets>"))

    async def create_bucket(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None
        body = await self._read_small(ctx)
        if body.strip():
            root = _parse_xml(body)
            if root.tag != "CreateBucketConfiguration":
                raise malformed_xml()
        await asyncio.to_thread(self.store.create_bucket, ctx.bucket)
        return web.Response(status=200, headers={"Location": "/" + ctx.bucket})

    async def list_objects(self, ctx: _Ctx, *, v2: bool) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_keys = _int_param(q, "max-keys", 1000, 1000)
        token = q.get("continuation-token") or None
        start_after = q.get("start-after", "")
        if v2:
            marker = _decode_token(token) if token is not None else start_after
        else:
            marker = q.get("marker", "")
        result = await asyncio.to_thread(
            self.store.list_objects, ctx.bucket, prefix=prefix, delimiter=delimiter, marker=marker, max_keys=max_keys
        )

        def enc(value: str) -> str:
            return quote(value, safe="/") if encoding is not None else value

        fetch_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
        contents = "".join(
            "<Contents>"
            f"{_el('Key', enc(o.key))}{_el('LastModified', _iso(o.last_modified))}"
            f"{_el('ETag', chr(34) + o.etag + chr(34))}{_el('Size', o.size)}"
            f"<StorageClass>STANDARD</StorageClass>{_owner() if fetch_owner else ''}"
            "</Contents>"
            for o in result.contents
        )
        prefixes = "".join(
            f"<CommonPrefixes>{_el('Prefix', enc(p))}</CommonPrefixes>" for p in result.common_prefixes
        )
        # V1 echoes Prefix unencoded: botocore decodes only Delimiter, Marker and NextMarker there.
        parts = [_el("Name", ctx.bucket), _el("Prefix", enc(prefix) if v2 else prefix)]
        if v2:
            if delimiter:
                parts.append(_el("Delimiter", enc(delimiter)))
            parts.append(_el("MaxKeys", max_keys))
            if encoding is not None:
                parts.append(_el("EncodingType", "url"))
            parts.append(_el("KeyCount", len(result.contents) + len(result.common_prefixes)))
            parts.append(_el("IsTruncated", "true" if result.truncated else "false"))
            if token is not None:
                parts.append(_el("ContinuationToken", token))
            if result.truncated and result.next_marker is not None:
                parts.append(_el("NextContinuationToken", _encode_token(result.next_marker)))
            if start_after:
                parts.append(_el("StartAfter", enc(start_after)))
            tag = "ListBucketResult"
        else:
            parts.append(_el("Marker", enc(marker)))
            parts.append(_el("MaxKeys", max_keys))
            if delimiter:
                parts.append(_el("Delimiter", enc(delimiter)))
            if encoding is not None:
                parts.append(_el("EncodingType", "url"))
            parts.append(_el("IsTruncated", "true" if result.truncated else "false"))
            if result.truncated and result.next_marker is not None:
                parts.append(_el("NextMarker", enc(result.next_marker)))
            tag = "ListBucketResult"
        return _xml_response(_document(tag, "".join(parts) + contents + prefixes))

    async def delete_objects(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None
        bucket = ctx.bucket
        await self._require_bucket(bucket)
        root = _parse_xml(await self._read_small(ctx))
        if root.tag != "Delete":
            raise malformed_xml()
        quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
        objects = root.findall("Object")
        if not objects or len(objects) > MAX_DELETE_KEYS:
            raise malformed_xml()
        keys = []
        for obj in objects:
            key = obj.findtext("Key")
            if key is None:
                raise malformed_xml()
            keys.append((key, obj.findtext("VersionId")))

        def run() -> list[str]:
            out = []
            for key, version in keys:
                try:
                    if not key:
                        raise S3Error("InvalidArgument", "Invalid key", 400)
                    _check_key(key)
                    gone = self.store.delete_object(bucket, key, version or None)
                except S3Error as e:
                    out.append(
                        f"<Error>{_el('Key', key)}{_el('VersionId', version or None)}"
                        f"{_el('Code', e.code)}{_el('Message', e.message)}</Error>"
                    )
                    continue
                if not quiet:
                    marker = ""
                    if gone is not None and gone.delete_marker:
                        marker = f"<DeleteMarker>true</DeleteMarker>{_el('DeleteMarkerVersionId', gone.vid)}"
                    out.append(f"<Deleted>{_el('Key', key)}{_el('VersionId', version or None)}{marker}</Deleted>")
            return out

        results = await asyncio.to_thread(run)
        return _xml_response(_document("DeleteResult", "".join(results)))

    # -- objects ----------------------------------------------------------------

    def _response_headers(self, info: ObjectInfo, query: dict[str, str]) -> CIMultiDict[str]:
        h: CIMultiDict[str] = CIMultiDict()
        h["ETag"] = f'"{info.etag}"'
        h["Last-Modified"] = _http_date(info.last_modified)
        h["Accept-Ranges"] = "bytes"
        h["Content-Type"] = info.headers.get("content-type", "binary/octet-stream")
        for name, spelled in _STORED_HEADERS.items():
            if name != "content-type" and name in info.headers:
                h[spelled] = info.headers[name]
        for name, value in info.metadata.items():
            h[name] = value
        h.update(self._version_header(info))
        if info.tags:
            h["x-amz-tagging-count"] = str(len(info.tags))
        for param, spelled in _RESPONSE_OVERRIDES.items():
            if param in query:
                h[spelled] = _clean_header(query[param])
        return h

    async def get_object(self, ctx: _Ctx, *, head: bool) -> web.StreamResponse:
        assert ctx.bucket is not None and ctx.key is not None
        q = ctx.query
        request = ctx.request
        range_header = request.headers.get("Range")
        part_param = q.get("partNumber")
        part_number = None
        if part_param is not None:
            if range_header is not None:
                raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter", 400)
            part_number = self._part_number(part_param)
        version = q.get("versionId")
        f: IO[bytes] | None = None
        if head:
            info = await asyncio.to_thread(self.store.head, ctx.bucket, ctx.key, version)
        else:
            info, f = await asyncio.to_thread(self.store.open, ctx.bucket, ctx.key, version)
        try:
            headers = self._response_headers(info, q)
            if _check_conditions(request.headers, info):
                return web.Response(
                    status=304, headers={"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"],
                                         **self._version_header(info)},
                )
            status = 200
            start, length = 0, info.size
            if part_number is not None:
                span = info.part_range(part_number)
                if span is None:
                    raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", 416)
                start, length = span
                status = 206
                if info.parts:
                    headers["x-amz-mp-parts-count"] = str(len(info.parts))
                if length:
                    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
            elif range_header is not None:
                span = _parse_range(range_header, info.size)
                if span is not None:
                    start, length = span
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
            headers["Content-Length"] = str(length)
            if head:
                return web.Response(status=status, headers=headers)
            assert f is not None
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            try:
                await self._send_file(f, start, length, response)
                await response.write_eof()
            except ConnectionResetError:
                log.debug("devstore: client went away during GET %s", ctx.resource)
            return response
        finally:
            if f is not None:
                f.close()

    async def _send_file(self, f: IO[bytes], start: int, length: int, response: web.StreamResponse) -> None:
        await asyncio.to_thread(f.seek, start)
        remaining = length
        while remaining > 0:
            chunk = await asyncio.to_thread(f.read, min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ConnectionError("object data file shorter than recorded")
            await response.write(chunk)
            remaining -= len(chunk)

    async def put_object(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        self._reject_sse_c(request)
        headers, metadata = _object_headers(request.headers)
        tags = subresources.tags_from_header(request.headers.get("x-amz-tagging"))
        precondition = _write_conditions(request, ctx.key)
        if precondition is not None:  # fail fast, checked again at commit
            existing = await self._maybe_head(ctx.bucket, ctx.key)
            precondition(existing)
        sink = await self._receive(ctx, ctx.bucket, self.max_object_size)
        try:
            info = await asyncio.to_thread(
                self.store.commit_object,
                ctx.bucket,
                ctx.key,
                sink,
                headers=headers,
                metadata=metadata,
                precondition=precondition,
                tags=tags,
            )
        finally:
            sink.discard()
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"', **self._version_header(info)})

    async def _maybe_head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            return await asyncio.to_thread(self.store.head, bucket, key)
        except S3Error as e:
            if e.code == "NoSuchKey":
                return None
            raise

    def _reject_sse_c(self, request: web.Request) -> None:
        if "x-amz-server-side-encryption-customer-algorithm" in request.headers:
            raise _not_implemented("SSE-C")

    def _copy_source(self, value: str) -> tuple[str, str, str | None]:
        raw, _, query = value.partition("?")
        version_id = None
        for part in query.split("&"):
            name, _, version = part.partition("=")
            if name == "versionId":
                version_id = unquote_plus(version)
        try:
            path = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument("Invalid copy source encoding", "x-amz-copy-source", value) from None
        path = path.removeprefix("/")
        bucket, _, key = path.partition("/")
        if not bucket or not key:
            raise invalid_argument(
                "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                "x-amz-copy-source",
                value,
            )
        _check_key(key)
        return bucket, key, version_id

    async def copy_object(self, ctx: _Ctx, copy_source: str) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        self._reject_sse_c(request)
        src_bucket, src_key, src_version = self._copy_source(copy_source)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        tag_directive = request.headers.get("x-amz-tagging-directive", "COPY").upper()
        if tag_directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown tagging directive.", "x-amz-tagging-directive", tag_directive)
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown metadata directive.", "x-amz-metadata-directive", directive)
        precondition = _write_conditions(request, ctx.key)
        await self._read_small(ctx, 0)
        info, f = await asyncio.to_thread(self.store.open, src_bucket, src_key, src_version)
        try:
            _check_conditions(request.headers, info, copy_source=True)
            current = await self._maybe_head(ctx.bucket, ctx.key) if src_version is not None else info
            if (
                (src_bucket, src_key) == (ctx.bucket, ctx.key)
                and directive == "COPY"
                and (current is not None and current.vid == info.vid)  # copying an older version restores it
            ):
                raise S3Error(
                    "InvalidRequest",
                    "This copy request is illegal because it is trying to copy an object to itself without "
                    "changing the object's metadata, storage class, website redirect location or encryption "
                    "attributes.",
                    400,
                )
            if info.size > MAX_OBJECT_SIZE:
                raise S3Error(
                    "InvalidRequest",
                    "The specified copy source is larger than the maximum allowable size for a copy source: "
                    f"{MAX_OBJECT_SIZE}",
                    400,
                )
            if directive == "REPLACE":
                headers, metadata = _object_headers(request.headers)
            else:
                headers, metadata = dict(info.headers), dict(info.metadata)
            if tag_directive == "REPLACE":
                tags = subresources.tags_from_header(request.headers.get("x-amz-tagging"))
            else:
                tags = dict(info.tags)
            sink = await asyncio.to_thread(self.store.new_sink, ctx.bucket)
            try:
                await asyncio.to_thread(copy_range, f, 0, info.size, sink)
                new = await asyncio.to_thread(
                    self.store.commit_object,
                    ctx.bucket,
                    ctx.key,
                    sink,
                    headers=headers,
                    metadata=metadata,
                    precondition=precondition,
                    tags=tags,
                )
            finally:
                sink.discard()
        finally:
            f.close()
        body = _document(
            "CopyObjectResult", f"{_el('LastModified', _iso(new.last_modified))}{_el('ETag', chr(34) + new.etag + chr(34))}"
        )
        out = self._version_header(new)
        if info.version_id is not None:
            out["x-amz-copy-source-version-id"] = info.version_id
        return _xml_response(body, headers=out)

    # -- multipart ----------------------------------------------------------------

    def _part_number(self, value: str) -> int:
        number = parse_uint(value, max_digits=6) or 0
        if not 1 <= number <= MAX_PARTS:
            raise invalid_argument(
                f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive", "partNumber", value
            )
        return number

    async def create_upload(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        self._reject_sse_c(ctx.request)
        headers, metadata = _object_headers(ctx.request.headers)
        tagging = ctx.request.headers.get("x-amz-tagging")
        if tagging:
            subresources.tags_from_header(tagging)
            headers["x-amz-tagging"] = tagging  # applied at Complete (store.complete_upload)
        await self._read_small(ctx, body_checksums=False)
        upload_id = await asyncio.to_thread(self.store.create_upload, ctx.bucket, ctx.key, headers, metadata)
        body = _document(
            "InitiateMultipartUploadResult",
            f"{_el('Bucket', ctx.bucket)}{_el('Key', ctx.key)}{_el('UploadId', upload_id)}",
        )
        return _xml_response(body)

    async def upload_part(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        upload_id = ctx.query["uploadId"]
        number = self._part_number(ctx.query.get("partNumber", ""))
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        sink = await self._receive(ctx, ctx.bucket, MAX_OBJECT_SIZE)
        try:
            part = await asyncio.to_thread(self.store.commit_part, ctx.bucket, upload_id, ctx.key, number, sink)
        finally:
            sink.discard()
        return web.Response(status=200, headers={"ETag": f'"{part.etag}"'})

    async def upload_part_copy(self, ctx: _Ctx, copy_source: str) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        upload_id = ctx.query["uploadId"]
        number = self._part_number(ctx.query.get("partNumber", ""))
        src_bucket, src_key, src_version = self._copy_source(copy_source)
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        await self._read_small(ctx, 0)
        info, f = await asyncio.to_thread(self.store.open, src_bucket, src_key, src_version)
        try:
            _check_conditions(request.headers, info, copy_source=True)
            start, length = 0, info.size
            range_header = request.headers.get("x-amz-copy-source-range")
            if range_header is not None:
                m = re.fullmatch(r"bytes=([0-9]{1,20})-([0-9]{1,20})", range_header.strip(" \t"))
                if m is None or int(m.group(2)) < int(m.group(1)):
                    raise invalid_argument(
                        "The x-amz-copy-source-range value must be of the form bytes=first-last where first and "
                        "last are the zero-based offsets of the first and last bytes to copy",
                        "x-amz-copy-source-range",
                        range_header,
                    )
                first, last = int(m.group(1)), int(m.group(2))
                if last >= info.size:
                    raise invalid_argument(
                        f"Range specified is not valid for source object of size: {info.size}",
                        "x-amz-copy-source-range",
                        range_header,
                    )
                start, length = first, last - first + 1
            if length > MAX_OBJECT_SIZE:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.", 400)
            sink = await asyncio.to_thread(self.store.new_sink, ctx.bucket)
            try:
                await asyncio.to_thread(copy_range, f, start, length, sink)
                part = await asyncio.to_thread(self.store.commit_part, ctx.bucket, upload_id, ctx.key, number, sink)
            finally:
                sink.discard()
        finally:
            f.close()
        body = _document(
            "CopyPartResult",
            f"{_el('LastModified', _iso(part.last_modified))}{_el('ETag', chr(34) + part.etag + chr(34))}",
        )
        out = {"x-amz-copy-source-version-id": info.version_id} if info.version_id is not None else None
        return _xml_response(body, headers=out)

    async def list_parts(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        q = ctx.query
        upload_id = q["uploadId"]
        max_parts = _int_param(q, "max-parts", 1000, 1000)
        marker = _int_param(q, "part-number-marker", 0, MAX_PARTS)
        upload, parts = await asyncio.to_thread(self.store.list_parts, ctx.bucket, upload_id, ctx.key)
        after = [p for p in parts if p.number > marker]
        shown = after[:max_parts]
        truncated = len(after) > len(shown)
        inner = [
            _el("Bucket", ctx.bucket),
            _el("Key", ctx.key),
            _el("UploadId", upload_id),
            f"<Initiator><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Initiator>",
            _owner(),
            "<StorageClass>STANDARD</StorageClass>",
            _el("PartNumberMarker", marker),
            _el("NextPartNumberMarker", shown[-1].number if shown else marker),
            _el("MaxParts", max_parts),
            _el("IsTruncated", "true" if truncated else "false"),
        ]
        inner.extend(
            f"<Part>{_el('PartNumber', p.number)}{_el('LastModified', _iso(p.last_modified))}"
            f"{_el('ETag', chr(34) + p.etag + chr(34))}{_el('Size', p.size)}</Part>"
            for p in shown
        )
        return _xml_response(_document("ListPartsResult", "".join(inner)))

    async def list_uploads(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        key_marker = q.get("key-marker", "")
        id_marker = q.get("upload-id-marker", "")
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_uploads = _int_param(q, "max-uploads", 1000, 1000)
        uploads = await asyncio.to_thread(self.store.list_uploads, ctx.bucket)

        def enc(value: str) -> str:
            return quote(value, safe="/") if encoding is not None else value

        def after_marker(u: UploadInfo) -> bool:
            if not key_marker:
                return True
            if u.key != key_marker:
                return u.key > key_marker
            return bool(id_marker) and u.upload_id > id_marker

        shown: list[UploadInfo] = []
        prefixes: list[str] = []
        truncated = False
        next_key = next_id = ""
        for u in uploads:
            if not u.key.startswith(prefix) or not after_marker(u):
                continue
            common = None
            if delimiter:
                pos = u.key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = u.key[: pos + len(delimiter)]
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(shown) + len(prefixes) >= max_uploads:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                next_key, next_id = common, ""
            else:
                shown.append(u)
                next_key, next_id = u.key, u.upload_id
        inner = [
            _el("Bucket", ctx.bucket),
            _el("KeyMarker", enc(key_marker)),
            _el("UploadIdMarker", id_marker),
            _el("NextKeyMarker", enc(next_key) if truncated else ""),
            _el("NextUploadIdMarker", next_id if truncated else ""),
            _el("Prefix", enc(prefix)),
        ]
        if delimiter:
            inner.append(_el("Delimiter", enc(delimiter)))
        if encoding is not None:
            inner.append(_el("EncodingType", "url"))
        inner.append(_el("MaxUploads", max_uploads))
        inner.append(_el("IsTruncated", "true" if truncated else "false"))
        inner.extend(
            f"<Upload>{_el('Key', enc(u.key))}{_el('UploadId', u.upload_id)}"
            f"<Initiator><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Initiator>"
            f"{_owner()}<StorageClass>STANDARD</StorageClass>{_el('Initiated', _iso(u.initiated))}</Upload>"
            for u in shown
        )
        inner.extend(f"<CommonPrefixes>{_el('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes)
        return _xml_response(_document("ListMultipartUploadsResult", "".join(inner)))

    async def complete_upload(self, ctx: _Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        upload_id = ctx.query["uploadId"]
        precondition = _write_conditions(ctx.request, ctx.key)
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        root = _parse_xml(await self._read_small(ctx, body_checksums=False))
        if root.tag != "CompleteMultipartUpload":
            raise malformed_xml()
        requested: list[tuple[int, str]] = []
        for part in root.findall("Part"):
            number_text = (part.findtext("PartNumber") or "").strip()
            etag = part.findtext("ETag")
            number = parse_uint(number_text, max_digits=6)
            if number is None or etag is None:
                raise malformed_xml()
            requested.append((number, etag))
        info = await asyncio.to_thread(
            self.store.complete_upload,
            ctx.bucket,
            upload_id,
            ctx.key,
            requested,
            min_part_size=self.min_part_size,
            precondition=precondition,
        )
        host = ctx.request.headers.get("Host", "localhost")
        location = f"http://{host}/{ctx.bucket}/{quote(ctx.key, safe='/')}"
        body = _document(
            "CompleteMultipartUploadResult",
            f"{_el('Location', location)}{_el('Bucket', ctx.bucket)}{_el('Key', ctx.key)}"
            f"{_el('ETag', chr(34) + info.etag + chr(34))}",
        )
        return _xml_response(body, headers=self._version_header(info))


# ---------------------------------------------------------------------------
# Public entry points

DEVSTORE_KEY = web.AppKey("s3proxy.devstore", DevStoreServer)


def build_devstore_app(
    root: Path,
    credentials: dict[str, str],
    *,
    region: str = "us-east-1",
    min_part_size: int = DEFAULT_MIN_PART_SIZE,
    fsync: bool = False,
    virtual_host_domains: tuple[str, ...] = ("localhost",),
) -> web.Application:
    """An aiohttp application serving the S3 API over the data directory ``root``.

    ``credentials`` maps access key ids to secret keys; every request must be
    signed with one of them.  ``min_part_size`` is the smallest size allowed
    for a multipart part other than the last (S3: 5 MiB).  ``fsync`` makes
    every commit durable (slower).  Requests are path-style, except that a
    ``Host`` of ``<bucket>.<domain>`` for a domain in
    ``virtual_host_domains`` is virtual-hosted style (what SDKs do with an
    endpoint of ``http://localhost:PORT``).
    """
    store = Store(Path(root), fsync=fsync)
    server = DevStoreServer(
        store,
        credentials,
        region=region,
        min_part_size=min_part_size,
        virtual_host_domains=virtual_host_domains,
    )
    app = web.Application()
    app[DEVSTORE_KEY] = server
    app.router.add_route("*", "/{tail:.*}", server.handle)
    app.on_response_prepare.append(server.on_response_prepare)
    return app


async def start_devstore(
    root: Path,
    credentials: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    **options: object,
) -> tuple[web.AppRunner, int]:
    """Build the application and serve it on ``host:port`` (0: any free port).

    Returns the runner (``await runner.cleanup()`` stops the server) and the
    bound port.  ``options`` go to :func:`build_devstore_app`.
    """
    app = build_devstore_app(root, credentials, **options)  # type: ignore[arg-type]
    # S3 stores a body byte for byte whatever its Content-Encoding: never gunzip a request.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, bound

