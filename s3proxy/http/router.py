"""Classify an incoming request into an S3 operation.

Pure: takes the method, host, raw path, raw query and headers; returns the
bucket, key, decoded query and an operation name.

The client's authentication parameters (presigned SigV4 and SigV2) are
removed from ``Route.query``: they authenticate the client to s3proxy and
must never reach the backend, which gets s3proxy's own signature.

``classify`` names every operation it knows.  On an encrypted bucket only
the operations in ``ENCRYPTED_OPS`` are served, each only with the query
parameters ``allowed_params`` lists for it; anything else (``?torrent``,
``?select``, ``?restore``, an unknown sub-resource) is refused before a byte
reaches the backend (``unsupported_reason``).  Passthrough buckets still
forward unknown operations unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from s3proxy.aws.numbers import parse_uint

# Sub-resources that turn an object/bucket request into a configuration call.
OBJECT_SUBRESOURCES = frozenset(
    {"acl", "tagging", "retention", "legal-hold", "torrent", "restore", "select", "select-type", "attributes"}
)


@dataclass(frozen=True)
class Route:
    op: str
    bucket: str | None
    key: str | None
    query: tuple[tuple[str, str], ...]

    def q(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.query)


# Query parameters that authenticate the client (SigV4 presigned, SigV2 query auth):
# compared case-insensitively, never forwarded.
AUTH_PARAMS = frozenset(
    {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
     "x-amz-signature", "x-amz-security-token", "x-amz-s3session-token", "awsaccesskeyid", "signature", "expires"}
)


# Keys under this prefix of an encrypted bucket belong to the proxy (s3proxy.http.sidecars):
# clients never reach them (authz) nor see them listed.
RESERVED_KEY_PREFIX = ".s3proxy/"


def is_reserved_key(key: str | None) -> bool:
    """Whether ``key`` lies under the proxy's reserved prefix."""
    return key is not None and key.startswith(RESERVED_KEY_PREFIX)


def parse_query(raw_query: str, *, keep_auth: bool = False) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    if not raw_query:
        return ()
    for part in raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        name = unquote(k)
        if not keep_auth and name.lower() in AUTH_PARAMS:
            continue
        out.append((name, unquote(v)))
    return tuple(out)


def split_target(host: str, raw_path: str, base_domain: str | None) -> tuple[str | None, str | None]:
    """(bucket, key) from virtual-hosted or path-style addressing."""
    path = unquote(raw_path)
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    hostname = hostname.lower()
    if base_domain:
        bd = base_domain.lower()
        if hostname.endswith("." + bd):
            bucket = hostname[: -len(bd) - 1]
            key = path[1:] if path.startswith("/") else path
            return bucket, (key or None)
    if not path.startswith("/"):
        path = "/" + path
    rest = path[1:]
    if not rest:
        return None, None
    bucket, sep, key = rest.partition("/")
    return bucket, (key if sep and key else None)


def classify(method: str, bucket: str | None, key: str | None, query: tuple[tuple[str, str], ...], headers: Mapping[str, str]) -> str:
    names = {k for k, _ in query}
    if bucket is None:
        return "ListBuckets" if method == "GET" else "Passthrough"
    if key is None:
        if method == "GET":
            if "list-type" in names and dict(query).get("list-type") == "2":
                return "ListObjectsV2"
            if "versions" in names:
                return "ListObjectVersions"
            if "uploads" in names:
                return "ListMultipartUploads"
            if not names & _BUCKET_CONFIG and not names - _LIST_PARAMS:
                return "ListObjects"
            return "BucketConfig"
        if method == "POST" and not names and headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return "PostObject"
        return "BucketConfig"
    copy = "x-amz-copy-source" in headers
    if method == "PUT":
        if "partNumber" in names and "uploadId" in names:
            return "UploadPartCopy" if copy else "UploadPart"
        if names & OBJECT_SUBRESOURCES:
            return "ObjectConfig"
        return "CopyObject" if copy else "PutObject"
    if method == "GET":
        if "uploadId" in names:
            return "ListParts"
        if "attributes" in names:
            return "GetObjectAttributes"
        if "torrent" in names:
            return "GetObjectTorrent"
        if names & OBJECT_SUBRESOURCES:
            return "ObjectConfig"
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "POST":
        if "uploads" in names:
            return "CreateMultipartUpload"
        if "uploadId" in names:
            return "CompleteMultipartUpload"
        if "select" in names:
            return "SelectObjectContent"
        if "restore" in names:
            return "RestoreObject"
        return "ObjectConfig"
    if method == "DELETE":
        if "uploadId" in names:
            return "AbortMultipartUpload"
        if names & OBJECT_SUBRESOURCES:
            return "ObjectConfig"
        return "DeleteObject"
    return "Passthrough"


_LIST_PARAMS = frozenset(
    {"prefix", "delimiter", "marker", "max-keys", "encoding-type", "continuation-token", "start-after",
     "fetch-owner", "list-type", "x-id", "allow-unordered"}
)
_BUCKET_CONFIG = frozenset(
    {"acl", "policy", "cors", "lifecycle", "versioning", "tagging", "location", "logging", "website",
     "notification", "replication", "encryption", "object-lock", "accelerate", "requestPayment",
     "ownershipControls", "publicAccessBlock", "policyStatus", "analytics", "metrics", "inventory",
     "intelligent-tiering", "uploads", "versions", "delete"}
)


_RESPONSE = frozenset(
    {"response-content-type", "response-content-language", "response-expires", "response-cache-control",
     "response-content-disposition", "response-content-encoding"}
)
_VERSIONS_PARAMS = frozenset(
    {"versions", "prefix", "delimiter", "key-marker", "version-id-marker", "max-keys", "encoding-type"}
)
_UPLOADS_PARAMS = frozenset(
    {"uploads", "prefix", "delimiter", "key-marker", "upload-id-marker", "max-uploads", "encoding-type"}
)
# Query parameters each operation may carry on an encrypted bucket (besides ``x-id``, the SDKs'
# operation hint).  Object configuration sub-resources that only touch metadata s3proxy does not
# encrypt (ACLs, tags, retention, legal hold) are served as passthrough.
ALLOWED_PARAMS: dict[str, frozenset[str]] = {
    "GetObject": frozenset({"versionId", "partNumber"}) | _RESPONSE,
    "HeadObject": frozenset({"versionId", "partNumber"}) | _RESPONSE,
    "PutObject": frozenset(),
    "CopyObject": frozenset(),
    "DeleteObject": frozenset({"versionId"}),
    "GetObjectAttributes": frozenset({"attributes", "versionId"}),
    "CreateMultipartUpload": frozenset({"uploads"}),
    "UploadPart": frozenset({"partNumber", "uploadId"}),
    "UploadPartCopy": frozenset({"partNumber", "uploadId"}),
    "CompleteMultipartUpload": frozenset({"uploadId"}),
    "AbortMultipartUpload": frozenset({"uploadId"}),
    "ListParts": frozenset({"uploadId", "max-parts", "part-number-marker", "encoding-type"}),
    "ListObjects": _LIST_PARAMS,
    "ListObjectsV2": _LIST_PARAMS,
    "ListObjectVersions": _VERSIONS_PARAMS,
    "ListMultipartUploads": _UPLOADS_PARAMS,
}
_OBJECT_CONFIG = {
    "GET": ("acl", "tagging", "retention", "legal-hold"),
    "PUT": ("acl", "tagging", "retention", "legal-hold"),
    "DELETE": ("tagging",),
}
_CONFIG_EXTRA = frozenset({"versionId", "id", "bypassGovernanceRetention"})


# Query parameters S3 defines as non-negative integers: ASCII digits only, checked for every
# bucket (a backend that answers 500 to ``max-keys=²`` must never see it).
NUMERIC_PARAMS = frozenset({"max-keys", "max-uploads", "max-parts", "part-number-marker", "partNumber", "list-type"})


def bad_number(r: Route) -> str | None:
    """The first numeric query parameter that is not ASCII digits, or None."""
    for k, v in r.query:
        if k in NUMERIC_PARAMS and parse_uint(v) is None:
            return k
    return None


def unsupported_reason(r: Route, method: str) -> str | None:
    """Why an encrypted bucket refuses this request, or None when it is served."""
    names = {k for k, _ in r.query} - {"x-id"}
    if r.op in ALLOWED_PARAMS:
        extra = names - ALLOWED_PARAMS[r.op]
        if extra:
            return f"{r.op} with the query parameter {sorted(extra)[0]!r}"
        return None
    if r.op == "ObjectConfig":
        subs = names - _CONFIG_EXTRA
        if len(subs) == 1 and next(iter(subs)) in _OBJECT_CONFIG.get(method, ()):
            return None
        return f"{method} on an object with the query parameters {sorted(names)!r}"
    if r.op == "BucketConfig":
        if r.key is not None:
            return f"{method} with the query parameters {sorted(names)!r}"
        subs = names - _CONFIG_EXTRA
        if not subs and method in ("PUT", "DELETE", "HEAD"):
            return None  # CreateBucket, DeleteBucket, HeadBucket
        if len(subs) == 1 and next(iter(subs)) in _BUCKET_CONFIG - {"uploads", "versions"}:
            if next(iter(subs)) == "delete" and method != "POST":
                return f"{method} ?delete"
            return None
        return f"{method} on a bucket with the query parameters {sorted(names)!r}"
    if r.op == "ListBuckets" or (r.op == "Passthrough" and method == "OPTIONS"):
        return None  # the service itself; CORS preflight (no body, no data)
    return r.op


def is_browser_form(r: Route, raw_query: str, headers: Mapping[str, str]) -> bool:
    """A POST object authenticated by its form's signed policy (no Authorization header, no
    signed query): served by ``s3proxy.http.postobject``.  A header-signed form POST takes the
    normal path (authorised as ``PostObject``, refused on encrypted buckets)."""
    if r.op != "PostObject" or r.bucket is None or "authorization" in {k.lower() for k in headers}:
        return False
    return not any(k.lower() in AUTH_PARAMS for k, _ in parse_query(raw_query, keep_auth=True))


def route(method: str, host: str, raw_path: str, raw_query: str, headers: Mapping[str, str], base_domain: str | None) -> Route:
    bucket, key = split_target(host, raw_path, base_domain)
    query = parse_query(raw_query)
    return Route(classify(method, bucket, key, query, headers), bucket, key, query)
