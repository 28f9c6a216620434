"""Classify an incoming request into an S3 operation.

Pure: takes the method, host, raw path, raw query and headers; returns the
bucket, key, decoded query and an operation name.  Unknown operations still
classify (as ``passthrough`` flavours) so they reach the backend unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

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


def parse_query(raw_query: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    if not raw_query:
        return ()
    for part in raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((unquote(k), unquote(v)))
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
        if method == "POST" and not names and headers.get("content-type", "").startswith("multipart/form-data"):
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
        return "ObjectConfig"
    if method == "DELETE":
        if "uploadId" in names:
            return "AbortMultipartUpload"
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


def route(method: str, host: str, raw_path: str, raw_query: str, headers: Mapping[str, str], base_domain: str | None) -> Route:
    bucket, key = split_target(host, raw_path, base_domain)
    query = parse_query(raw_query)
    return Route(classify(method, bucket, key, query, headers), bucket, key, query)
